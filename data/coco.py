"""Reader and torch Dataset for a COCO-format detection folder (a user's or the embedded one).

Label mapping used by every detector in the project: contiguous label l in 1..C stands for
category id `cat_ids[l - 1]` (category ids sorted ascending); 0 is background, so a
torchvision detector is built with `num_classes = C + 1`.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from core.errors import InputError
from core.text import excerpt
from data.transforms import bomb_message, bombs_as_errors, load_rgb

BOX_TOLERANCE = 1.0  # px a box may stick out of its image (rounding in annotation tools)
MAX_SIDE = 2**31 - 1  # px; a larger width/height is no image (and overflows float arithmetic)


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


def load_coco(images_dir: Path, ann_file: Path, images_field: str | None = None,
              json_field: str | None = None, user_files: bool = False) -> CocoSet:
    """Parse and validate a COCO instances file; one InputError names the first problem.

    With `images_field`/`json_field` (the parameter names the user set), errors name those
    fields; without them they name the offending file or folder. Every `file_name` must lie
    inside `images_dir` (no absolute path, no `..`, no symlink leading out). `user_files` (the
    parameter edge): each image file's header (never its pixels) is read — its size must be the
    listed width x height and within PIL's decompression-bomb limit — and the file must hold at
    least one non-crowd box (a run's own subsets may have none: a sparse user set's search-val
    split is scored as it is, not refused mid-run).
    """
    images_dir, ann_file = Path(images_dir), Path(ann_file)
    fail = _Reporter(images_dir, ann_file, images_field, json_field)
    data = _read_json(ann_file, fail)
    images = sorted(_check_images(data["images"], images_dir, fail), key=lambda im: im["id"])
    categories = sorted(_check_categories(data["categories"], fail), key=lambda c: c["id"])
    by_id = {im["id"]: im for im in images}
    cat_ids = [c["id"] for c in categories]
    anns_by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in images}
    for ann in _check_annotations(data["annotations"], by_id, set(cat_ids), fail, require_boxes=user_files):
        anns_by_image[ann["image_id"]].append(ann)
    if user_files:
        _check_image_sizes(images, images_dir, fail)
    return CocoSet(images_dir=images_dir, ann_file=ann_file, cat_ids=cat_ids,
                   cat_names=[str(c["name"]) for c in categories], images=images,
                   anns_by_image=anns_by_image, dataset=data)


def check_coco_files(images_dir: str | Path, ann_file: str | Path, images_field: str,
                     json_field: str) -> None:
    """Validate a COCO pair at the parameter edge: `load_coco`'s checks plus each image file's
    header (size as listed, within PIL's pixel limit; no pixel is decoded).

    Raises InputError naming `json_field` for a bad annotation file (including a file_name
    leading out of the images folder or a width/height the file does not have) and
    `images_field` for a missing folder or a missing, unreadable or oversized image file.
    """
    load_coco(Path(images_dir), Path(ann_file), images_field=images_field, json_field=json_field,
              user_files=True)


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
        image = load_rgb(path)  # a decompression bomb is one InputError too
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

class _Reporter:
    """Builds the InputError for a problem in the annotation file or in the images folder."""

    def __init__(self, images_dir: Path, ann_file: Path, images_field: str | None,
                 json_field: str | None) -> None:
        self.images_dir, self.ann_file = images_dir, ann_file
        self.images_field, self.json_field = images_field, json_field

    def json(self, message: str) -> InputError:
        # Legacy callers (no field names) get the file as the field, as before.
        if self.json_field is None:
            return InputError(str(self.ann_file), message)
        return InputError(self.json_field, f"{self.ann_file} {message}")

    def images(self, message: str, legacy_field: str) -> InputError:
        if self.images_field is None:
            return InputError(legacy_field, message)
        return InputError(self.images_field, message)


def _read_json(ann_file: Path, fail: _Reporter) -> dict[str, Any]:
    if not ann_file.is_file():
        raise fail.json("does not exist; give a COCO instances json file")
    raw = ann_file.read_bytes()
    if not raw.strip():
        raise fail.json("is empty; give a COCO instances json file")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise fail.json("is not valid JSON (not UTF-8 text); give a COCO instances json file") from exc
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise fail.json(f"is not valid JSON ({str(exc)[:120]}); give a COCO instances json file") from exc
    if not isinstance(data, dict):
        raise fail.json(f"holds a JSON {type(data).__name__}, but must hold an object with "
                        "images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise fail.json(f"needs a list under '{key}' (COCO instances format)")
    if not data["categories"]:
        raise fail.json("has no categories; at least one is needed")
    return data


def _check_images(images: list, images_dir: Path, fail: _Reporter) -> list[dict[str, Any]]:
    if not images_dir.is_dir():
        raise fail.images(f"images folder {images_dir} does not exist", str(images_dir))
    seen: set = set()
    folder = ImagesFolder(images_dir)
    for i, im in enumerate(images):
        if not (isinstance(im, dict) and _is_int(im.get("id")) and isinstance(im.get("file_name"), str)
                and _is_int(im.get("width")) and _is_int(im.get("height"))
                and 0 < im["width"] <= MAX_SIDE and 0 < im["height"] <= MAX_SIDE):
            raise fail.json(f"images[{i}] needs integer id, file_name, positive width and height "
                            f"(at most {MAX_SIDE})")
        if im["id"] in seen:
            raise fail.json(f"images[{i}] repeats image id {im['id']}; image ids must be unique")
        seen.add(im["id"])
        escape = folder.escape(im["file_name"])
        if escape:
            raise fail.json(f"images[{i}] (image id {im['id']}) field file_name {excerpt(im['file_name'])} "
                            f"{escape}; file_name must name a file inside the images folder {images_dir}")
        if not folder.exists(im["file_name"]):
            raise fail.images(f"image {excerpt(im['file_name'])} (id {im['id']}) listed in {fail.ann_file} "
                              f"is missing from {images_dir}", str(fail.ann_file))
    return images


def _check_image_sizes(images: list[dict[str, Any]], images_dir: Path, fail: _Reporter) -> None:
    for im in images:
        path = images_dir / im["file_name"]
        try:
            width, height = image_header_size(path)
        except UnreadableImage as exc:
            raise fail.images(f"image {excerpt(im['file_name'])} (id {im['id']}) listed in {fail.ann_file}: "
                              f"{path} {exc}", str(path)) from None
        if (width, height) != (im["width"], im["height"]):
            raise fail.json(f"image id {im['id']} ({excerpt(im['file_name'])}) has width x height "
                            f"{im['width']}x{im['height']}, but the file {path} is {width}x{height}")


# --- image files: containment and headers, shared with the WIDER FACE reader (data/faces.py) ---

class ImagesFolder:
    """Image paths named by an annotation file, checked against the images folder `root`.

    `escape(name)` says why `name` may not be used (absolute, `..` components, or a symlink,
    itself or a folder above it, that resolves outside the resolved root); `exists(name)` says
    whether it is a file. One directory listing per folder instead of one stat per image, so
    big sets (100k+ images) check in a fraction of a second; only symlinks are resolved one by one.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.real_root = self.root.resolve()
        self._parents: dict[PurePosixPath, str | None] = {}           # parent -> escape reason
        self._listings: dict[PurePosixPath, tuple[frozenset[str], frozenset[str]]] = {}  # files, links

    def escape(self, name: str) -> str | None:
        """None when `name` stays inside the folder, else what is wrong (a phrase)."""
        if not name or "\x00" in name:
            return "is empty or holds a NUL character"
        rel = PurePosixPath(name)
        if rel.is_absolute():
            return "is an absolute path"
        if ".." in rel.parts:
            return "has '..' components"
        parent = rel.parent
        if parent not in self._parents:
            self._parents[parent] = self._outside(self.root / parent, "lies under a symlinked folder")
        if self._parents[parent]:
            return self._parents[parent]
        if rel.name in self._listing(parent)[1]:
            return self._outside(self.root / rel, "is a symlink")
        return None

    def exists(self, name: str) -> bool:
        rel = PurePosixPath(name)
        return rel.name in self._listing(rel.parent)[0]

    def _outside(self, path: Path, what: str) -> str | None:
        try:
            real = path.resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a name the OS refuses
            return f"{what} that cannot be resolved"
        if real.is_relative_to(self.real_root):
            return None
        return f"{what} that resolves to {real}, outside the images folder"

    def _listing(self, parent: PurePosixPath) -> tuple[frozenset[str], frozenset[str]]:
        if parent not in self._listings:
            files, links = set(), set()
            try:
                entries = list(os.scandir(self.root / parent))
            except OSError:
                entries = []
            for entry in entries:
                try:
                    if entry.is_symlink():
                        links.add(entry.name)
                    if entry.is_file():  # follows symlinks; a symlink loop raises
                        files.add(entry.name)
                except OSError:
                    pass
            self._listings[parent] = frozenset(files), frozenset(links)
        return self._listings[parent]


class UnreadableImage(Exception):
    """An image file whose header cannot be used; the message completes "<path> ..."."""


def image_header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header (no pixel is decoded); UnreadableImage when the
    file is missing, not an image, or declares more pixels than PIL's decompression-bomb limit."""
    try:
        with bombs_as_errors(), open(path, "rb") as handle, Image.open(handle) as image:
            width, height = image.size
    except FileNotFoundError:
        raise UnreadableImage("does not exist") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnreadableImage(bomb_message(None)) from None
    except Exception as exc:  # hostile bytes: any plugin error is "not an image", never a traceback
        raise UnreadableImage(f"cannot be read as an image ({type(exc).__name__})") from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise UnreadableImage(bomb_message((width, height)))
    return width, height


def _check_categories(categories: list, fail: _Reporter) -> list[dict[str, Any]]:
    seen: set = set()
    for i, cat in enumerate(categories):
        if not (isinstance(cat, dict) and _is_int(cat.get("id")) and "name" in cat):
            raise fail.json(f"categories[{i}] needs an integer id and a name")
        if cat["id"] in seen:
            raise fail.json(f"categories[{i}] repeats category id {cat['id']}; category ids must be unique")
        seen.add(cat["id"])
    return categories


def _check_annotations(annotations: list, images: dict[int, dict], cat_ids: set[int],
                       fail: _Reporter, require_boxes: bool = False) -> list[dict[str, Any]]:
    if require_boxes and not annotations:
        raise fail.json("has no annotations; a detection set needs at least one object box")
    seen: set = set()
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise fail.json(f"annotations[{i}] is not an object")
        if not _is_int(ann.get("id")):
            raise fail.json(f"annotations[{i}] needs an integer id, got {excerpt(ann.get('id'))}")
        label = f"annotation {ann['id']}"
        if ann["id"] in seen:
            raise fail.json(f"annotations[{i}] repeats annotation id {ann['id']}; annotation ids must be "
                            "unique (pycocotools would silently keep only the last one)")
        seen.add(ann["id"])
        if not _is_int(ann.get("image_id")) or ann["image_id"] not in images:
            raise fail.json(f"{label} refers to unknown image_id {ann.get('image_id')!r}; "
                            "it must be the id of an entry in images")
        if not _is_int(ann.get("category_id")) or ann["category_id"] not in cat_ids:
            raise fail.json(f"{label} has unknown category_id {ann.get('category_id')!r}; "
                            f"known: {_preview(sorted(cat_ids))}")
        _check_bbox(ann.get("bbox"), images[ann["image_id"]], label, fail)
        if ann.get("iscrowd", 0) not in (0, 1):
            raise fail.json(f"{label} has iscrowd {excerpt(ann['iscrowd'])}; it must be 0 or 1")
        if "area" not in ann:  # pycocotools' evaluation needs one: a box's own area
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
        elif not (_is_number(ann["area"]) and ann["area"] >= 0):
            raise fail.json(f"{label} has area {excerpt(ann['area'])}; it must be a number >= 0")
    if require_boxes and all(ann.get("iscrowd", 0) for ann in annotations):
        raise fail.json(f"has only crowd annotations (iscrowd=1, {len(annotations)} of them); "
                        "at least one non-crowd object box is needed to train and evaluate")
    return annotations


def _check_bbox(bbox: Any, image: dict[str, Any], label: str, fail: _Reporter) -> None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise fail.json(f"{label} needs bbox [x, y, width, height] of finite numbers, got {excerpt(bbox)}")
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        raise fail.json(f"{label} has bbox {bbox} with non-positive width or height; both must be > 0")
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > image["width"] + t or y + h > image["height"] + t:
        raise fail.json(f"{label} has bbox {bbox} outside its image "
                        f"{image['file_name']!r} ({image['width']}x{image['height']})")


def _preview(values: list[Any], limit: int = 20) -> str:
    return str(values) if len(values) <= limit else f"{values[:limit]} ... ({len(values)} in all)"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite JSON number that float arithmetic can hold (a 400-digit integer is not one)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
