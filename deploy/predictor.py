"""Predictor over an exported classifier folder (model.yml + model.onnx), run by ONNX Runtime.

Preprocessing is `data.transforms.Preprocess` rebuilt from model.yml — the very code the
evaluation stage used — so predictions match evaluation. Timing follows PaddleX's
"Inference Time Info" block: warm-up first, then pre/infer/post per image.

Bad input (a missing or incomplete folder, a model.yml or model.onnx that cannot be read, a
non-positive count, an image path that is not an image) is one InputError naming the argument,
raised before anything is run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from core.errors import InputError
from data.transforms import Preprocess, as_rgb_image, load_rgb
from deploy.onnx_export import make_session

ImageLike = str | Path | Image.Image | np.ndarray


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


def load_yaml_mapping(path: Path, field: str) -> dict[str, Any]:
    """A YAML file holding a mapping, or one-line InputError naming `field` (yaml's own
    messages span several lines with a caret drawing)."""
    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(field, f"{path} is not a text file; re-export the model.") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InputError(field, f"{path} is not valid YAML ({problem}{where}); re-export the "
                                "model.") from exc
    if not isinstance(meta, dict):
        raise InputError(field, f"{path} must hold a mapping; re-export the model.")
    return meta


def read_model_yml(model_dir: Path) -> dict[str, Any]:
    """model.yml of a classifier folder, checked for everything the predictor reads."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError("model_dir", f"{model_dir} is not a folder; give the inference_model folder "
                                      "written by the export stage.")
    path = model_dir / "model.yml"
    if not path.is_file():
        raise InputError("model_dir", f"{model_dir} holds no model.yml; give a folder written by the "
                                      "export stage.")
    meta = load_yaml_mapping(path, "model_dir")
    if meta.get("task") == "detection":
        raise InputError("model_dir", f"{model_dir} holds a detector; this predictor takes a "
                                      "classifier export (use DetectorPredictor).")
    for key in ("labels", "transforms", "files"):
        if key not in meta:
            raise InputError("model_dir", f"{path} lacks '{key}'; re-export the model.")
    labels = meta["labels"]
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
        raise InputError("model_dir", f"{path}: 'labels' must be a non-empty list of names.")
    files = meta["files"]
    if not isinstance(files, dict) or not isinstance(files.get("onnx"), str):
        raise InputError("model_dir", f"{path} lacks 'files: onnx'; re-export the model.")
    if not isinstance(meta["transforms"], dict):
        raise InputError("model_dir", f"{path}: 'transforms' must be a mapping; re-export the model.")
    return meta


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
        self.input_name = self.session.get_inputs()[0].name
        classes = self.session.get_outputs()[0].shape[-1]
        if isinstance(classes, int) and classes != len(self.labels):
            raise InputError("model_dir", f"{onnx_path} outputs {classes} classes but model.yml "
                                          f"names {len(self.labels)}; re-export the model.")
        self.time_info = TimeInfo()

    _load = staticmethod(load_image)

    def predict(self, images: ImageLike | list[ImageLike], topk: int = 1, batch_size: int = 1,
                warmup: int = 0, repeats: int = 1) -> list[list[dict[str, Any]]]:
        """Top-k {category_id, category, score} per image (k above the number of classes gives
        them all). `warmup` untimed passes first; timing accumulates over `repeats` passes into
        `self.time_info`. Every argument and image is checked before anything runs."""
        check_count("topk", topk, 1)
        check_count("batch_size", batch_size, 1)
        check_count("warmup", warmup, 0)
        check_count("repeats", repeats, 1)
        single = not isinstance(images, list)
        items = [images] if single else images
        if not items:
            raise InputError("images", "give at least one image.")
        loaded = [self._load(im) for im in items]  # decoding is I/O, not timed
        self.time_info = TimeInfo(batch_size=batch_size)
        results: list[list[dict[str, Any]]] = []
        for i in range(warmup + repeats):
            timed = i >= warmup
            results = self._run(loaded, topk, batch_size, timed)
        return results[:1] if single else results

    def _run(self, loaded: list[Image.Image], topk: int, batch_size: int,
             timed: bool) -> list[list[dict[str, Any]]]:
        out: list[list[dict[str, Any]]] = []
        k = min(topk, len(self.labels))
        for start in range(0, len(loaded), batch_size):
            chunk = loaded[start:start + batch_size]
            t0 = time.perf_counter()
            batch = np.stack([self.preprocess(im) for im in chunk]).astype(np.float32)
            t1 = time.perf_counter()
            probs = self.session.run(None, {self.input_name: batch})[0]
            t2 = time.perf_counter()
            for row in probs:
                order = np.argsort(-row)[:k]
                out.append([{"category_id": int(c), "category": self.labels[c], "score": float(row[c])} for c in order])
            t3 = time.perf_counter()
            if timed:
                self.time_info.add(t1 - t0, t2 - t1, t3 - t2, len(chunk))
        return out
