"""Embedded face set (real LFW faces on natural images), WIDER FACE reading/writing, face AP."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.coco import CocoDetection, load_coco
from data.faces import (
    FACE_CATEGORY,
    HELD_OUT_PER_KIND,
    face_ap,
    make_faces_coco,
    read_wider_face,
    wider_face_to_coco,
    write_wider_face,
)
from core.errors import InputError


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_faces_coco(tmp_path_factory.mktemp("faces") / "set", num_train=16, num_val=8, seed=0)


@pytest.fixture(scope="module")
def lfw():
    from skimage.data import lfw_subset

    return lfw_subset()


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def overlap(a: list[float], b: list[float]) -> bool:
    return not (a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0] or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1])


# --- the embedded set ---------------------------------------------------------------------------

def test_embedded_set_is_valid_coco_with_one_face_class(small):
    for images, ann, count in ((small.train_images, small.train_json, 16),
                               (small.val_images, small.val_json, 8)):
        coco = load_coco(images, ann)
        assert coco.cat_names == ["face"] and coco.num_classes == 2
        assert len(coco.images) == count
        assert all(1 <= len(anns) <= 3 for anns in coco.anns_by_image.values())


def test_boxes_inside_images_and_holding_the_lfw_face(small, lfw):
    coco = load_coco(small.val_images, small.val_json)
    for info in coco.images:
        pixels = np.asarray(Image.open(coco.images_dir / info["file_name"]), dtype=np.float64)
        assert pixels.shape == (128, 128, 3)
        boxes = [a["bbox"] for a in coco.anns_by_image[info["id"]]]
        others = [d["bbox"] for d in info["distractors"]]
        for i, ann in enumerate(coco.anns_by_image[info["id"]]):
            x, y, w, h = (int(v) for v in ann["bbox"])
            assert w == h and 16 <= w <= 48 and 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
            assert ann["lfw_index"] < 100  # lfw_subset's first 100 crops are the faces
            # The box holds that face (up to flip, contrast, brightness and tint) ...
            crop = pixels[y:y + h, x:x + w].mean(axis=2)
            face = np.asarray(Image.fromarray((lfw[ann["lfw_index"]] * 255).astype(np.uint8))
                              .resize((w, w), Image.Resampling.BILINEAR), dtype=np.float64)
            corr = max(np.corrcoef(crop.ravel(), f.ravel())[0, 1] for f in (face, face[:, ::-1]))
            assert corr > 0.95
            # ... and no other face or distractor overlaps it.
            assert not any(overlap(ann["bbox"], b) for b in boxes[i + 1:] + others)


def test_pixels_at_boxes_differ_from_the_background(small, lfw):
    # Each face matches the pixels of its box and not those of the same-size region beside it.
    coco = load_coco(small.train_images, small.train_json)
    for info in coco.images:
        pixels = np.asarray(Image.open(coco.images_dir / info["file_name"]), dtype=np.float64).mean(axis=2)
        for ann in coco.anns_by_image[info["id"]]:
            x, y, w, _ = (int(v) for v in ann["bbox"])
            face = np.asarray(Image.fromarray((lfw[ann["lfw_index"]] * 255).astype(np.uint8))
                              .resize((w, w), Image.Resampling.BILINEAR), dtype=np.float64)

            def match(x0: int, y0: int) -> float:
                region = pixels[y0:y0 + w, x0:x0 + w]
                if region.std() == 0:
                    return 0.0
                return max(np.corrcoef(region.ravel(), f.ravel())[0, 1] for f in (face, face[:, ::-1]))

            beside = next((x0, y0) for x0, y0 in ((x + w, y), (x - w, y), (x, y + w), (x, y - w))
                          if 0 <= x0 <= 128 - w and 0 <= y0 <= 128 - w)
            assert match(x, y) > 0.95 and match(*beside) < 0.8


def test_val_faces_are_held_out_from_train(small):
    def indices(path: Path) -> set[int]:
        return {a["lfw_index"] for a in json.loads(path.read_text())["annotations"]}

    train, val = indices(small.train_json), indices(small.val_json)
    assert not train & val and len(val) <= HELD_OUT_PER_KIND


def test_same_seed_same_bytes_other_seed_other_images(small, tmp_path):
    again = make_faces_coco(tmp_path / "again", num_train=16, num_val=8, seed=0)
    assert digest(again.root) == digest(small.root)
    other = make_faces_coco(tmp_path / "other", num_train=16, num_val=8, seed=1)
    assert digest(other.root) != digest(small.root)
    # The val split does not depend on how many training images were asked for.
    more = make_faces_coco(tmp_path / "more", num_train=20, num_val=8, seed=0)
    assert digest(more.root)["annotations/instances_val.json"] == digest(small.root)["annotations/instances_val.json"]


@pytest.mark.parametrize("kwargs, field", [({"num_train": 0}, "num_train"), ({"num_val": 1.5}, "num_val"),
                                           ({"image_size": 64}, "image_size"), ({"seed": -1}, "seed")])
def test_bad_arguments(tmp_path, kwargs, field):
    with pytest.raises(InputError) as err:
        make_faces_coco(tmp_path / "x", **kwargs)
    assert err.value.field == field


def test_face_ap_by_pycocotools(small):
    import torch

    coco = load_coco(small.val_images, small.val_json)
    ids = [im["id"] for im in coco.images]

    def outputs(shift: float) -> list[dict]:
        result = []
        for image_id in ids:
            boxes = torch.tensor([a["bbox"] for a in coco.anns_by_image[image_id]])
            boxes[:, 2:] += boxes[:, :2]
            result.append({"boxes": boxes + shift, "scores": torch.ones(len(boxes)),
                           "labels": torch.ones(len(boxes), dtype=torch.int64)})
        return result

    assert face_ap(coco, ids, outputs(0.0)) == {"AP50": 1.0, "AP": 1.0}
    shifted = face_ap(coco, ids, outputs(6.0))
    assert shifted["AP"] < shifted["AP50"] <= 1.0 and shifted["AP"] < 0.9


# --- WIDER FACE ---------------------------------------------------------------------------------

@pytest.fixture
def wider_images(tmp_path) -> Path:
    root = tmp_path / "images"
    for name, size in (("0--Parade/0_Parade_1.jpg", (200, 150)), ("0--Parade/0_Parade_2.jpg", (120, 100)),
                       ("1--Handshaking/1_Hand_3.jpg", (64, 80))):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (90, 90, 90)).save(root / name)
    return root


def test_wider_round_trip(tmp_path, wider_images):
    entries = [
        ("0--Parade/0_Parade_1.jpg", [[10, 20, 30, 40, 1, 0, 0, 0, 1, 0], [100, 50, 20, 25, 0, 0, 0, 1, 0, 0]]),
        ("0--Parade/0_Parade_2.jpg", []),                         # count 0 + placeholder line
        ("1--Handshaking/1_Hand_3.jpg", [[50, 70, 30, 30]]),      # 4 numbers: attributes 0; clipped
    ]
    ann = write_wider_face(tmp_path / "wider_face_train_bbx_gt.txt", entries)
    lines = ann.read_text().splitlines()
    assert lines[:4] == ["0--Parade/0_Parade_1.jpg", "2", "10 20 30 40 1 0 0 0 1 0", "100 50 20 25 0 0 0 1 0 0"]
    assert lines[4:7] == ["0--Parade/0_Parade_2.jpg", "0", "0 0 0 0 0 0 0 0 0 0"]

    data = read_wider_face(ann, wider_images)
    assert [(im["file_name"], im["width"], im["height"]) for im in data["images"]] == [
        ("0--Parade/0_Parade_1.jpg", 200, 150), ("0--Parade/0_Parade_2.jpg", 120, 100),
        ("1--Handshaking/1_Hand_3.jpg", 64, 80)]
    anns = data["annotations"]
    assert [(a["image_id"], a["bbox"], a["iscrowd"]) for a in anns] == [
        (1, [10.0, 20.0, 30.0, 40.0], 0),
        (1, [100.0, 50.0, 20.0, 25.0], 1),   # invalid=1 -> ignored region (iscrowd)
        (3, [50.0, 70.0, 14.0, 10.0], 0)]        # clipped to the 64x80 image
    assert anns[0]["wider"] == {"blur": 1, "expression": 0, "illumination": 0, "invalid": 0,
                                "occlusion": 1, "pose": 0}
    assert data["categories"] == [FACE_CATEGORY]

    coco = wider_face_to_coco(ann, wider_images, tmp_path / "coco" / "instances.json")
    assert coco.num_classes == 2 and len(coco.images) == 3
    targets = [CocoDetection(coco)[i][1] for i in range(3)]
    assert [len(t["boxes"]) for t in targets] == [1, 0, 1]  # the invalid face is not a training target

    # Writing what was read gives the same file back (apart from the clipped box).
    again = write_wider_face(tmp_path / "again.txt", [
        (im["file_name"], [[*a["bbox"], *a["wider"].values()] for a in anns if a["image_id"] == im["id"]])
        for im in data["images"]])
    assert again.read_text().splitlines()[:7] == lines[:7]


def test_wider_round_trip_of_the_embedded_set(small, tmp_path):
    coco = load_coco(small.val_images, small.val_json)
    entries = [(im["file_name"], [a["bbox"] for a in coco.anns_by_image[im["id"]]]) for im in coco.images]
    data = read_wider_face(write_wider_face(tmp_path / "val_bbx_gt.txt", entries), small.val_images)
    assert [[a["bbox"] for a in data["annotations"] if a["image_id"] == im["id"]] for im in data["images"]] \
        == [[a["bbox"] for a in coco.anns_by_image[im["id"]]] for im in coco.images]


@pytest.mark.parametrize("text, line, fragment", [
    ("0--Parade/0_Parade_1.jpg\ntwo\n1 2 3 4 0 0 0 0 0 0\n", 2, "face count"),
    ("0--Parade/0_Parade_1.jpg\n-1\n", 2, "face count"),
    ("0--Parade/0_Parade_1.jpg\n1\n10 20 30\n", 3, "expected 10 numbers"),
    ("0--Parade/0_Parade_1.jpg\n2\n1 2 3 4 0 0 0 0 0 0\n0--Parade/0_Parade_2.jpg\n1\n", 4, "count says 2"),
    ("0--Parade/0_Parade_1.jpg\n1\n", 3, "the file ends"),
    ("0--Parade/0_Parade_1.jpg\n1\n1 2 3 4 0 0 0.5 0 0 0\n", 3, "must be integers"),
    ("0--Parade/missing.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n", 1, "does not exist"),
    ("1 2 3 4 0 0 0 0 0 0\n", 1, "expected an image path"),
])
def test_wider_errors_name_the_file_and_line(tmp_path, wider_images, text, line, fragment):
    ann = tmp_path / "wider_face_train_bbx_gt.txt"
    ann.write_text(text)
    with pytest.raises(InputError) as err:
        read_wider_face(ann, wider_images)
    assert err.value.field == str(ann)
    assert f"line {line}:" in str(err.value) and fragment in str(err.value)


def test_wider_missing_files(tmp_path, wider_images):
    with pytest.raises(InputError, match="does not exist"):
        read_wider_face(tmp_path / "nope.txt", wider_images)
    ann = write_wider_face(tmp_path / "a.txt", [("0--Parade/0_Parade_1.jpg", [])])
    with pytest.raises(InputError, match="images folder does not exist"):
        read_wider_face(ann, tmp_path / "no_images")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(InputError, match="holds no images"):
        read_wider_face(tmp_path / "empty.txt", wider_images)
