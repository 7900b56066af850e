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

from core.errors import InputError
from data.coco import CocoDetection, check_coco_files, collate_detection, load_coco
from data.coco_digits import default_digits_coco, make_digits_coco
from data.coco_eval import coco_map, to_coco_detections


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


# --- check_coco_files: the parameter-edge check -----------------------------------------------

IMAGES_FIELD, JSON_FIELD = "data.train_images", "data.train_json"


def _json_edit(edit):
    """A case writing the small set's val json after `edit(data)`."""
    def write(small, path: Path) -> None:
        data = json.loads(small.val_json.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return write


def _raw(content: bytes):
    return lambda small, path: path.write_bytes(content)


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def edit(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


def _duplicate_image_id(data):
    data["images"][1]["id"] = data["images"][0]["id"]


BAD_COCO_FILES = [
    ("text, not JSON", _raw(b"images: none\n"), JSON_FIELD),
    ("broken JSON", _raw(b'{"images": [}'), JSON_FIELD),
    ("random bytes", _raw(bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8))), JSON_FIELD),
    ("PNG bytes", _raw(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"), JSON_FIELD),
    ("empty file", _raw(b""), JSON_FIELD),
    ("top level list", _raw(b"[]"), JSON_FIELD),
    ("top level number", _raw(b"3"), JSON_FIELD),
    ("no images", _json_edit(lambda d: d.pop("images")), JSON_FIELD),
    ("no annotations", _json_edit(lambda d: d.pop("annotations")), JSON_FIELD),
    ("no categories", _json_edit(lambda d: d.pop("categories")), JSON_FIELD),
    ("images not a list", _json_edit(_set("images", {"1": "a.png"})), JSON_FIELD),
    ("zero width box", _json_edit(_set("annotations", 0, "bbox", 2, 0)), JSON_FIELD),
    ("negative height box", _json_edit(_set("annotations", 0, "bbox", 3, -4.0)), JSON_FIELD),
    ("unknown image id", _json_edit(_set("annotations", 0, "image_id", 12345)), JSON_FIELD),
    ("unknown category id", _json_edit(_set("annotations", 0, "category_id", 99)), JSON_FIELD),
    ("duplicate image ids", _json_edit(_duplicate_image_id), JSON_FIELD),
    ("missing image file", _json_edit(_set("images", 1, "file_name", "not_there.png")), IMAGES_FIELD),
]


@pytest.mark.parametrize("write, field", [c[1:] for c in BAD_COCO_FILES], ids=[c[0] for c in BAD_COCO_FILES])
def test_bad_coco_files_are_refused_naming_the_field(small, tmp_path, write, field):
    ann_file = tmp_path / "instances.json"
    write(small, ann_file)
    with pytest.raises(InputError) as err:
        check_coco_files(small.val_images, ann_file, IMAGES_FIELD, JSON_FIELD)
    assert err.value.field == field
    # load_coco runs the same checks and names the same field when given the names.
    with pytest.raises(InputError) as again:
        load_coco(small.val_images, ann_file, images_field=IMAGES_FIELD, json_field=JSON_FIELD)
    assert again.value.field == field and str(again.value) == str(err.value)


def test_missing_paths_name_their_field(small, tmp_path):
    with pytest.raises(InputError) as err:
        check_coco_files(small.val_images, tmp_path / "none.json", IMAGES_FIELD, JSON_FIELD)
    assert err.value.field == JSON_FIELD and "none.json" in str(err.value)
    with pytest.raises(InputError) as err:
        check_coco_files(tmp_path / "no_images", small.val_json, IMAGES_FIELD, JSON_FIELD)
    assert err.value.field == IMAGES_FIELD and "no_images" in str(err.value)


def test_good_files_pass_without_decoding_images(small, monkeypatch):
    """Only headers are read (sizes and the pixel limit are checked against them), never pixels."""
    import PIL.Image
    import PIL.ImageFile

    def no_decoding(*args, **kwargs):
        raise AssertionError("check_coco_files must not decode images")

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(PIL.Image.Image, "load", no_decoding)
    assert check_coco_files(str(small.val_images), str(small.val_json), IMAGES_FIELD, JSON_FIELD) is None


def test_image_files_in_sub_folders_are_found(small, tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    data = json.loads(small.val_json.read_text())
    for im in data["images"]:
        (images / "sub" / im["file_name"]).write_bytes((small.val_images / im["file_name"]).read_bytes())
        im["file_name"] = f"sub/{im['file_name']}"
    ann_file = tmp_path / "nested.json"
    ann_file.write_text(json.dumps(data))
    check_coco_files(images, ann_file, IMAGES_FIELD, JSON_FIELD)
    (images / data["images"][-1]["file_name"]).unlink()
    with pytest.raises(InputError) as err:
        check_coco_files(images, ann_file, IMAGES_FIELD, JSON_FIELD)
    assert err.value.field == IMAGES_FIELD


# --- mAP ----------------------------------------------------------------------------------------

def test_perfect_detections_score_one(val_set):
    assert coco_map(val_set, ground_truth_detections(val_set)) == {"mAP": 1.0, "mAP50": 1.0}


def shifted_detections(coco_set, fraction: float) -> list[dict]:
    """Ground-truth boxes moved right by `fraction` of their own width (same size)."""
    dets = ground_truth_detections(coco_set)
    for d in dets:
        d["bbox"][0] += fraction * d["bbox"][2]
    return dets


def test_ann_file_path_is_accepted_and_shifted_boxes_score_less(val_set):
    # A shift of w/5 gives IoU 0.8/1.2 = 2/3 for every box: a hit at the thresholds
    # .50 .55 .60 .65, a miss at .70 ... .95, so mAP@.5 stays 1 and mAP@[.5:.95] is 4/10.
    fifth = coco_map(val_set.ann_file, shifted_detections(val_set, 0.2))
    assert fifth["mAP50"] == pytest.approx(1.0) and fifth["mAP"] == pytest.approx(0.4, abs=1e-6)
    # A shift of w/2 gives IoU 0.5/1.5 = 1/3: below every threshold, nothing counts.
    half = coco_map(val_set.ann_file, shifted_detections(val_set, 0.5))
    assert half == {"mAP": 0.0, "mAP50": 0.0}


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
