"""Export a trained SP-NAS detector as an inference-model folder, and check it against torch.

    model.onnx   one image [3, H, W] float RGB in [0, 1] -> boxes (N, 4) xyxy, labels (N,),
                 scores (N,); H and W are symbolic, resizing/normalising happen in the graph
    model.ts     TorchScript: List[Tensor[3, H, W]] -> List[{"boxes", "labels", "scores"}]
    model.yml    labels (index 0 = background), image size, preprocessing, file names

Exporter settings checked on torch 2.14.1 / torchvision 0.29.1 / onnxruntime 1.32:
- ONNX: the TorchScript-based exporter (`dynamo=False`) traces torchvision's FasterRCNN in
  eval mode at opset 11 and 17 alike (torchvision has ONNX-aware code paths for tracing:
  RoIAlign, NMS, the resize inside GeneralizedRCNNTransform) and the graph accepts any image
  size. The torch.export-based exporter (`dynamo=True`) fails: batched NMS's box offsets need
  a guard on a data-dependent size (GuardOnDataDependentSymNode in torchvision/ops/boxes.py).
- TorchScript: `torch.jit.script` of the whole detector. torchvision's parts script as they
  are; our backbone does not, because its forward is annotated `OrderedDict[str, Tensor]`
  (TorchScript knows only `Dict`) and ParallelBackbone.fuse zips dict items with a
  ModuleList. `_ScriptableBackbone` below re-states the same computation over the same
  submodules, so weights and parameter names are unchanged and nas_models stays as it is.
"""
from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import onnx
import torch
import yaml
from torch import Tensor, nn

from deploy.onnx_export import make_session
from spnas.errors import InputError

__all__ = [
    "MODEL_YML",
    "ONNX_FILE",
    "ONNX_OPSET",
    "OUTPUT_NAMES",
    "TORCHSCRIPT_FILE",
    "export_detector",
    "parity_check",
    "scriptable_detector",
]

ONNX_FILE, TORCHSCRIPT_FILE, MODEL_YML = "model.onnx", "model.ts", "model.yml"
ONNX_OPSET = 17  # 11 works too; 17 is what the classifier exports use
INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "labels", "scores")


# --- TorchScript-friendly backbone ----------------------------------------------------------


class _ScriptableSerial(nn.Module):
    """SerialBackbone's forward with a `Dict` return type, over the original stem/stages."""

    def __init__(self, serial: nn.Module) -> None:
        super().__init__()
        self.stem = serial.stem
        self.stages = serial.stages

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        x = self.stem(x)
        features: Dict[str, Tensor] = {}
        for s, stage in enumerate(self.stages):
            x = stage(x)
            features[str(s)] = x
        return features


class _ScriptableBackbone(nn.Module):
    """ParallelBackbone (body → branches summed in → FPN) with the same attribute names, so
    `backbone.body.stem...`, `backbone.branches...`, `backbone.fpn...` keep their keys."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.body = _ScriptableSerial(backbone.body)
        self.branches = backbone.branches
        self.fpn = backbone.fpn
        self.out_channels: int = backbone.out_channels  # read by FasterRCNN's heads

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        features = self.body(x)
        fused: Dict[str, Tensor] = {}
        # Iterating the ModuleList (not zip over dict items) is what TorchScript can unroll.
        for s, branches in enumerate(self.branches):
            feat = features[str(s)]
            out = feat
            for branch in branches:
                out = out + branch(feat)
            fused[str(s)] = out
        return self.fpn(fused)


class _DetectionsOnly(nn.Module):
    """Scripted torchvision detectors return (losses, detections); keep eager mode's API."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        return self.detector(images)[1]


def scriptable_detector(model: nn.Module) -> nn.Module:
    """A copy of `model` (eval mode) whose backbone TorchScript can compile, returning only
    detections. The caller's model is not modified."""
    clone = copy.deepcopy(model).eval()
    backbone = clone.backbone
    if all(hasattr(backbone, a) for a in ("body", "branches", "fpn")) and hasattr(
        backbone.body, "stages"
    ):
        clone.backbone = _ScriptableBackbone(backbone).eval()
    return _DetectionsOnly(clone).eval()


# --- export ---------------------------------------------------------------------------------


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """eval() for the duration, then every module's own training flag back (a model may mix
    modes on purpose, e.g. frozen BN)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _num_classes(model: nn.Module) -> int:
    try:
        return int(model.roi_heads.box_predictor.cls_score.out_features)
    except AttributeError as exc:
        raise InputError(
            "model", f"{type(model).__name__} is not a torchvision FasterRCNN (no box predictor)."
        ) from exc


def _check_export_args(model: nn.Module, image_size: int, labels: list[str]) -> list[str]:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise InputError("image_size", f"must be an integer >= 32, got {image_size!r}.")
    num_classes = _num_classes(model)
    if not isinstance(labels, (list, tuple)) or not all(isinstance(x, str) for x in labels):
        raise InputError("labels", "must be a list of strings, index 0 = background.")
    if len(labels) != num_classes:
        raise InputError(
            "labels",
            f"has {len(labels)} names but the detector has {num_classes} classes; give one name "
            "per class with the background at index 0 (e.g. CocoSet.label_names).",
        )
    return list(labels)


def _atomic(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _export_onnx(model: nn.Module, example: Tensor, path: Path, opset: int) -> None:
    tmp = _atomic(path)
    dynamic_axes = {
        INPUT_NAME: {1: "height", 2: "width"},
        **{name: {0: "detections"} for name in OUTPUT_NAMES},
    }
    try:
        with warnings.catch_warnings():
            # Tracer warnings about Python ints/shape arithmetic in torchvision's transform and
            # the exporter's deprecation notice are expected for this (deliberate) exporter.
            warnings.simplefilter("ignore")
            with torch.no_grad():
                torch.onnx.export(
                    model, ([example],), str(tmp), dynamo=False, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                    dynamic_axes=dynamic_axes, do_constant_folding=True,
                )
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _export_torchscript(model: nn.Module, path: Path) -> None:
    tmp = _atomic(path)
    try:
        with warnings.catch_warnings():
            # "torch.jit.script is deprecated" and torchvision's "(Losses, Detections) tuple"
            # notice: both expected, the wrapper unpacks the tuple.
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(scriptable_detector(model))
        scripted.save(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _transform_meta(model: nn.Module, image_size: int) -> dict[str, Any]:
    transform = getattr(model, "transform", None)
    mean = [float(v) for v in getattr(transform, "image_mean", [])]
    std = [float(v) for v in getattr(transform, "image_std", [])]
    return {
        "input_range": [0.0, 1.0],
        "inside_model": {
            # Recorded for reference only: the graph does these; a caller must not repeat them.
            "resize": f"scale so the shorter side is {image_size} px and the longer at most "
                      f"{image_size} px; boxes come back in the input image's pixels",
            "normalize": {"mean": mean, "std": std},
        },
    }


def export_detector(
    model: nn.Module,
    image_size: int,
    out_dir: Path,
    labels: list[str],
    opset: int = ONNX_OPSET,
) -> dict[str, str]:
    """Write model.onnx, model.ts and model.yml for a torchvision FasterRCNN into `out_dir`.

    `labels` names every class the detector outputs, index 0 = background (len = num_classes).
    Returns the paths written. Each file goes to a temporary name first and is renamed once
    complete, and the model's training flags are restored afterwards.
    """
    labels = _check_export_args(model, image_size, labels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A fixed pseudo-random image: tracing only records ops, but an all-zero image would take
    # no path through the detections that a real image takes.
    example = torch.rand(3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with _eval_mode(model):
        _export_onnx(model, example, out_dir / ONNX_FILE, opset)
        _export_torchscript(model, out_dir / TORCHSCRIPT_FILE)
    meta = {
        "task": "detection",
        "model": dict(getattr(model, "arch", {})),
        "labels": labels,
        "image_size": image_size,
        "input": {
            "name": INPUT_NAME, "layout": "CHW", "shape": [3, "height", "width"],
            "dtype": "float32", "channel_order": "RGB",
        },
        "preprocessing": _transform_meta(model, image_size),
        "output": {
            "names": list(OUTPUT_NAMES), "box_format": "xyxy", "box_units": "input pixels",
            "labels": "index into labels (0 = background, never output)",
            "score_threshold_in_model": float(getattr(model.roi_heads, "score_thresh", 0.0)),
            "max_detections": int(getattr(model.roi_heads, "detections_per_img", 0)),
        },
        "files": {"onnx": ONNX_FILE, "torchscript": TORCHSCRIPT_FILE},
        "export": {"onnx_exporter": "torchscript (dynamo=False)", "onnx_opset": opset,
                   "torch": str(torch.__version__)},
    }
    yml = out_dir / MODEL_YML
    tmp = _atomic(yml)
    try:
        tmp.write_text(yaml.safe_dump(meta, sort_keys=False))
        os.replace(tmp, yml)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "model_dir": str(out_dir), "onnx": str(out_dir / ONNX_FILE),
        "torchscript": str(out_dir / TORCHSCRIPT_FILE), "model_yml": str(yml),
    }


# --- parity ---------------------------------------------------------------------------------

Detections = dict[str, np.ndarray]


def _match(ref: Detections, got: Detections) -> tuple[int, float, float]:
    """Pair each reference detection with the closest unused one of the same label.

    Matching by position alone would turn two near-tied scores that swap order into a large
    "difference"; nearest-box matching measures the numerical drift instead. Returns
    (matched count, max |box diff| px, max |score diff|).
    """
    used = np.zeros(len(got["scores"]), dtype=bool)
    matched, box_diff, score_diff = 0, 0.0, 0.0
    for box, label, score in zip(ref["boxes"], ref["labels"], ref["scores"]):
        candidates = np.flatnonzero(~used & (got["labels"] == label))
        if not len(candidates):
            continue
        dist = np.abs(got["boxes"][candidates] - box).max(axis=1)
        j = candidates[int(np.argmin(dist))]
        used[j] = True
        matched += 1
        box_diff = max(box_diff, float(dist.min()))
        score_diff = max(score_diff, abs(float(got["scores"][j]) - float(score)))
    return matched, box_diff, score_diff


def _as_numpy(out: dict[str, Any]) -> Detections:
    return {k: np.asarray(out[k].detach().cpu().numpy() if isinstance(out[k], Tensor) else out[k])
            for k in OUTPUT_NAMES}


def _summarise(prefix: str, ref: list[Detections], got: list[Detections],
               seconds: list[float]) -> dict[str, Any]:
    box_diff = score_diff = 0.0
    matched = count_mismatch = 0
    for r, g in zip(ref, got):
        count_mismatch += int(len(r["scores"]) != len(g["scores"]))
        m, b, s = _match(r, g)
        matched += m
        box_diff, score_diff = max(box_diff, b), max(score_diff, s)
    return {
        f"{prefix}_detections": int(sum(len(g["scores"]) for g in got)),
        f"{prefix}_matched": matched,
        f"{prefix}_images_with_count_mismatch": count_mismatch,
        f"{prefix}_max_box_diff": box_diff,
        f"{prefix}_max_score_diff": score_diff,
        f"{prefix}_min_ms_per_image": 1000 * min(seconds),
    }


def parity_check(model: nn.Module, out_dir: Path, images: list[Tensor],
                 threads: int = 2) -> dict[str, Any]:
    """Run eager torch, ONNX Runtime (model.onnx) and TorchScript (model.ts) on the same images.

    Per runtime: detections found, how many pair up with torch's (same label, nearest box),
    images whose counts differ, max |box diff| (px) and |score diff| over matched pairs, and
    the fastest single-image time (ms; one run per image, so a rough figure).
    """
    out_dir = Path(out_dir)
    for name in (ONNX_FILE, TORCHSCRIPT_FILE):
        if not (out_dir / name).is_file():
            raise InputError("out_dir", f"{out_dir} has no {name}; run export_detector first.")
    if not images or not all(isinstance(im, Tensor) and im.ndim == 3 and im.shape[0] == 3
                             for im in images):
        raise InputError("images", "give a non-empty list of float RGB tensors [3, H, W] in [0, 1].")
    session = make_session(out_dir / ONNX_FILE, threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notice
        scripted = torch.jit.load(str(out_dir / TORCHSCRIPT_FILE))
    runs: dict[str, tuple[list[Detections], list[float]]] = {
        "torch": ([], []), "onnx": ([], []), "torchscript": ([], [])}

    def timed(name: str, fn) -> None:
        t0 = time.perf_counter()
        out = fn()
        runs[name][1].append(time.perf_counter() - t0)
        runs[name][0].append(_as_numpy(out))

    with _eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        # The scripted RCNN warns on every call that it returns (losses, detections).
        warnings.filterwarnings("ignore", message="RCNN always returns")
        for image in images:
            image = image.detach().float().cpu()
            timed("torch", lambda: model([image])[0])
            timed("onnx", lambda: dict(zip(OUTPUT_NAMES, session.run(
                None, {INPUT_NAME: image.numpy()}))))
            timed("torchscript", lambda: scripted([image])[0])

    ref, ref_s = runs["torch"]
    report: dict[str, Any] = {
        "images": len(images),
        "torch_detections": int(sum(len(r["scores"]) for r in ref)),
        "torch_min_ms_per_image": 1000 * min(ref_s),
    }
    for name in ("onnx", "torchscript"):
        report.update(_summarise(name, ref, *runs[name]))
    return report
