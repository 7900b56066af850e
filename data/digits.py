"""Embedded classification data: sklearn's 1,797 real 8×8 digits as an ImageNet-format folder.

Nothing can be downloaded at run time, so the demo flows classify these digits; the folder
has the same layout a user's own data would have (one sub-folder per class).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from core.errors import InputError
from core.paths import data_cache_dir
from data._build import build_once

DIGIT_MAX = 16.0  # load_digits pixel values run 0..16


def make_digits_imagefolder(root: Path, image_size: int = 32) -> Path:
    """Write every digit as `root/<class>/digit_<index>.png` (RGB, image_size²); reuse if done."""
    if not isinstance(image_size, int) or image_size < 8:
        raise InputError("image_size", f"must be an integer of at least 8, got {image_size!r}")
    params = {"kind": "digits_imagefolder", "image_size": image_size}
    return build_once(Path(root), params, lambda tmp: _write_digits(tmp, image_size))


def default_digits_folder() -> Path:
    """The demo folder in the project's data cache, built on first use."""
    return make_digits_imagefolder(data_cache_dir() / "digits_imagenet_32", image_size=32)


def load_digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images float [N,8,8] in 0..16, targets int [N]) from sklearn's bundled copy."""
    from sklearn.datasets import load_digits  # heavy import, only needed when generating

    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def upscale_digit(digit: np.ndarray, size: int) -> np.ndarray:
    """Bilinear 8×8 → size×size, values 0..16 mapped to uint8 0..255."""
    scaled = Image.fromarray(digit.astype(np.float32) * (255.0 / DIGIT_MAX))
    resized = np.asarray(scaled.resize((size, size), Image.Resampling.BILINEAR))
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def _write_digits(folder: Path, image_size: int) -> None:
    images, targets = load_digit_arrays()
    for label in range(10):
        (folder / str(label)).mkdir()
    for index, (digit, label) in enumerate(zip(images, targets)):
        gray = upscale_digit(digit, image_size)
        Image.fromarray(gray).convert("RGB").save(
            folder / str(int(label)) / f"digit_{index:04d}.png")
