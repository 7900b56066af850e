"""Embedded detection data: canvases of real sklearn digits in COCO format.

Each canvas holds 1–3 digits, each upscaled to 20–36 px and placed without overlap on a dark,
mildly noisy background; boxes are tight around the ink. The digit images themselves are split
disjointly (20 % held out), so validation canvases show digits the detector never saw. The
layout is the one a user's COCO folder has, so the same reader (`data.coco.load_coco`) serves
both:

    root/train/*.png, root/val/*.png, root/annotations/instances_{train,val}.json
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from core.errors import InputError
from core.paths import data_cache_dir
from data._build import CocoFolder, build_once
from data.digits import load_digit_arrays, upscale_digit

HELD_OUT_DIGIT_SHARE = 0.2
MIN_DIGIT_PX, MAX_DIGIT_PX = 20, 36
MAX_DIGITS_PER_CANVAS = 3
INK_THRESHOLD = 64          # upscaled value (0..255) from which a pixel counts as ink for the box
BACKGROUND_MEAN, BACKGROUND_STD, BACKGROUND_MAX = 14.0, 6.0, 40.0
PLACEMENT_TRIES = 50


DigitsCoco = CocoFolder  # the generated set's layout (data/_build.py)


def make_digits_coco(root: Path, num_train: int = 600, num_val: int = 150,
                     canvas_size: int = 96, seed: int = 0) -> DigitsCoco:
    """Build (once) and return the embedded COCO-format digit detection set under `root`."""
    _check_args(num_train, num_val, canvas_size, seed)
    params = {"kind": "digits_coco", "num_train": num_train, "num_val": num_val,
              "canvas_size": canvas_size, "seed": seed}
    root = build_once(Path(root), params,
                      lambda tmp: _write_dataset(tmp, num_train, num_val, canvas_size, seed))
    return CocoFolder.at(root)


def default_digits_coco() -> DigitsCoco:
    """The demo set (600 train / 150 val canvases of 96 px) in the project's data cache."""
    return make_digits_coco(data_cache_dir() / "digits_coco_96")


def _check_args(num_train: int, num_val: int, canvas_size: int, seed: int) -> None:
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if not isinstance(value, int) or value < 1:
            raise InputError(name, f"must be a positive integer, got {value!r}")
    if not isinstance(canvas_size, int) or canvas_size < MAX_DIGIT_PX:
        raise InputError("canvas_size", f"must be an integer of at least {MAX_DIGIT_PX} "
                                        f"(the largest digit), got {canvas_size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise InputError("seed", f"must be a non-negative integer, got {seed!r}")


def _write_dataset(folder: Path, num_train: int, num_val: int, canvas_size: int, seed: int) -> None:
    images, targets = load_digit_arrays()
    order = np.random.default_rng(seed).permutation(len(images))
    n_held_out = round(len(images) * HELD_OUT_DIGIT_SHARE)
    pools = {"val": np.sort(order[:n_held_out]), "train": np.sort(order[n_held_out:])}
    layout = CocoFolder.at(folder)
    layout.train_json.parent.mkdir(parents=True)
    for split, count, out_dir, out_json, stream in (
            ("train", num_train, layout.train_images, layout.train_json, 1),
            ("val", num_val, layout.val_images, layout.val_json, 2)):
        # A generator per split: the val canvases do not change when num_train does.
        rng = np.random.default_rng([seed, stream])
        out_dir.mkdir()
        coco = _write_split(out_dir, count, canvas_size, pools[split], images, targets, rng)
        out_json.write_text(json.dumps(coco, sort_keys=True, separators=(",", ":")))


def _write_split(out_dir: Path, count: int, canvas_size: int, pool: np.ndarray,
                 images: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> dict:
    coco_images, annotations = [], []
    for image_id in range(1, count + 1):
        canvas, placed = _make_canvas(canvas_size, pool, images, rng)
        file_name = f"canvas_{image_id:06d}.png"
        Image.fromarray(canvas).save(out_dir / file_name)
        coco_images.append({"id": image_id, "file_name": file_name,
                            "width": canvas_size, "height": canvas_size})
        for digit_index, bbox in placed:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": int(targets[digit_index]) + 1, "bbox": bbox,
                "area": float(bbox[2] * bbox[3]), "iscrowd": 0,
                "digit_index": int(digit_index),  # provenance: index into load_digits()
            })
    categories = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]
    return {"info": {"description": "spnas embedded digit canvases (sklearn load_digits)"},
            "licenses": [], "images": coco_images, "annotations": annotations,
            "categories": categories}


def _make_canvas(size: int, pool: np.ndarray, images: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    noise = rng.normal(BACKGROUND_MEAN, BACKGROUND_STD, (size, size, 3))
    canvas = np.clip(noise, 0, BACKGROUND_MAX).astype(np.uint8)
    squares: list[tuple[int, int, int]] = []
    placed: list[tuple[int, list[float]]] = []
    for _ in range(int(rng.integers(1, MAX_DIGITS_PER_CANVAS + 1))):
        digit_index = int(rng.choice(pool))
        side = int(rng.integers(MIN_DIGIT_PX, MAX_DIGIT_PX + 1))
        spot = _free_spot(size, side, squares, rng)
        if spot is None:
            continue  # canvas too crowded for this size: fewer digits rather than overlap
        ink = upscale_digit(images[digit_index], side)
        x, y = spot
        _paste_ink(canvas, ink, x, y, rng)
        squares.append((x, y, side))
        placed.append((digit_index, _ink_box(ink, x, y)))
    return canvas, placed


def _free_spot(size: int, side: int, squares: list[tuple[int, int, int]],
               rng: np.random.Generator) -> tuple[int, int] | None:
    for _ in range(PLACEMENT_TRIES):
        x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        if all(x + side <= ox or ox + oside <= x or y + side <= oy or oy + oside <= y
               for ox, oy, oside in squares):
            return x, y
    return None


def _paste_ink(canvas: np.ndarray, ink: np.ndarray, x: int, y: int, rng: np.random.Generator) -> None:
    """Max-blend the digit as bright, slightly tinted ink so the background noise stays below it."""
    tint = rng.uniform(0.8, 1.0, size=3) * rng.uniform(0.85, 1.0)
    coloured = np.rint(ink[..., None].astype(np.float64) * tint).astype(np.uint8)
    region = canvas[y:y + ink.shape[0], x:x + ink.shape[1]]
    np.maximum(region, coloured, out=region)


def _ink_box(ink: np.ndarray, x: int, y: int) -> list[float]:
    rows = np.flatnonzero((ink >= INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((ink >= INK_THRESHOLD).any(axis=0))
    if rows.size == 0:  # cannot happen for load_digits (every digit has full-strength ink)
        rows = cols = np.arange(ink.shape[0])
    top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
    return [float(x + left), float(y + top), float(right - left + 1), float(bottom - top + 1)]
