"""Predictor over an exported detector folder (model.yml + model.onnx), run by ONNX Runtime.

The graph does its own resizing and normalisation (torchvision's GeneralizedRCNNTransform is
inside it), so preprocessing here is only: decode → RGB → float32 CHW in [0, 1]. Images of any
size go in whole, and boxes come back in that image's pixels. One image per ONNX run: the
exported graph takes a single [3, H, W] image, as torchvision's ONNX export of detectors does.
Timing uses the classifier predictor's PaddleX-style `TimeInfo` (pre / infer / post).
Bad input (folder, model.yml, model.onnx, counts, images) is one InputError naming the
argument, raised before anything is run.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.errors import InputError
from deploy.detector_export import INPUT_NAME, MODEL_YML, ONNX_FILE
from deploy.onnx_export import make_session
from deploy.predictor import ImageLike, TimeInfo, check_count, load_image, load_yaml_mapping

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
    if not path.is_file():
        raise InputError("model_dir", f"{model_dir} holds no {MODEL_YML}; give a folder written "
                                      "by export_detector.")
    meta = load_yaml_mapping(path, "model_dir")
    if meta.get("task") != "detection":
        raise InputError("model_dir", f"{path} is not a detector export (task: "
                                      f"{meta.get('task')!r}); use the matching predictor.")
    labels = meta.get("labels")
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) for x in labels)):
        raise InputError("model_dir", f"{path} needs 'labels': background plus at least one class.")
    files = meta.get("files")
    if not isinstance(files, dict) or not isinstance(files.get("onnx"), str):
        raise InputError("model_dir", f"{path} lacks 'files: onnx'; re-export the model.")
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
        inputs = [i.name for i in self.session.get_inputs()]
        self.input_name = INPUT_NAME if INPUT_NAME in inputs else inputs[0]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.time_info = TimeInfo()

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
            outs = dict(zip(self.output_names,
                            self.session.run(None, {self.input_name: chw})))
            t2 = time.perf_counter()
            results.append(self._postprocess(outs))
            t3 = time.perf_counter()
            if timed:
                self.time_info.add(t1 - t0, t2 - t1, t3 - t2, 1)
        return results

    def _postprocess(self, outs: dict[str, np.ndarray]) -> list[Detection]:
        boxes, labels, scores = outs["boxes"], outs["labels"], outs["scores"]
        keep = np.flatnonzero(scores >= self.score_threshold)
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        return [
            {
                "category_id": int(labels[i]),
                "category": self.labels[int(labels[i])] if int(labels[i]) < len(self.labels)
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
