"""An ImageNet-format classification folder cut out of a COCO detection set (SP-NAS reignite).

Reignite trains the searched backbone as a classifier. A user who gives only COCO files has
no classification folder, so the objects of their own boxes become one: one sub-folder per
category, one PNG per box whose sides are both at least `min_size` px. A one-category set (faces,
pedestrians, defects: the commonest detection task) adds a `background` class: crops of the same
sizes from the same images that touch no box, drawn with a generator seeded from the annotation
file, so a classifier still has two classes to tell apart.

    <root>/crops_<ann stem>_<key>/<category folder>/<image_id>_<annotation index>.png
                                 crops.json   (what was kept and skipped; read on reuse)

`<key>` hashes the annotation file's bytes and the crop settings, so each combination is built
once (atomically, by data._build.build_once) and reused by later runs; a changed file gets a
new folder instead of silently reusing stale crops.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError
from data._build import build_once
from data.coco import CocoSet, load_coco
from data.transforms import load_rgb

MANIFEST = "crops.json"
FORMAT_VERSION = 2  # bump when the folder layout or crop rule changes: old builds are not reused
_UNSAFE = re.compile(r"[^\w.-]+")  # \w keeps non-ASCII letters; spaces, slashes etc. become "_"


@dataclass(frozen=True)
class CropSet:
    root: Path                                   # the ImageNet-format folder (classification_dir)
    ann_file: Path
    min_size: int
    max_per_class: int | None
    class_counts: dict[str, int]                 # folder name -> crops, sorted by folder name
    category_folders: dict[int, str]             # COCO category id -> folder (categories with crops)
    skipped_small: int                           # boxes with a side below min_size
    capped: int = 0                              # boxes left out by max_per_class
    crowd_skipped: int = 0                       # iscrowd regions (not single objects)
    empty_categories: list[str] = field(default_factory=list)  # names of categories without a crop
    background: int = 0                          # background crops (one-category sets only)

    @property
    def total(self) -> int:
        return sum(self.class_counts.values())

    def describe(self) -> str:
        """One line for logs."""
        kinds = (f"{len(self.class_counts) - 1} category + {self.background:,} background crops (one-category "
                 "set: regions touching no box, same sizes, same images, seeded)") if self.background \
            else f"{len(self.class_counts)} categories"
        text = (f"{self.total:,} crops of {kinds} from {self.ann_file} "
                f"(boxes >= {self.min_size} px; {self.skipped_small:,} smaller skipped")
        if self.capped:
            text += f"; {self.capped:,} over the cap of {self.max_per_class} per class left out"
        if self.crowd_skipped:
            text += f"; {self.crowd_skipped:,} crowd regions skipped"
        if self.empty_categories:
            text += f"; {len(self.empty_categories)} categories without a crop"
        return text + ")"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (Prefect results, MLflow params)."""
        return {"root": str(self.root), "ann_file": str(self.ann_file), "min_size": self.min_size,
                "max_per_class": self.max_per_class, "class_counts": dict(self.class_counts),
                "category_folders": {str(k): v for k, v in self.category_folders.items()},
                "skipped_small": self.skipped_small, "capped": self.capped,
                "crowd_skipped": self.crowd_skipped, "empty_categories": list(self.empty_categories),
                "background": self.background, "total": self.total, "summary": self.describe()}


def make_crops_imagefolder(images_dir: str | Path, ann_file: str | Path, root: str | Path,
                           min_size: int = 16, max_per_class: int | None = None, seed: int = 0,
                           *, images_field: str = "train_images",
                           json_field: str = "train_json") -> CropSet:
    """Build (once) and describe the crops folder of `ann_file` under the cache folder `root`.

    `max_per_class` keeps a seeded random choice of that many boxes per category (None: all);
    `seed` only matters with a cap. Raises InputError naming `json_field` when no category has a
    box of at least `min_size` px on both sides, or a one-category set leaves no background region.
    """
    _check_args(min_size, max_per_class, seed)
    images_dir, ann_file = Path(images_dir), Path(ann_file)
    if not ann_file.is_file():
        raise InputError(json_field, f"{ann_file} does not exist; give a COCO instances json file")
    params: dict[str, Any] = {
        "kind": "coco_crops", "version": FORMAT_VERSION, "ann_sha256": _sha256(ann_file),
        "images_dir": str(images_dir.expanduser().resolve()), "min_size": min_size,
        "max_per_class": max_per_class,
        # Without a cap every box is kept: the seed changes nothing, so it must not force a rebuild.
        "seed": seed if max_per_class is not None else None,
    }
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    final = Path(root) / f"crops_{_folder_name(ann_file.stem, 'annotations')[:40]}_{key}"

    def build(tmp: Path) -> None:
        plan, coco = plan_crops(images_dir, ann_file, min_size, max_per_class, seed, images_field=images_field,
                                json_field=json_field, ann_sha256=params["ann_sha256"])
        _write(tmp, coco, plan, images_field, min_size, max_per_class)

    build_once(final, params, build)
    return _read_manifest(final, ann_file)


def check_crops(images_dir: str | Path, ann_file: str | Path, min_size: int, *, images_field: str,
                json_field: str) -> str:
    """What `make_crops_imagefolder` would cut, planned without decoding an image or writing a
    file (the preflight's check); one InputError when it could not give two classes."""
    plan, _ = plan_crops(Path(images_dir), Path(ann_file), min_size, None, 0, images_field=images_field,
                         json_field=json_field)
    classes = sum(1 for items in plan.crops.values() if items)
    return f"{classes} categories" if not plan.background else f"1 category + {len(plan.background)} background"


def plan_crops(images_dir: Path, ann_file: Path, min_size: int, max_per_class: int | None, seed: int, *,
               images_field: str, json_field: str, ann_sha256: str | None = None) -> tuple[_Plan, CocoSet]:
    coco = load_coco(images_dir, ann_file, images_field=images_field, json_field=json_field)
    plan = _plan(coco, min_size, max_per_class, seed)
    with_crops = [cat_id for cat_id, items in plan.crops.items() if items]
    if not with_crops:
        raise InputError(json_field, (
            f"{coco.ann_file} has no box of at least {min_size} px on both sides ({plan.skipped_small:,} boxes "
            "were smaller); lower data.crop_min_size or give data.classification_dir"))
    if len(with_crops) == 1:
        digest = ann_sha256 or _sha256(ann_file)
        plan.background = _background_boxes(coco, plan.crops[with_crops[0]], np.random.default_rng(int(digest[:12], 16)))
        if not plan.background:
            raise InputError(json_field, (
                f"{coco.ann_file} has one category and its boxes leave no region of their size free of boxes "
                "for a background class; give data.classification_dir (two or more classes)"))
    return plan, coco


# --- planning: which boxes become which files (no image decoded yet) -------------------------

@dataclass
class _Plan:
    folders: dict[int, str]                                   # cat id -> folder, every category
    names: dict[int, str]                                     # cat id -> category name
    crops: dict[int, list[tuple[int, int, tuple[int, int, int, int]]]]  # cat id -> (image, ann index, box)
    skipped_small: int = 0
    capped: int = 0
    crowd_skipped: int = 0
    background: list[tuple[int, int, tuple[int, int, int, int]]] = field(default_factory=list)  # like crops


def _plan(coco: CocoSet, min_size: int, max_per_class: int | None, seed: int) -> _Plan:
    images = {im["id"]: im for im in coco.images}
    plan = _Plan(folders=_unique_folders(coco), names=dict(zip(coco.cat_ids, coco.cat_names)),
                 crops={cat_id: [] for cat_id in coco.cat_ids})
    # Annotation index in the file: unique and stable even when annotation ids are absent or repeated.
    for index, ann in enumerate(coco.dataset["annotations"]):
        if ann.get("iscrowd", 0):
            plan.crowd_skipped += 1
            continue
        box = _pixel_box(ann["bbox"], images[ann["image_id"]])
        x, y, w, h = ann["bbox"]
        if w < min_size or h < min_size or box is None:
            plan.skipped_small += 1
            continue
        plan.crops[ann["category_id"]].append((ann["image_id"], index, box))
    if max_per_class is not None:
        for label, cat_id in enumerate(coco.cat_ids):
            items = plan.crops[cat_id]
            if len(items) > max_per_class:
                # One generator per category: a class's choice does not depend on the others.
                rng = np.random.default_rng([seed, label])
                keep = sorted(rng.choice(len(items), size=max_per_class, replace=False).tolist())
                plan.capped += len(items) - max_per_class
                plan.crops[cat_id] = [items[i] for i in keep]
    return plan


def _pixel_box(bbox: list[float], image: dict[str, Any]) -> tuple[int, int, int, int] | None:
    """Whole pixels covering the box, clipped to the image (load_coco allows 1 px overhang)."""
    x, y, w, h = bbox
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    x1, y1 = min(image["width"], math.ceil(x + w)), min(image["height"], math.ceil(y + h))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


BACKGROUND_TRIES = 20  # random places tried per object box before giving up on its background twin


def _background_boxes(coco: CocoSet, objects: list[tuple[int, int, tuple[int, int, int, int]]],
                      rng: np.random.Generator) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """One background box per object box where one fits: the same size, in the same image,
    overlapping no annotated box (crowd regions included)."""
    images = {im["id"]: im for im in coco.images}
    taken = {image_id: [_pixel_box(a["bbox"], images[image_id]) for a in anns]
             for image_id, anns in coco.anns_by_image.items()}
    out = []
    for image_id, index, (x0, y0, x1, y1) in objects:
        width, height = images[image_id]["width"], images[image_id]["height"]
        w, h = x1 - x0, y1 - y0
        if w >= width or h >= height:
            continue
        for _ in range(BACKGROUND_TRIES):
            bx, by = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            box = (bx, by, bx + w, by + h)
            if not any(b is not None and _overlap(box, b) for b in taken[image_id]):
                out.append((image_id, index, box))
                break
    return out


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _unique_folders(coco: CocoSet) -> dict[int, str]:
    folders: dict[int, str] = {}
    taken: set[str] = set()  # compared case-folded: macOS/Windows folders ignore case
    for cat_id, name in zip(coco.cat_ids, coco.cat_names):
        base = _folder_name(name, f"category_{cat_id}")
        candidate, n = base, 1
        while candidate.casefold() in taken:
            candidate = f"{base}_{cat_id}" if n == 1 else f"{base}_{cat_id}_{n}"
            n += 1
        taken.add(candidate.casefold())
        folders[cat_id] = candidate
    return folders


def _unique_name(base: str, taken: set[str]) -> str:
    folded = {t.casefold() for t in taken}
    name, n = base, 0
    while name.casefold() in folded:
        n += 1
        name = f"{base}_{n}"
    return name


def _folder_name(name: Any, fallback: str) -> str:
    # Leading dots would hide the folder from the ImageNet scan (hidden folders are ignored).
    clean = _UNSAFE.sub("_", str(name).strip()).strip("._")
    return clean[:64] or fallback


# --- writing ----------------------------------------------------------------------------------

def _write(folder: Path, coco: CocoSet, plan: _Plan, images_field: str, min_size: int,
           max_per_class: int | None) -> None:
    by_image: dict[int, list[tuple[str, str, tuple[int, int, int, int]]]] = {}  # image -> (folder, file, box)
    for cat_id, items in plan.crops.items():
        for image_id, index, box in items:
            by_image.setdefault(image_id, []).append((plan.folders[cat_id], f"{image_id:06d}_{index:06d}.png", box))
    background = _unique_name("background", set(plan.folders.values()))
    for image_id, index, box in plan.background:
        by_image.setdefault(image_id, []).append((background, f"{image_id:06d}_{index:06d}_bg.png", box))
    for sub_folder in {f for entries in by_image.values() for f, _, _ in entries}:
        (folder / sub_folder).mkdir()
    images = {im["id"]: im for im in coco.images}
    for image_id in sorted(by_image):  # each image decoded once, however many boxes it holds
        info = images[image_id]
        path = coco.images_dir / info["file_name"]
        try:
            image = load_rgb(path)
        except InputError as exc:  # its field is the path; the message says what is wrong
            raise InputError(images_field, f"{path} {exc.message}") from exc
        if image.size != (info["width"], info["height"]):
            raise InputError(images_field, f"{path} is {image.size[0]}x{image.size[1]} but "
                                           f"{coco.ann_file} says {info['width']}x{info['height']}")
        for sub_folder, name, box in by_image[image_id]:
            image.crop(box).save(folder / sub_folder / name)
    counts = {plan.folders[c]: len(items) for c, items in plan.crops.items() if items}
    if plan.background:
        counts[background] = len(plan.background)
    manifest = {
        "background": len(plan.background),
        "class_counts": counts,
        "category_folders": {str(c): plan.folders[c] for c, items in plan.crops.items() if items},
        "empty_categories": [plan.names[c] for c, items in plan.crops.items() if not items],
        "skipped_small": plan.skipped_small, "capped": plan.capped, "crowd_skipped": plan.crowd_skipped,
        "min_size": min_size, "max_per_class": max_per_class,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _read_manifest(final: Path, ann_file: Path) -> CropSet:
    data = json.loads((final / MANIFEST).read_text())
    return CropSet(root=final, ann_file=ann_file, min_size=data["min_size"],
                   max_per_class=data["max_per_class"], class_counts=dict(sorted(data["class_counts"].items())),
                   category_folders={int(k): v for k, v in data["category_folders"].items()},
                   skipped_small=data["skipped_small"], capped=data["capped"],
                   crowd_skipped=data["crowd_skipped"], empty_categories=data["empty_categories"],
                   background=data["background"])


# --- arguments --------------------------------------------------------------------------------

def _check_args(min_size: int, max_per_class: int | None, seed: int) -> None:
    if not _is_int(min_size) or min_size < 1:
        raise InputError("min_size", f"must be a positive integer (pixels), got {min_size!r}")
    if max_per_class is not None and (not _is_int(max_per_class) or max_per_class < 1):
        raise InputError("max_per_class", f"must be a positive integer or None, got {max_per_class!r}")
    if not _is_int(seed) or seed < 0:
        raise InputError("seed", f"must be a non-negative integer, got {seed!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
