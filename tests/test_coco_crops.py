"""Reignite's classification folder cut from COCO boxes (data.coco_crops)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import InputError
from data.coco_crops import make_crops_imagefolder
from data.coco_digits import make_digits_coco
from data.split import split_imagenet_folder


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return make_digits_coco(tmp_path_factory.mktemp("coco") / "digits", num_train=20, num_val=5, seed=0)


def annotations(ann_file: Path) -> tuple[dict, list[dict]]:
    data = json.loads(ann_file.read_text())
    return data, data["annotations"]


def files_and_mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def write_coco(folder: Path, categories: list[dict], boxes: list[tuple[int, list[float]]]) -> tuple[Path, Path]:
    """One 64x48 image per box, a coloured rectangle at the box, and its instances file."""
    images_dir = folder / "images"
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(1)
    images, anns = [], []
    for i, (cat_id, (x, y, w, h)) in enumerate(boxes, start=1):
        pixels = rng.integers(0, 60, (48, 64, 3), dtype=np.uint8)
        pixels[int(y):int(y + h), int(x):int(x + w)] = (200, 40 * (i % 5), 90)
        Image.fromarray(pixels).save(images_dir / f"im{i}.png")
        images.append({"id": i, "file_name": f"im{i}.png", "width": 64, "height": 48})
        anns.append({"id": i, "image_id": i, "category_id": cat_id, "bbox": [x, y, w, h], "iscrowd": 0})
    ann_file = folder / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return images_dir, ann_file


def test_layout_counts_and_description(digits, tmp_path):
    crops = make_crops_imagefolder(digits.train_images, digits.train_json, tmp_path / "cache", min_size=16)
    data, anns = annotations(digits.train_json)
    big = [a for a in anns if a["bbox"][2] >= 16 and a["bbox"][3] >= 16]
    assert 0 < len(big) < len(anns)  # the set really has boxes on both sides of the threshold
    expected = {str(c["id"] - 1): sum(1 for a in big if a["category_id"] == c["id"]) for c in data["categories"]}
    expected = {name: n for name, n in expected.items() if n}
    assert crops.class_counts == expected and crops.total == len(big)
    assert crops.skipped_small == len(anns) - len(big)
    assert crops.root.parent == tmp_path / "cache"
    folders = sorted(p.name for p in crops.root.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders == sorted(expected)
    for name, n in expected.items():
        pngs = list((crops.root / name).iterdir())
        assert len(pngs) == n and all(p.suffix == ".png" for p in pngs)
    assert crops.describe() == (f"{len(big):,} crops of {len(expected)} categories from {digits.train_json} "
                                f"(boxes >= 16 px; {len(anns) - len(big)} smaller skipped"
                                + (f"; {10 - len(expected)} categories without a crop" if len(expected) < 10 else "")
                                + ")")
    # The folder is a valid ImageNet-format input for the split stage.
    split = split_imagenet_folder(crops.root, 0.2, 0.0, seed=0, output_dir=tmp_path / "lists")
    assert split.labels == sorted(expected) and sum(split.counts.values()) == len(big)


def test_crop_pixels_equal_the_image_region(digits, tmp_path):
    crops = make_crops_imagefolder(digits.train_images, digits.train_json, tmp_path / "cache", min_size=16)
    data, anns = annotations(digits.train_json)
    files = {im["id"]: im["file_name"] for im in data["images"]}
    checked = 0
    for index, ann in enumerate(anns):
        x, y, w, h = (int(v) for v in ann["bbox"])
        path = crops.root / crops.category_folders[ann["category_id"]] / f"{ann['image_id']:06d}_{index:06d}.png"
        if w < 16 or h < 16:
            assert not path.exists()
            continue
        source = np.asarray(Image.open(digits.train_images / files[ann["image_id"]]).convert("RGB"))
        crop = np.asarray(Image.open(path))
        assert crop.shape == (h, w, 3)
        np.testing.assert_array_equal(crop, source[y:y + h, x:x + w])
        checked += 1
    assert checked == crops.total


def test_built_once_and_deterministic(digits, tmp_path):
    first = make_crops_imagefolder(digits.train_images, digits.train_json, tmp_path / "a", min_size=16)
    stamps = files_and_mtimes(first.root)
    again = make_crops_imagefolder(digits.train_images, digits.train_json, tmp_path / "a", min_size=16)
    assert again == first and files_and_mtimes(again.root) == stamps  # reused, nothing rewritten
    elsewhere = make_crops_imagefolder(digits.train_images, digits.train_json, tmp_path / "b", min_size=16)
    assert elsewhere.root.name == first.root.name
    read = lambda root: {p.relative_to(root): p.read_bytes() for p in root.rglob("*.png")}  # noqa: E731
    assert read(elsewhere.root) == read(first.root)
    # Other settings get their own folder next to the first one.
    smaller = make_crops_imagefolder(digits.train_images, digits.train_json, tmp_path / "a", min_size=8)
    assert smaller.root != first.root and smaller.total > first.total
    assert files_and_mtimes(first.root) == stamps


def test_cap_per_class_is_a_seeded_choice(digits, tmp_path):
    full = make_crops_imagefolder(digits.train_images, digits.train_json, tmp_path, min_size=8)
    capped = make_crops_imagefolder(digits.train_images, digits.train_json, tmp_path, min_size=8,
                                    max_per_class=2, seed=0)
    assert capped.class_counts == {k: min(2, n) for k, n in full.class_counts.items()}
    assert capped.capped == full.total - capped.total > 0 and "cap of 2 per class" in capped.describe()
    names = lambda crops: sorted(str(p.relative_to(crops.root)) for p in crops.root.rglob("*.png"))  # noqa: E731
    assert set(names(capped)) <= set(names(full))
    same = make_crops_imagefolder(digits.train_images, digits.train_json, tmp_path / "again", min_size=8,
                                  max_per_class=2, seed=0)
    assert names(same) == names(capped)
    other = [make_crops_imagefolder(digits.train_images, digits.train_json, tmp_path, min_size=8,
                                    max_per_class=2, seed=s) for s in (1, 2, 3)]
    assert any(names(o) != names(capped) for o in other)


def test_no_crop_at_all_is_refused(digits, tmp_path):
    _, anns = annotations(digits.train_json)
    with pytest.raises(InputError) as err:
        make_crops_imagefolder(digits.train_images, digits.train_json, tmp_path / "cache", min_size=37)
    assert err.value.field == "train_json"
    assert "37 px" in str(err.value) and f"{len(anns)} boxes were smaller" in str(err.value)
    assert not any(p.name.startswith("crops_") for p in (tmp_path / "cache").iterdir())  # nothing left half-built


def _boxes_of(path: Path) -> tuple[int, int, int, int]:
    image_id, index = (int(v) for v in path.stem.split("_")[:2])
    return image_id, index


def test_one_category_gets_a_background_class_of_free_regions(tmp_path):
    """Faces, pedestrians, defects: one category with crops. Its background twin of each box is
    the same size, from the same image, overlapping no box (crowd regions too); seeded by the file."""
    cats = [{"id": 1, "name": "galaxy"}, {"id": 2, "name": "tiny"}]
    boxes = [(1, [2, 3, 30, 20]), (1, [30, 20, 18, 18]), (2, [5, 5, 8, 8]), (1, [0, 0, 64, 48])]
    images_dir, ann_file = write_coco(tmp_path / "one", cats, boxes)
    crops = make_crops_imagefolder(images_dir, ann_file, tmp_path / "cache", min_size=16, json_field="data.train_json")
    # The full-image box has no free region of its size: no twin for it.
    assert crops.class_counts == {"galaxy": 3, "background": 2} and crops.background == 2
    assert "1 category + 2 background crops" in crops.describe() and "seeded" in crops.describe()
    doc = json.loads(ann_file.read_text())
    for png in (crops.root / "background").glob("*.png"):
        _, index = _boxes_of(png)
        own = doc["annotations"][index]["bbox"]
        assert Image.open(png).size == (int(own[2]), int(own[3]))  # the object's own size
    again = make_crops_imagefolder(images_dir, ann_file, tmp_path / "cache2", min_size=16)
    assert sorted(p.read_bytes() for p in (again.root / "background").glob("*.png")) == \
        sorted(p.read_bytes() for p in (crops.root / "background").glob("*.png"))  # same file, same crops


def test_background_regions_touch_no_box():
    from data.coco import CocoSet
    from data.coco_crops import _background_boxes, _overlap

    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    anns = [{"bbox": [0, 0, 10, 10], "iscrowd": 0}, {"bbox": [20, 5, 12, 12], "iscrowd": 1}]
    coco = CocoSet(images_dir=Path("."), ann_file=Path("a.json"), cat_ids=[1], cat_names=["x"], images=images,
                   anns_by_image={1: anns}, dataset={})
    for seed in range(50):
        out = _background_boxes(coco, [(1, 0, (0, 0, 10, 10))], np.random.default_rng(seed))
        for _, _, box in out:
            assert box[2] - box[0] == 10 and box[3] - box[1] == 10
            assert not _overlap(box, (0, 0, 10, 10)) and not _overlap(box, (20, 5, 32, 17))
            assert 0 <= box[0] and box[2] <= 40 and 0 <= box[1] and box[3] <= 30


def test_category_names_become_unique_safe_folders(tmp_path):
    cats = [{"id": 3, "name": "traffic light"}, {"id": 7, "name": "Traffic/Light"},
            {"id": 9, "name": ".."}, {"id": 11, "name": "Ünïcode"}]
    boxes = [(3, [0, 0, 20, 20]), (7, [10.4, 5.6, 20.2, 17.0]), (9, [40, 20, 24, 28]), (11, [1, 1, 16, 16])]
    images_dir, ann_file = write_coco(tmp_path / "named", cats, boxes)
    crops = make_crops_imagefolder(images_dir, ann_file, tmp_path / "cache", min_size=16)
    assert crops.category_folders == {3: "traffic_light", 7: "Traffic_Light_7", 9: "category_9", 11: "Ünïcode"}
    # A fractional box is cut on whole pixels covering it.
    crop = Image.open(crops.root / "Traffic_Light_7" / "000002_000001.png")
    assert crop.size == (21, 18)


def test_bad_arguments_and_files(digits, tmp_path):
    for kwargs, field in (({"min_size": 0}, "min_size"), ({"max_per_class": 0}, "max_per_class"),
                          ({"seed": -1}, "seed")):
        with pytest.raises(InputError) as err:
            make_crops_imagefolder(digits.train_images, digits.train_json, tmp_path, **kwargs)
        assert err.value.field == field
    with pytest.raises(InputError) as err:
        make_crops_imagefolder(digits.train_images, tmp_path / "none.json", tmp_path)
    assert err.value.field == "train_json"
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(InputError) as err:
        make_crops_imagefolder(digits.train_images, broken, tmp_path)
    assert err.value.field == "train_json"
