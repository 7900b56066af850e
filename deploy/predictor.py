"""Predictor over an exported classifier folder (model.yml + model.onnx), run by ONNX Runtime.

Preprocessing is `data.transforms.Preprocess` rebuilt from model.yml — the very code the
evaluation stage used — so predictions match evaluation. Timing follows PaddleX's
"Inference Time Info" block: warm-up first, then pre/infer/post per image.

Bad input (a missing or incomplete folder, a model.yml or model.onnx that cannot be read, a
non-positive count, an image path that is not an image) is one InputError naming the argument,
raised before anything is run. model.yml is read like a params file (a regular file of at most
64 KiB, through `params.loader.load_yaml_text`), every value the predictor uses is range-checked
(the message names the key), and model.yml is checked against the ONNX graph's input and output
shapes. A model with a fixed batch dimension takes only that `batch_size` (a short last batch is
padded). An ONNX Runtime error while running is still one InputError: on `batch_size` when the
batch does not fit a fixed batch dimension, else on `model_dir`, quoting ORT's first line.
"""
from __future__ import annotations

import math
import os
import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import yaml
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from PIL import Image

from core.errors import InputError
from core.text import clean_line, excerpt, printable
from data.transforms import CHANNEL_ORDERS, Preprocess, as_rgb_image, load_rgb
from deploy.onnx_export import make_session
from params.loader import load_yaml_text

ImageLike = str | Path | Image.Image | np.ndarray

MAX_MODEL_YML_BYTES = 64 * 1024  # an export's model.yml is ~1 KiB (ImageNet-1k's labels: ~25 KiB)
MAX_SIDE = 4096                  # px, input_size and resize_short
MAX_LABELS = 5000                # class names (ImageNet-1k has 1000)
MAX_LABEL_CHARS = 200
MAX_MEAN = 1000.0                # |mean|; images are scaled to [0, 1] first (BGR-in-[0, 255]: mean 0)
STD_RANGE = (1e-6, 1000.0)       # BGR-in-[0, 255] uses std 1/255
MAX_ORT_MESSAGE_CHARS = 150
MAX_BATCH_BYTES = 2 * 1024 ** 3  # one float32 input batch
MAX_RESIZED_PIXELS = 64_000_000  # an image after its short side is resized (a 1 x 60,000 strip ...)
QUIET_RUN = ort.RunOptions()  # a failing run raises; ORT's own log line (fd 2, ANSI colours) is off
QUIET_RUN.log_severity_level = 4
ORT_ERRORS = tuple(v for v in vars(ort_state).values()
                   if isinstance(v, type) and issubclass(v, Exception))


@dataclass
class TimeInfo:
    images: int = 0
    batches: int = 0
    batch_size: int = 1
    preprocess_s: float = 0.0
    inference_s: float = 0.0
    postprocess_s: float = 0.0
    samples: list[float] = field(default_factory=list)  # per-batch total seconds

    def add(self, pre_s: float, infer_s: float, post_s: float, images: int) -> None:
        """Account one timed batch."""
        self.preprocess_s += pre_s
        self.inference_s += infer_s
        self.postprocess_s += post_s
        self.images += images
        self.batches += 1
        self.samples.append(pre_s + infer_s + post_s)

    @property
    def total_s(self) -> float:
        return self.preprocess_s + self.inference_s + self.postprocess_s

    def as_dict(self) -> dict[str, float]:
        n, b = max(1, self.images), max(1, self.batches)
        return {
            "total_time_ms": 1000 * self.total_s, "img_num": self.images, "batch_size": self.batch_size,
            "average_latency_ms": 1000 * self.total_s / n, "qps": self.images / self.total_s if self.total_s else 0.0,
            "preprocess_time_per_im_ms": 1000 * self.preprocess_s / n,
            "inference_time_per_batch_ms": 1000 * self.inference_s / b,
            "postprocess_time_per_im_ms": 1000 * self.postprocess_s / n,
        }

    def report(self) -> str:
        d = self.as_dict()
        return "\n".join([
            "------------------ Inference Time Info ----------------------",
            f"total_time(ms): {d['total_time_ms']:.2f}, img_num: {d['img_num']}, batch_size: {d['batch_size']}",
            f"average latency time(ms): {d['average_latency_ms']:.2f}, QPS: {d['qps']:.6f}",
            f"preprocess_time_per_im(ms): {d['preprocess_time_per_im_ms']:.2f}, "
            f"inference_time_per_batch(ms): {d['inference_time_per_batch_ms']:.2f}, "
            f"postprocess_time_per_im(ms): {d['postprocess_time_per_im_ms']:.2f}",
        ])


def check_count(field: str, value: Any, minimum: int) -> int:
    """`value` as an int >= `minimum`, or InputError naming `field`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(field, f"must be an integer >= {minimum}; got {value!r}.")
    return value


def _read_small_file(path: Path, field: str, limit: int = MAX_MODEL_YML_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, read without blocking on a FIFO or
    reading a device or a huge file; InputError naming `field` otherwise."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(field, f"{path} does not exist; give a folder written by the export "
                                "stage.") from None
    except (OSError, ValueError) as exc:
        raise InputError(field, f"{path} cannot be read ({getattr(exc, 'strerror', None) or exc}); "
                                "re-export the model.") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a device, pipe or socket"
        raise InputError(field, f"{path} is not a regular file ({kind}); re-export the model.")
    if st.st_size > limit:
        raise InputError(field, f"{path} is {st.st_size:,} bytes, over the {limit:,}-byte limit "
                                f"for a {path.name}; re-export the model.")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise InputError(field, f"{path} cannot be read ({exc.strerror}); re-export the "
                                "model.") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the stat above
            raise InputError(field, f"{path} is not a regular file; re-export the model.")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise InputError(field, f"{path} is over the {limit:,}-byte limit for a {path.name}; "
                                "re-export the model.")
    return data


def load_yaml_mapping(path: Path, field: str) -> dict[str, Any]:
    """A YAML file holding a mapping, or one-line InputError naming `field`: a regular file of at
    most MAX_MODEL_YML_BYTES, loaded by the project's safe loader (no alias bombs, deep nesting,
    huge integers or duplicate keys); yaml's own multi-line messages become one line."""
    path = Path(path)
    try:
        text = _read_small_file(path, field).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(field, f"{path} is not a text file; re-export the model.") from exc
    try:
        meta = load_yaml_text(text, field=field, where=str(path))
    except InputError as exc:  # on a dotted key for a duplicate key or a huge integer
        key = "" if exc.field == field else f"'{exc.field}': "
        raise InputError(field, f"{key}{exc.message}; re-export the model.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = clean_line(str(getattr(exc, "problem", None) or getattr(exc, "reason", None)
                                 or type(exc).__name__), 100)
        raise InputError(field, f"{path} is not valid YAML ({problem}{where}); re-export the "
                                "model.") from None
    if not isinstance(meta, dict):
        raise InputError(field, f"{path} must hold a mapping; re-export the model.")
    return meta


def bad_key(path: Path, key: str, allowed: str, value: Any, shown: str | None = None) -> InputError:
    """One InputError (field `model_dir`) naming model.yml's `key`, what it allows and the value
    (`shown` instead of an excerpt of it when given)."""
    return InputError("model_dir", f"{path}: '{key}' must be {allowed}; got "
                                   f"{shown or excerpt(value)}. Re-export the model.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # math, not numpy: np.isfinite refuses ints beyond int64 (YAML allows up to 30 digits)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_size(path: Path, key: str, value: Any, minimum: int = 1, maximum: int = MAX_SIDE) -> int:
    """model.yml's `key` as an int in [minimum, maximum] (pixels), or InputError naming it."""
    if not _is_int(value) or not minimum <= value <= maximum:
        raise bad_key(path, key, f"an integer from {minimum} to {maximum} (pixels)", value)
    return value


def check_labels(path: Path, labels: Any, minimum: int = 1) -> list[str]:
    """model.yml's 'labels': `minimum`..MAX_LABELS unique, short, printable names."""
    allowed = f"a list of {minimum} to {MAX_LABELS:,} unique class names"
    if not isinstance(labels, list):
        raise bad_key(path, "labels", allowed, labels)
    if not minimum <= len(labels) <= MAX_LABELS:
        raise bad_key(path, "labels", allowed, labels,
                      f"{len(labels):,} name{'' if len(labels) == 1 else 's'}")
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):
        if (not isinstance(label, str) or not 1 <= len(label) <= MAX_LABEL_CHARS
                or not label.isprintable() or not label.strip()):
            raise bad_key(path, f"labels[{i}]", f"a printable name of 1 to {MAX_LABEL_CHARS} "
                                                 "characters", label)
        if label in seen:
            raise InputError("model_dir", f"{path}: 'labels' names {excerpt(label)} twice (items "
                                          f"{seen[label]} and {i}); class names must be unique. "
                                          "Re-export the model.")
        seen[label] = i
    return list(labels)


def check_onnx_file(path: Path, files: Any) -> str:
    """model.yml's 'files: onnx': a plain .onnx file name inside the folder."""
    name = files.get("onnx") if isinstance(files, dict) else None
    if not isinstance(files, dict) or "onnx" not in files:
        raise InputError("model_dir", f"{path} lacks 'files: onnx'; re-export the model.")
    if (not isinstance(name, str) or not name.endswith(".onnx") or len(name) > 255
            or not name.isprintable() or "/" in name or "\\" in name or name.startswith(".")):
        raise bad_key(path, "files.onnx", "a file name ending in .onnx inside the folder", name)
    return name


def _triple(path: Path, key: str, value: Any, low: float, high: float, allowed: str) -> list[float]:
    if (not isinstance(value, list) or len(value) != 3
            or not all(_is_number(v) and low <= v <= high for v in value)):
        raise bad_key(path, key, allowed, value)
    return [float(v) for v in value]


def check_transforms(path: Path, transforms: Any) -> dict[str, Any]:
    """model.yml's 'transforms' with every value in range (the message names the key)."""
    if not isinstance(transforms, dict):
        raise bad_key(path, "transforms", "a mapping (input_size, resize_short, mean, std, "
                                           "channel_order)", transforms)
    for key in ("input_size", "resize_short", "mean", "std"):
        if key not in transforms:
            raise InputError("model_dir", f"{path} lacks 'transforms.{key}'; re-export the model.")
    size = check_size(path, "transforms.input_size", transforms["input_size"])
    check_size(path, "transforms.resize_short", transforms["resize_short"], minimum=size)
    _triple(path, "transforms.mean", transforms["mean"], -MAX_MEAN, MAX_MEAN,
            f"three numbers (one per channel) from {-MAX_MEAN:g} to {MAX_MEAN:g}")
    _triple(path, "transforms.std", transforms["std"], *STD_RANGE,
            f"three numbers (one per channel) from {STD_RANGE[0]:g} to {STD_RANGE[1]:g} (> 0)")
    order = transforms.get("channel_order", "RGB")
    if order not in CHANNEL_ORDERS:
        raise bad_key(path, "transforms.channel_order", " or ".join(CHANNEL_ORDERS), order)
    return transforms


def check_input_section(path: Path, section: Any, transforms: dict[str, Any]) -> None:
    """model.yml's optional 'input' block, which must agree with 'transforms'."""
    if section is None:
        return
    if not isinstance(section, dict):
        raise bad_key(path, "input", "a mapping (name, layout, channel_order, size)", section)
    if "layout" in section and section["layout"] != "NCHW":
        raise bad_key(path, "input.layout", "NCHW", section["layout"])
    if "size" in section:
        size = check_size(path, "input.size", section["size"])
        if size != transforms["input_size"]:
            raise InputError("model_dir", f"{path}: 'input.size' is {size} but "
                                          f"'transforms.input_size' is {transforms['input_size']}; "
                                          "re-export the model.")
    if "channel_order" in section:
        order = section["channel_order"]
        if order not in CHANNEL_ORDERS:
            raise bad_key(path, "input.channel_order", " or ".join(CHANNEL_ORDERS), order)
        if order != transforms.get("channel_order", "RGB"):
            raise InputError("model_dir", f"{path}: 'input.channel_order' is {order} but "
                                          "'transforms.channel_order' is "
                                          f"{transforms.get('channel_order', 'RGB')}; re-export "
                                          "the model.")


def read_model_yml(model_dir: Path) -> dict[str, Any]:
    """model.yml of a classifier folder, checked for everything the predictor reads."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError("model_dir", f"{model_dir} is not a folder; give the inference_model folder "
                                      "written by the export stage.")
    path = model_dir / "model.yml"
    if not path.exists() and not path.is_symlink():
        raise InputError("model_dir", f"{model_dir} holds no model.yml; give a folder written by the "
                                      "export stage.")
    meta = load_yaml_mapping(path, "model_dir")
    if meta.get("task") == "detection":
        raise InputError("model_dir", f"{model_dir} holds a detector; this predictor takes a "
                                      "classifier export (use DetectorPredictor).")
    for key in ("labels", "transforms", "files"):
        if key not in meta:
            raise InputError("model_dir", f"{path} lacks '{key}'; re-export the model.")
    meta["labels"] = check_labels(path, meta["labels"])
    check_onnx_file(path, meta["files"])
    check_transforms(path, meta["transforms"])
    check_input_section(path, meta.get("input"), meta["transforms"])
    return meta


def ort_reason(exc: BaseException) -> str:
    """ORT's message, first line only, without its "[ONNXRuntimeError] : 2 :" prefix, printable
    and at most MAX_ORT_MESSAGE_CHARS long."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    first = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*", "", first)
    # "Non-zero status code returned while running Reshape node. Name:'' Status Message:
    # /onnxruntime_src/.../reshape_helper.h:47 ... The input tensor cannot be reshaped ..."
    first = re.sub(r"Non-zero status code returned while running (\w+) node\. Name:'[^']*' "
                   r"Status Message:\s*", r"\1 node: ", first)
    first = re.sub(r"\S+\.(?:h|cc|cpp):\d+\s+(?:[\w:~<>]+\([^)]*\)\s*(?:const\s*)?)?", "", first)
    first = re.sub(r"(?<=: )[^:]*? was false\.\s*", "", first).strip()  # the failed C++ check
    return clean_line(first or type(exc).__name__, MAX_ORT_MESSAGE_CHARS)


@contextmanager
def ort_errors_as_input(field: str, what: str) -> Iterator[None]:
    """An ONNX Runtime error raised inside becomes one InputError on `field`."""
    try:
        yield
    except ORT_ERRORS as exc:
        raise InputError(field, f"ONNX Runtime refused {what}: {ort_reason(exc)}") from None


def onnx_dims(shape: Any) -> list[Any]:
    """An ORT NodeArg shape as a list (None for a shape ORT does not know)."""
    return list(shape) if isinstance(shape, (list, tuple)) else []


def fixed_dim(dim: Any) -> int | None:
    """A dimension's size when it is fixed (a positive int), else None (symbolic or unknown)."""
    return dim if _is_int(dim) and dim > 0 else None


def graph_error(onnx_path: Path, what: str) -> InputError:
    """An exported graph that does not fit its predictor: the user re-exports."""
    return InputError("model_dir", f"{onnx_path} {what}; re-export the model.")


def image_input(session: ort.InferenceSession, onnx_path: Path, rank: int, one: str, shape: str,
                orders: str) -> tuple[str, list[Any]]:
    """The graph's one float image input, channels 3 where fixed: its name and dims. `one` and
    `shape` say what the export takes (e.g. "a detector export takes one image", "...[3, height,
    width]"), `orders` which channel orders the predictor feeds; anything else is one error."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise graph_error(onnx_path, f"takes {len(inputs)} inputs; {one}")
    arg = inputs[0]
    if arg.type != "tensor(float)":
        raise graph_error(onnx_path, f"takes {excerpt(arg.type)} input; the predictor feeds tensor(float)")
    dims = onnx_dims(arg.shape)
    if len(dims) != rank:
        raise graph_error(onnx_path, f"takes a {len(dims)}-D input {excerpt(dims)}; {shape}")
    channels = fixed_dim(dims[rank - 3])
    if channels is not None and channels != 3:
        raise graph_error(onnx_path, f"takes {channels}-channel images; the predictor feeds 3 ({orders})")
    return arg.name, dims


def load_image(image: ImageLike) -> Image.Image:
    """A path, PIL image or HWC uint8 array as an RGB PIL image; InputError (field `images`,
    naming the path) for anything unreadable."""
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise InputError("images", f"{image} does not exist or is not a file; give image "
                                       "files (PNG, JPEG, BMP, ...).")
        try:
            return load_rgb(image)
        except InputError as exc:
            raise InputError("images", f"{image} cannot be read as an image; give image files "
                                       "(PNG, JPEG, BMP, ...).") from exc
    if isinstance(image, (Image.Image, np.ndarray)):
        try:
            return as_rgb_image(image)
        except InputError as exc:
            raise InputError("images", str(exc)) from exc
    raise InputError("images", f"expected a path, PIL image or HWC uint8 array, got "
                               f"{type(image).__name__}.")


class ClassifierPredictor:
    def __init__(self, model_dir: str | Path, threads: int = 2) -> None:
        check_count("threads", threads, 1)
        self.model_dir = Path(model_dir)
        self.meta = read_model_yml(self.model_dir)
        self.labels: list[str] = list(self.meta["labels"])
        try:
            self.preprocess = Preprocess.from_dict(self.meta["transforms"])
        except (InputError, TypeError, ValueError) as exc:
            raise InputError("model_dir", f"{self.model_dir / 'model.yml'} has unusable "
                                          f"'transforms' ({exc}); re-export the model.") from exc
        onnx_path = self.model_dir / self.meta["files"]["onnx"]
        if not onnx_path.is_file():
            raise InputError("model_dir", f"{onnx_path} is missing; re-export the model.")
        self.session = make_session(onnx_path, threads, field="model_dir")
        self.input_name, self.fixed_batch = self._check_graph(onnx_path)
        self.time_info = TimeInfo()

    def _check_graph(self, onnx_path: Path) -> tuple[str, int | None]:
        """The graph against model.yml: one float NCHW input whose fixed dims match (3 channels,
        transforms.input_size), a [batch, classes] output with one class per label. Returns the
        input's name and its fixed batch size (None when dynamic)."""
        yml = self.model_dir / "model.yml"

        def refuse(what: str) -> InputError:
            return graph_error(onnx_path, what)

        input_name, dims = image_input(self.session, onnx_path, 4, "a classifier export takes one image batch",
                                       "a classifier takes NCHW images [batch, 3, height, width]", "RGB or BGR")
        outputs = self.session.get_outputs()
        if not outputs:
            raise refuse("has no outputs")
        out = outputs[0]
        size = self.preprocess.input_size
        for axis, name in ((2, "height"), (3, "width")):
            got = fixed_dim(dims[axis])
            if got is not None and got != size:
                raise InputError("model_dir", f"{onnx_path} takes images of {name} {got} but "
                                              f"{yml} has 'transforms.input_size' {size}; "
                                              "re-export the model.")
        if out.type not in ("tensor(float)", "tensor(double)", "tensor(float16)"):
            raise refuse(f"outputs {excerpt(out.type)}; a classifier outputs float scores")
        out_dims = onnx_dims(out.shape)
        if out_dims and len(out_dims) != 2:
            raise refuse(f"outputs a {len(out_dims)}-D tensor {excerpt(out_dims)}; a classifier "
                         "outputs [batch, classes]")
        classes = fixed_dim(out_dims[-1]) if out_dims else None
        if classes is not None and classes != len(self.labels):
            raise InputError("model_dir", f"{onnx_path} outputs {classes} classes but {yml} "
                                          f"names {len(self.labels)} labels; re-export the model.")
        return input_name, fixed_dim(dims[0])

    _load = staticmethod(load_image)

    def predict(self, images: ImageLike | list[ImageLike], topk: int = 1, batch_size: int = 1,
                warmup: int = 0, repeats: int = 1) -> list[list[dict[str, Any]]]:
        """Top-k {category_id, category, score} per image (k above the number of classes gives
        them all). `warmup` untimed passes first; timing accumulates over `repeats` passes into
        `self.time_info`. Every argument and image is checked before anything runs. A model with
        a fixed batch dimension takes only that batch size; a short last batch is padded with
        copies of its last image (their results are dropped)."""
        check_count("topk", topk, 1)
        check_count("batch_size", batch_size, 1)
        check_count("warmup", warmup, 0)
        check_count("repeats", repeats, 1)
        if self.fixed_batch is not None and batch_size != self.fixed_batch:
            raise InputError("batch_size", f"the model at {self.model_dir} was exported with a "
                                           f"fixed batch of {self.fixed_batch}; give --batch-size "
                                           f"{self.fixed_batch} (got {batch_size}).")
        single = not isinstance(images, list)
        items = [images] if single else images
        if not items:
            raise InputError("images", "give at least one image.")
        size = self.preprocess.input_size
        rows = self.fixed_batch or min(batch_size, len(items))
        batch_bytes = rows * 3 * size * size * 4
        if batch_bytes > MAX_BATCH_BYTES:
            raise InputError("batch_size", f"a batch of {rows} images of 3x{size}x{size} float32 "
                                           f"is {batch_bytes / 2 ** 30:.1f} GiB, over the "
                                           f"{MAX_BATCH_BYTES / 2 ** 30:g} GiB limit; give a "
                                           "smaller --batch-size.")
        loaded = [self._load(im) for im in items]  # decoding is I/O, not timed
        for image, item in zip(loaded, items):
            self._check_resized(image, item)
        self.time_info = TimeInfo(batch_size=batch_size)
        results: list[list[dict[str, Any]]] = []
        for i in range(warmup + repeats):
            timed = i >= warmup
            results = self._run(loaded, topk, batch_size, timed)
        return results[:1] if single else results

    def _check_resized(self, image: Image.Image, item: ImageLike) -> None:
        """Refuse an image whose short-side resize would be huge (a 1 x 60,000 strip)."""
        width, height = image.size
        short = self.preprocess.resize_short
        pixels = short * short * max(width, height) / max(1, min(width, height))
        if pixels > MAX_RESIZED_PIXELS:
            shown = printable(str(item)) if isinstance(item, (str, Path)) else "an image"
            raise InputError("images", f"{shown} is {width}x{height}; resizing its short side to "
                                       f"{short} px gives {pixels:,.0f} pixels, over the "
                                       f"{MAX_RESIZED_PIXELS:,} limit; crop it first.")

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """One ORT run; its errors and an output that does not fit become one InputError."""
        field = ("batch_size" if self.fixed_batch is not None and len(batch) != self.fixed_batch
                 else "model_dir")
        with ort_errors_as_input(field, f"a batch of {len(batch)} image(s) of shape "
                                        f"{list(batch.shape[1:])}"):
            out = self.session.run(None, {self.input_name: batch}, QUIET_RUN)[0]
        out = np.asarray(out)
        if out.ndim != 2 or out.shape != (len(batch), len(self.labels)):
            raise InputError("model_dir", f"{self.model_dir} gave output of shape {list(out.shape)} "
                                          f"for {len(batch)} image(s); model.yml names "
                                          f"{len(self.labels)} labels, so [{len(batch)}, "
                                          f"{len(self.labels)}] was expected. Re-export the model.")
        return out

    def _run(self, loaded: list[Image.Image], topk: int, batch_size: int,
             timed: bool) -> list[list[dict[str, Any]]]:
        out: list[list[dict[str, Any]]] = []
        k = min(topk, len(self.labels))
        for start in range(0, len(loaded), batch_size):
            chunk = loaded[start:start + batch_size]
            t0 = time.perf_counter()
            arrays = [self.preprocess(im) for im in chunk]
            if self.fixed_batch is not None and len(arrays) < self.fixed_batch:
                arrays += [arrays[-1]] * (self.fixed_batch - len(arrays))
            batch = np.stack(arrays).astype(np.float32)
            t1 = time.perf_counter()
            probs = self._infer(batch)[:len(chunk)]
            t2 = time.perf_counter()
            for row in probs:
                order = np.argsort(-row)[:k]
                out.append([{"category_id": int(c), "category": self.labels[c], "score": float(row[c])} for c in order])
            t3 = time.perf_counter()
            if timed:
                self.time_info.add(t1 - t0, t2 - t1, t3 - t2, len(chunk))
        return out
