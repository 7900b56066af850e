"""Predictor over an exported detector folder (model.yml + model.onnx), run by ONNX Runtime.

The graph does its own resizing and normalisation (torchvision's GeneralizedRCNNTransform is
inside it), so preprocessing here is only: decode → RGB → float32 CHW in [0, 1]. Images of any
size go in whole, and boxes come back in that image's pixels. One image per ONNX run: the
exported graph takes a single [3, H, W] image, as torchvision's ONNX export of detectors does.
Timing uses the classifier predictor's PaddleX-style `TimeInfo` (pre / infer / post).
Bad input (folder, model.yml, model.onnx, counts, images) is one InputError naming the
argument, raised before anything is run: model.yml is read and range-checked as the classifier
predictor does (labels, files, image_size), and the graph must take one float [3, H, W] image
and give boxes, labels and scores. An ONNX Runtime error while running, or outputs of the wrong
shape, are one InputError on `model_dir` quoting ORT's first line.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.errors import InputError
from core.text import excerpt, printable
from deploy.detector_export import MODEL_YML, ONNX_FILE, OUTPUT_NAMES
from deploy.onnx_export import make_session
from deploy.predictor import (
    QUIET_RUN,
    ImageLike,
    TimeInfo,
    bad_key,
    check_count,
    check_labels,
    check_onnx_file,
    check_size,
    fixed_dim,
    graph_error,
    image_input,
    load_image,
    load_yaml_mapping,
    ort_errors_as_input,
)

__all__ = ["DetectorPredictor", "read_detector_yml"]

Detection = dict[str, Any]

# Distinct, readable on dark canvases; cycled by category id.
_PALETTE = ((255, 64, 64), (64, 200, 255), (255, 200, 0), (120, 255, 120), (255, 120, 255),
            (255, 150, 60), (150, 150, 255), (0, 255, 200), (255, 255, 255), (200, 120, 80))


def read_detector_yml(model_dir: Path) -> dict[str, Any]:
    """model.yml of a detector folder, checked for what the predictor needs, or InputError."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError("model_dir", f"{model_dir} is not a folder; give the export folder.")
    path = model_dir / MODEL_YML
    if not path.exists() and not path.is_symlink():
        raise InputError("model_dir", f"{model_dir} holds no {MODEL_YML}; give a folder written "
                                      "by export_detector.")
    meta = load_yaml_mapping(path, "model_dir")
    if meta.get("task") != "detection":
        raise InputError("model_dir", f"{path} is not a detector export (task: "
                                      f"{excerpt(meta.get('task'))}); use the matching predictor.")
    if "labels" not in meta:
        raise InputError("model_dir", f"{path} needs 'labels': background plus at least one class.")
    meta["labels"] = check_labels(path, meta["labels"], minimum=2)
    check_onnx_file(path, meta.get("files"))
    if "image_size" in meta:
        check_size(path, "image_size", meta["image_size"], minimum=32)
    section = meta.get("input")
    if section is not None:
        if not isinstance(section, dict):
            raise bad_key(path, "input", "a mapping (name, layout, shape, dtype, channel_order)",
                           section)
        if section.get("layout", "CHW") != "CHW":
            raise bad_key(path, "input.layout", "CHW (one image)", section["layout"])
        if section.get("channel_order", "RGB") != "RGB":
            raise bad_key(path, "input.channel_order", "RGB (the predictor feeds RGB)",
                           section["channel_order"])
    return meta


class DetectorPredictor:
    """Boxes for images from an exported detector: `predict(...)`, `draw(...)`, `time_info`."""

    def __init__(self, model_dir: str | Path, threads: int = 2, score_threshold: float = 0.5) -> None:
        if (isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float))
                or not 0.0 <= score_threshold <= 1.0):
            raise InputError("score_threshold", f"must be a number in [0, 1], got {score_threshold!r}.")
        check_count("threads", threads, 1)
        self.model_dir = Path(model_dir)
        self.meta = read_detector_yml(self.model_dir)
        self.labels: list[str] = list(self.meta["labels"])
        self.score_threshold = float(score_threshold)
        onnx_path = self.model_dir / self.meta["files"].get("onnx", ONNX_FILE)
        if not onnx_path.is_file():
            raise InputError("model_dir", f"{onnx_path} is missing; re-export the model.")
        self.session = make_session(onnx_path, threads, field="model_dir")
        self.input_name, self.fixed_hw = self._check_graph(onnx_path)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.time_info = TimeInfo()

    def _check_graph(self, onnx_path: Path) -> tuple[str, tuple[int | None, int | None]]:
        """One float [3, H, W] input and boxes/labels/scores outputs; returns the input's name
        and its fixed (height, width), None where symbolic."""
        name, dims = image_input(self.session, onnx_path, 3, "a detector export takes one image",
                                 "a detector export takes one image [3, height, width]", "RGB")
        names = [o.name for o in self.session.get_outputs()]
        missing = [n for n in OUTPUT_NAMES if n not in names]
        if missing:
            raise graph_error(onnx_path, f"has no output {', '.join(missing)} (outputs: {excerpt(names)}); a "
                                         f"detector export outputs {', '.join(OUTPUT_NAMES)}")
        return name, (fixed_dim(dims[1]), fixed_dim(dims[2]))

    # --- predict --------------------------------------------------------------------------

    _load = staticmethod(load_image)  # the classifier's checks and messages (field `images`)

    def predict(self, images: ImageLike | list[ImageLike], warmup: int = 0,
                repeats: int = 1) -> list[list[Detection]]:
        """Detections per image, best first: {category_id, category, score, bbox [x1,y1,x2,y2]}.

        `category_id` indexes `labels` (1..C; 0 is background and never returned). Only
        scores >= score_threshold are kept. `warmup` untimed passes run first; `repeats` timed
        passes accumulate into `self.time_info`. A single image gives a list of one.
        """
        check_count("warmup", warmup, 0)
        check_count("repeats", repeats, 1)
        items = images if isinstance(images, list) else [images]
        if not items:
            raise InputError("images", "give at least one image.")
        loaded = [self._load(im) for im in items]  # decoding files is I/O, not timed
        height, width = self.fixed_hw
        for image, item in zip(loaded, items):
            if (height is not None and image.height != height) or (width is not None
                                                                    and image.width != width):
                shown = printable(str(item)) if isinstance(item, (str, Path)) else "an image"
                raise InputError("images", f"{shown} is {image.width}x{image.height} but the "
                                           f"model takes only {width or 'any'}x{height or 'any'} "
                                           "(width x height) images.")
        self.time_info = TimeInfo(batch_size=1)
        results: list[list[Detection]] = []
        for i in range(warmup + repeats):
            results = self._run(loaded, timed=i >= warmup)
        return results

    def _run(self, loaded: list[Image.Image], timed: bool) -> list[list[Detection]]:
        results: list[list[Detection]] = []
        for image in loaded:
            t0 = time.perf_counter()
            chw = np.ascontiguousarray(
                (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1))
            t1 = time.perf_counter()
            with ort_errors_as_input("model_dir", f"an image of shape {list(chw.shape)}"):
                outs = dict(zip(self.output_names,
                                self.session.run(None, {self.input_name: chw}, QUIET_RUN)))
            t2 = time.perf_counter()
            results.append(self._postprocess(outs))
            t3 = time.perf_counter()
            if timed:
                self.time_info.add(t1 - t0, t2 - t1, t3 - t2, 1)
        return results

    def _postprocess(self, outs: dict[str, np.ndarray]) -> list[Detection]:
        boxes, labels, scores = (np.asarray(outs[n]) for n in ("boxes", "labels", "scores"))
        n = len(scores) if scores.ndim == 1 else -1
        if n < 0 or boxes.shape != (n, 4) or labels.shape != (n,):
            raise InputError("model_dir", f"{self.model_dir} gave boxes {list(boxes.shape)}, "
                                          f"labels {list(labels.shape)}, scores {list(scores.shape)}; "
                                          "expected [N, 4], [N], [N]. Re-export the model.")
        keep = np.flatnonzero(scores >= self.score_threshold)
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        return [
            {
                "category_id": int(labels[i]),
                "category": self.labels[int(labels[i])] if 0 <= int(labels[i]) < len(self.labels)
                else str(int(labels[i])),
                "score": float(scores[i]),
                "bbox": [float(v) for v in boxes[i]],
            }
            for i in keep
        ]

    # --- draw -----------------------------------------------------------------------------

    def draw(self, image: ImageLike, detections: list[Detection], path: str | Path) -> Path:
        """Save `image` with each detection's box and "category score" label as a PNG."""
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise InputError("path", f"{path} must end in .png.")
        canvas = self._load(image).copy()  # never draw on the caller's image
        pen = ImageDraw.Draw(canvas)
        font = ImageFont.load_default()
        # Thin lines on small canvases (96 px demo), thicker on photos.
        width = max(1, round(min(canvas.size) / 200))
        for det in detections:
            x1, y1, x2, y2 = (float(v) for v in det["bbox"])
            color = _PALETTE[int(det.get("category_id", 0)) % len(_PALETTE)]
            pen.rectangle([x1, y1, x2, y2], outline=color, width=width)
            text = f"{det.get('category', det.get('category_id'))} {float(det['score']):.2f}"
            left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
            tw, th = right - left, bottom - top
            # Label above the box when there is room, else just inside its top edge.
            ty = y1 - th - 2 if y1 - th - 2 >= 0 else y1 + 1
            pen.rectangle([x1, ty, x1 + tw + 2, ty + th + 2], fill=color)
            pen.text((x1 + 1, ty - top + 1), text, fill=(0, 0, 0), font=font)
        path.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(path, format="PNG")
        return path
