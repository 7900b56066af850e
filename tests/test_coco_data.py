"""Embedded COCO digit canvases, the COCO reader's validation, the Dataset and pycocotools mAP."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.coco import CocoDetection, collate_detection, load_coco
from data.coco_digits import default_digits_coco, make_digits_coco
from data.coco_eval import coco_map, to_coco_detections
from spnas.errors import InputError


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_digits_coco(tmp_path_factory.mktemp("coco") / "digits", num_train=20, num_val=8, seed=0)


@pytest.fixture(scope="module")
def val_set(small):
    return load_coco(small.val_images, small.val_json)


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def ground_truth_detections(coco_set, shift: float = 0.0) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
             "bbox": [a["bbox"][0] + shift, a["bbox"][1] + shift, a["bbox"][2], a["bbox"][3]]}
            for anns in coco_set.anns_by_image.values() for a in anns]


# --- the embedded set ---------------------------------------------------------------------------

def test_embedded_set_is_valid_coco(small):
    for images, ann in ((small.train_images, small.train_json), (small.val_images, small.val_json)):
        coco = load_coco(images, ann)
        assert coco.cat_ids == list(range(1, 11)) and coco.cat_names == [str(d) for d in range(10)]
        assert coco.num_classes == 11
        counts = [len(anns) for anns in coco.anns_by_image.values()]
        assert all(1 <= c <= 3 for c in counts)
    assert len(load_coco(small.train_images, small.train_json).images) == 20
    assert len(load_coco(small.val_images, small.val_json).images) == 8


def test_boxes_inside_tight_and_not_overlapping(val_set):
    for info in val_set.images:
        pixels = np.asarray(Image.open(val_set.images_dir / info["file_name"]))
        assert pixels.shape == (96, 96, 3)
        boxes = [a["bbox"] for a in val_set.anns_by_image[info["id"]]]
        for x, y, w, h in boxes:
            assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96 and 4 <= w <= 36 and 4 <= h <= 36
            crop = pixels[int(y):int(y + h), int(x):int(x + w)].max(axis=2)
            assert crop.max() > 150  # bright ink inside ...
            assert crop[0].max() > 40 and crop[-1].max() > 40  # ... reaching the box edges
            assert crop[:, 0].max() > 40 and crop[:, -1].max() > 40
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert (a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0]
                        or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1])


def test_val_digits_are_held_out_from_train(small):
    def digit_indices(path: Path) -> set[int]:
        return {a["digit_index"] for a in json.loads(path.read_text())["annotations"]}

    assert not digit_indices(small.train_json) & digit_indices(small.val_json)


def test_same_seed_same_bytes_and_reuse(small, tmp_path):
    again = make_digits_coco(tmp_path / "again", num_train=20, num_val=8, seed=0)
    assert digest(again.root) == digest(small.root)
    stamp = (small.root / ".complete").stat().st_mtime_ns
    assert make_digits_coco(small.root, num_train=20, num_val=8, seed=0) == small
    assert (small.root / ".complete").stat().st_mtime_ns == stamp
    other = make_digits_coco(tmp_path / "other", num_train=20, num_val=8, seed=1)
    assert other.train_json.read_bytes() != small.train_json.read_bytes()


def test_different_parameters_for_a_finished_folder_are_refused(small):
    with pytest.raises(InputError):
        make_digits_coco(small.root, num_train=21, num_val=8, seed=0)


@pytest.mark.parametrize("kwargs, field", [
    ({"num_train": 0}, "num_train"), ({"num_val": -1}, "num_val"),
    ({"canvas_size": 30}, "canvas_size"), ({"seed": -1}, "seed"),
])
def test_bad_generator_arguments(tmp_path, kwargs, field):
    with pytest.raises(InputError) as err:
        make_digits_coco(tmp_path / "x", **kwargs)
    assert err.value.field == field


def test_default_set_lives_in_data_cache(monkeypatch, tmp_path):
    import data.coco_digits as module

    monkeypatch.setenv("SPNAS_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(module, "make_digits_coco", lambda root, **kw: calls.append(root) or root)
    default_digits_coco()
    assert calls == [tmp_path / "data" / "digits_coco_96"]


# --- the Dataset --------------------------------------------------------------------------------

def test_detection_items_follow_torchvision_format(val_set):
    dataset = CocoDetection(val_set, max_images=3)
    assert len(dataset) == 3 and dataset.image_ids == [1, 2, 3]
    image, target = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 96, 96) and 0 <= image.min() <= image.max() <= 1
    anns = val_set.anns_by_image[1]
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (len(anns), 4)
    assert target["labels"].dtype == torch.int64 and target["image_id"] == 1
    x, y, w, h = anns[0]["bbox"]
    assert target["boxes"][0].tolist() == [x, y, x + w, y + h]
    # contiguous label l <-> category id cat_ids[l-1]; digit d has category d+1 and label d+1
    assert target["labels"][0].item() == val_set.cat_id_to_label(anns[0]["category_id"])
    images, targets = collate_detection([dataset[0], dataset[1]])
    assert len(images) == 2 and targets[1]["image_id"] == 2


def test_image_without_annotations_and_crowd_are_handled(small, tmp_path):
    data = json.loads(small.val_json.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 1]
    crowd = next(a for a in data["annotations"] if a["image_id"] == 2)
    crowd["iscrowd"] = 1
    ann_file = tmp_path / "edited.json"
    ann_file.write_text(json.dumps(data))
    coco = load_coco(small.val_images, ann_file)
    dataset = CocoDetection(coco)
    assert dataset[0][1]["boxes"].shape == (0, 4) and dataset[0][1]["labels"].shape == (0,)
    n2 = sum(1 for a in data["annotations"] if a["image_id"] == 2)
    assert dataset[1][1]["boxes"].shape == (n2 - 1, 4)


# --- load_coco validation -------------------------------------------------------------------------

def _drop_key(d):
    del d["categories"]


def _bad_w(d):
    d["annotations"][0]["bbox"][2] = 0


def _outside(d):
    d["annotations"][0]["bbox"][0] = 90.0
    d["annotations"][0]["bbox"][2] = 10.0


def _unknown_cat(d):
    d["annotations"][0]["category_id"] = 99


def _unknown_image(d):
    d["annotations"][0]["image_id"] = 12345


def _missing_image(d):
    d["images"][1]["file_name"] = "not_there.png"


@pytest.mark.parametrize("edit, words", [
    (_drop_key, "categories"), (_bad_w, "annotation 1 "), (_outside, "outside"),
    (_unknown_cat, "99"), (_unknown_image, "12345"), (_missing_image, "not_there.png"),
])
def test_load_coco_names_file_and_first_offending_item(small, tmp_path, edit, words):
    data = json.loads(small.val_json.read_text())
    edit(data)
    ann_file = tmp_path / "bad.json"
    ann_file.write_text(json.dumps(data))
    with pytest.raises(InputError) as err:
        load_coco(small.val_images, ann_file)
    assert "bad.json" in str(err.value) and words in str(err.value)


def test_box_within_one_pixel_tolerance_is_accepted(small, tmp_path):
    data = json.loads(small.val_json.read_text())
    data["annotations"][0]["bbox"] = [-0.5, 0.0, 96.8, 10.0]
    ann_file = tmp_path / "ok.json"
    ann_file.write_text(json.dumps(data))
    coco = load_coco(small.val_images, ann_file)
    image_id = data["annotations"][0]["image_id"]
    boxes = CocoDetection(coco)[[im["id"] for im in coco.images].index(image_id)][1]["boxes"]
    assert boxes[:, 0].min() >= 0 and boxes[:, 2].max() <= 96  # clipped for training


def test_load_coco_missing_and_unparsable_files(small, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_coco(small.val_images, tmp_path / "none.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="broken.json.*not valid JSON"):
        load_coco(small.val_images, broken)
    with pytest.raises(InputError, match="images folder"):
        load_coco(tmp_path / "no_images", small.val_json)


# --- mAP ----------------------------------------------------------------------------------------

def test_perfect_detections_score_one(val_set):
    assert coco_map(val_set, ground_truth_detections(val_set)) == {"mAP": 1.0, "mAP50": 1.0}


def test_ann_file_path_is_accepted_and_shifted_boxes_score_less(val_set):
    shifted = coco_map(val_set.ann_file, ground_truth_detections(val_set, shift=3.0))
    assert shifted["mAP"] < 1.0 and shifted["mAP50"] <= 1.0 and shifted["mAP"] < shifted["mAP50"] + 1e-9


def test_no_detections_score_zero(val_set):
    assert coco_map(val_set, []) == {"mAP": 0.0, "mAP50": 0.0}


def test_detector_outputs_round_trip_through_label_mapping(val_set, capsys):
    dataset = CocoDetection(val_set)
    targets = [dataset[i][1] for i in range(len(dataset))]
    outputs = [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"]))}
               for t in targets]
    detections = to_coco_detections([t["image_id"] for t in targets], outputs, val_set)
    assert len(detections) == sum(len(a) for a in val_set.anns_by_image.values())
    before = copy.deepcopy(detections)
    assert coco_map(val_set, detections) == {"mAP": 1.0, "mAP50": 1.0}
    assert detections == before  # the caller's list is not modified
    assert capsys.readouterr().out == ""  # pycocotools kept quiet


def test_subset_evaluation_with_image_ids(val_set):
    dataset = CocoDetection(val_set, max_images=2)
    detections = [d for d in ground_truth_detections(val_set) if d["image_id"] in dataset.image_ids]
    assert coco_map(val_set, detections)["mAP"] < 1.0  # unseen images count as misses
    assert coco_map(val_set, detections, image_ids=dataset.image_ids)["mAP"] == 1.0
