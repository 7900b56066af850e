"""Reader and torch Dataset for a COCO-format detection folder (a user's or the embedded one).

Label mapping used by every detector in the project: contiguous label l in 1..C stands for
category id `cat_ids[l - 1]` (category ids sorted ascending); 0 is background, so a
torchvision detector is built with `num_classes = C + 1`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from data.transforms import load_rgb
from spnas.errors import InputError

BOX_TOLERANCE = 1.0  # px a box may stick out of its image (rounding in annotation tools)


@dataclass
class CocoSet:
    images_dir: Path
    ann_file: Path
    cat_ids: list[int]                                   # sorted
    cat_names: list[str]                                 # same order as cat_ids
    images: list[dict[str, Any]] = field(repr=False)     # sorted by id
    anns_by_image: dict[int, list[dict[str, Any]]] = field(repr=False)
    dataset: dict[str, Any] = field(repr=False)          # the parsed json, for pycocotools

    @property
    def num_classes(self) -> int:
        """Categories plus background, as torchvision detectors count them."""
        return len(self.cat_ids) + 1

    @property
    def label_names(self) -> list[str]:
        """Names indexed by contiguous label (index 0 = background)."""
        return ["__background__"] + self.cat_names

    def label_to_cat_id(self, label: int) -> int:
        if not 1 <= label <= len(self.cat_ids):
            raise ValueError(f"label {label} is outside 1..{len(self.cat_ids)}")
        return self.cat_ids[label - 1]

    def cat_id_to_label(self, cat_id: int) -> int:
        return self._labels_by_cat_id[cat_id]

    @cached_property
    def _labels_by_cat_id(self) -> dict[int, int]:
        return {cat_id: label for label, cat_id in enumerate(self.cat_ids, start=1)}


def load_coco(images_dir: Path, ann_file: Path) -> CocoSet:
    """Parse and validate a COCO instances file; one InputError names the first problem."""
    images_dir, ann_file = Path(images_dir), Path(ann_file)
    data = _read_json(ann_file)
    where = str(ann_file)
    images = sorted(_check_images(data["images"], images_dir, where), key=lambda im: im["id"])
    categories = sorted(_check_categories(data["categories"], where), key=lambda c: c["id"])
    by_id = {im["id"]: im for im in images}
    cat_ids = [c["id"] for c in categories]
    anns_by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in images}
    for ann in _check_annotations(data["annotations"], by_id, set(cat_ids), where):
        anns_by_image[ann["image_id"]].append(ann)
    return CocoSet(images_dir=images_dir, ann_file=ann_file, cat_ids=cat_ids,
                   cat_names=[str(c["name"]) for c in categories], images=images,
                   anns_by_image=anns_by_image, dataset=data)


class CocoDetection(Dataset):
    """Items (image float32 CHW in [0, 1], target dict) in torchvision's detection format."""

    def __init__(self, coco: CocoSet, max_images: int | None = None) -> None:
        if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
            raise InputError("max_images", f"must be a positive integer or None, got {max_images!r}")
        self.coco = coco
        # The first images by id: a deterministic subset, the same on every run.
        self.images = coco.images if max_images is None else coco.images[:max_images]

    @property
    def image_ids(self) -> list[int]:
        return [im["id"] for im in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        info = self.images[index]
        path = self.coco.images_dir / info["file_name"]
        image = load_rgb(path)
        if image.size != (info["width"], info["height"]):
            raise InputError(str(path), f"is {image.size[0]}x{image.size[1]} but "
                                        f"{self.coco.ann_file} says {info['width']}x{info['height']}")
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        return tensor, self._target(info)

    def _target(self, info: dict[str, Any]) -> dict[str, Any]:
        # Crowd regions are not single objects: torchvision's losses cannot use them.
        anns = [a for a in self.coco.anns_by_image[info["id"]] if not a.get("iscrowd", 0)]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        # Boxes may stick out by the tolerance load_coco allows; clip, drop any left degenerate.
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, info["width"])
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, info["height"])
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        labels = np.array([self.coco.cat_id_to_label(a["category_id"]) for a in anns], dtype=np.int64)
        return {
            "boxes": torch.from_numpy(boxes[keep]),
            "labels": torch.from_numpy(labels.reshape(-1)[keep]),
            "image_id": int(info["id"]),
        }


def collate_detection(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[list, list]:
    """Detection images differ in size, so a batch is two lists rather than stacked tensors."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


# --- validation -----------------------------------------------------------------------------

def _read_json(ann_file: Path) -> dict[str, Any]:
    if not ann_file.is_file():
        raise InputError(str(ann_file), "annotation file does not exist; give a COCO instances json")
    try:
        data = json.loads(ann_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(str(ann_file), f"is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(str(ann_file), "must hold a JSON object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(str(ann_file), f"needs a list under '{key}' (COCO instances format)")
    if not data["categories"]:
        raise InputError(str(ann_file), "has no categories; at least one is needed")
    return data


def _check_images(images: list, images_dir: Path, where: str) -> list[dict[str, Any]]:
    if not images_dir.is_dir():
        raise InputError(str(images_dir), "images folder does not exist")
    seen: set = set()
    for i, im in enumerate(images):
        if not (isinstance(im, dict) and _is_int(im.get("id")) and isinstance(im.get("file_name"), str)
                and _is_int(im.get("width")) and _is_int(im.get("height"))
                and im["width"] > 0 and im["height"] > 0):
            raise InputError(where, f"images[{i}] needs integer id, file_name, positive width and height")
        if im["id"] in seen:
            raise InputError(where, f"images[{i}] repeats image id {im['id']}")
        seen.add(im["id"])
        if not (images_dir / im["file_name"]).is_file():
            raise InputError(where, f"image {im['file_name']!r} (id {im['id']}) is missing from {images_dir}")
    return images


def _check_categories(categories: list, where: str) -> list[dict[str, Any]]:
    seen: set = set()
    for i, cat in enumerate(categories):
        if not (isinstance(cat, dict) and _is_int(cat.get("id")) and "name" in cat):
            raise InputError(where, f"categories[{i}] needs an integer id and a name")
        if cat["id"] in seen:
            raise InputError(where, f"categories[{i}] repeats category id {cat['id']}")
        seen.add(cat["id"])
    return categories


def _check_annotations(annotations: list, images: dict[int, dict], cat_ids: set[int],
                       where: str) -> list[dict[str, Any]]:
    for i, ann in enumerate(annotations):
        label = f"annotation {ann.get('id', i) if isinstance(ann, dict) else i}"
        if not isinstance(ann, dict):
            raise InputError(where, f"{label} is not an object")
        if ann.get("image_id") not in images:
            raise InputError(where, f"{label} refers to unknown image_id {ann.get('image_id')!r}")
        if ann.get("category_id") not in cat_ids:
            raise InputError(where, f"{label} has unknown category_id {ann.get('category_id')!r}; "
                                    f"known: {sorted(cat_ids)}")
        _check_bbox(ann.get("bbox"), images[ann["image_id"]], label, where)
    return annotations


def _check_bbox(bbox: Any, image: dict[str, Any], label: str, where: str) -> None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise InputError(where, f"{label} needs bbox [x, y, width, height] of numbers, got {bbox!r}")
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        raise InputError(where, f"{label} has bbox {bbox} with non-positive width or height")
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > image["width"] + t or y + h > image["height"] + t:
        raise InputError(where, f"{label} has bbox {bbox} outside its image "
                                f"{image['file_name']!r} ({image['width']}x{image['height']})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
