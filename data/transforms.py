"""Image preprocessing shared by evaluation and the exported-model Predictor.

Both must use the very same code, so `Preprocess` is numpy + PIL only (the Predictor runs
without torch). Eval/predict: resize the short side to `resize_short`, center-crop
`input_size`, scale to [0, 1], normalize per channel, return CHW float32 (PaddleX's
ResizeImage → CenterCrop → Normalize). Training adds light augmentation before the same
normalization.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import InputError

Triple = tuple[float, float, float]
IMAGENET_MEAN: Triple = (0.485, 0.456, 0.406)
IMAGENET_STD: Triple = (0.229, 0.224, 0.225)
CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Preprocess:
    input_size: int
    resize_short: int
    mean: Triple = IMAGENET_MEAN
    std: Triple = IMAGENET_STD
    # The channel order the network was trained on. "BGR" with mean 0 and std 1/255 is the
    # original SPOS release's BGR-in-[0, 255] input; mean/std are then given in BGR order.
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        _check_sizes(self.input_size, self.resize_short)
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", _triple("std", self.std, positive=True))
        if self.channel_order not in CHANNEL_ORDERS:
            raise InputError("channel_order", f"must be one of {', '.join(CHANNEL_ORDERS)}, got {self.channel_order!r}")

    def __call__(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """RGB image (PIL or HWC uint8 array) -> normalized CHW float32 array, in the model's
        channel order."""
        image = resize_short_side(as_rgb_image(image), self.resize_short)
        return normalize_to_chw(center_crop(image, self.input_size), self.mean, self.std, self.channel_order)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for model.yml."""
        return {"input_size": self.input_size, "resize_short": self.resize_short,
                "mean": list(self.mean), "std": list(self.std), "channel_order": self.channel_order}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        missing = {"input_size", "resize_short", "mean", "std"} - set(d)
        if missing:
            raise InputError("transforms", f"missing keys {sorted(missing)}; expected "
                                           "input_size, resize_short, mean and std")
        # Folders exported before channel_order existed were all RGB.
        return cls(input_size=d["input_size"], resize_short=d["resize_short"],
                   mean=tuple(d["mean"]), std=tuple(d["std"]), channel_order=d.get("channel_order", "RGB"))


@contextmanager
def bombs_as_errors() -> Iterator[None]:
    """PIL's decompression-bomb warning (over MAX_IMAGE_PIXELS) raised like its error (over twice
    that), before any pixel is decoded: a few hundred bytes can declare gigapixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def bomb_message(size: tuple[int, int] | None = None) -> str:
    declared = f"declares {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, " if size else "declares "
    return (f"{declared}more than PIL's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} pixels "
            "(PIL.Image.MAX_IMAGE_PIXELS); refused unread")


@contextmanager
def bombs_refused(path: Path | str) -> Iterator[None]:
    """`bombs_as_errors`, the bomb becoming one InputError naming the file."""
    try:
        with bombs_as_errors():
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(str(path), bomb_message()) from None


def load_rgb(path: Path | str) -> Image.Image:
    """Open an image file as RGB, raising InputError (naming the file) when it is unreadable,
    truncated or a decompression bomb."""
    try:
        with bombs_refused(path), Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as exc:
        raise InputError(str(path), "image file does not exist") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(str(path), f"cannot be read as an image ({_reason(exc)})") from exc


def check_image(path: Path | str, field: str) -> None:
    """Decode `path` completely (`Image.verify()` misses a truncated JPEG), or one InputError
    under `field` naming the file and why."""
    try:
        with bombs_refused(path), Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (64, 64))  # DCT scaling: still reads every byte, decodes 1/8
            image.load()
    except InputError as exc:
        raise InputError(field, str(exc)) from None
    except Exception as exc:  # PIL raises many types for corrupt files
        raise InputError(field, f"image {path} cannot be decoded ({_reason(exc)}); remove or replace it") from None


def _reason(exc: BaseException) -> str:
    """A short printable reason: the exception type and the start of its message."""
    text = " ".join(str(exc).split())[:80]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def as_rgb_image(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InputError("image", f"expected an HWC uint8 RGB array, got shape {array.shape} "
                                  f"dtype {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def resize_short_side(image: Image.Image, short: int) -> Image.Image:
    width, height = image.size
    scale = short / min(width, height)
    size = (max(short, round(width * scale)), max(short, round(height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.BILINEAR)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def normalize_to_chw(image: Image.Image, mean: Sequence[float], std: Sequence[float],
                     channel_order: str = "RGB") -> np.ndarray:
    array = np.asarray(image, dtype=np.float32) / 255.0
    if channel_order == "BGR":
        array = array[:, :, ::-1]
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def train_augment(input_size: int, resize_short: int, mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD, rotation_degrees: float = 10.0,
                  scale: tuple[float, float] = (0.75, 1.0)) -> Callable[[Image.Image | np.ndarray], Any]:
    """Light augmentation for small, orientation-sensitive images such as digits.

    No horizontal flip (a mirrored 2 or 7 is not a digit). Same resize as evaluation, a random
    crop covering 75–100 % of it (evaluation's center crop sits inside that range), a small
    rotation, then exactly the normalization `Preprocess` uses. Returns a torch tensor.
    """
    import torch  # lazily: this module must stay importable without torch (Predictor)
    from torchvision import transforms as T

    _check_sizes(input_size, resize_short)
    mean, std = _triple("mean", mean), _triple("std", std, positive=True)
    geometric = T.Compose([
        T.RandomResizedCrop(input_size, scale=scale, ratio=(0.9, 1.1),
                            interpolation=T.InterpolationMode.BILINEAR),
        T.RandomRotation(rotation_degrees, interpolation=T.InterpolationMode.BILINEAR),
    ])

    def augment(image: Image.Image | np.ndarray) -> "torch.Tensor":
        image = resize_short_side(as_rgb_image(image), resize_short)
        return torch.from_numpy(normalize_to_chw(geometric(image), mean, std))

    return augment


def _check_sizes(input_size: int, resize_short: int) -> None:
    if not isinstance(input_size, int) or input_size < 1:
        raise InputError("input_size", f"must be a positive integer, got {input_size!r}")
    if not isinstance(resize_short, int) or resize_short < input_size:
        raise InputError("resize_short", f"must be an integer >= input_size ({input_size}), "
                                         f"got {resize_short!r}")


def _triple(name: str, values: Sequence[float], positive: bool = False) -> Triple:
    try:
        triple = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        triple = ()
    if len(triple) != 3 or (positive and min(triple) <= 0):
        allowed = "three positive numbers" if positive else "three numbers"
        raise InputError(name, f"must be {allowed} (one per RGB channel), got {values!r}")
    return triple  # type: ignore[return-value]
