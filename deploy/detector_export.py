"""Export a trained SP-NAS detector as an inference-model folder, and check it against torch.

    model.onnx   one image [3, H, W] float RGB in [0, 1] -> boxes (N, 4) xyxy, labels (N,),
                 scores (N,); H and W are symbolic, resizing/normalising happen in the graph
    model.pt2    torch.export program of the whole eval-mode detector:
                 [Tensor[3, S, S]] -> [{"boxes", "labels", "scores"}], S = image_size (fixed);
                 read it with `deploy.onnx_export.load_program` (imports torchvision first)
    model.yml    labels (index 0 = background), image size, preprocessing, file names

Checked on torch 2.14.1 / torchvision 0.29.1 / onnxruntime 1.32:
- torch.export of torchvision's FasterRCNN (it replaces `model.ts`: TorchScript is
  deprecated). As is, it fails three ways; each is handled here without touching
  torchvision or nas_models:
  1. `_batched_nms_coordinate_trick` branches on `boxes.numel() == 0` for a data-dependent
     count (GuardOnDataDependentSymNode: "Could not guard on data-dependent expression
     Eq(4*u1, 0)", torchvision/ops/boxes.py:103), in the RPN and in the box head alike.
     `_exportable_nms` swaps `torchvision.ops.boxes.batched_nms` for the same per-class
     offset trick without the branch while exporting (the saved graph holds only
     torchvision::nms, so loading needs no patch).
  2. torchvision's fake (shape-only) nms declares "keeps >= 2 boxes" (its
     `create_unbacked_symint()` defaults to min=2) and the program then asserts that at run
     time: an image with 0 or 1 detections raised "Runtime assertion failed for expression
     u9 >= 2". A correct fake (0 <= kept <= N) is registered for the export only.
  3. With strict=False, `len(rois)` in MultiScaleRoIAlign needs a Python int of a
     data-dependent size ("Could not extract specialized integer from data-dependent
     expression Min(100, u2)", poolers.py:185); strict=True (TorchDynamo) keeps it symbolic.
     The box decoder then branches on the proposal count being > 0 (_utils.py:176), so
     `_ProgramDetector` (GeneralizedRCNN's eval forward over the same submodules) states
     `torch._check(proposals > 0)`: the RPN's score threshold is 0 and NMS always keeps the
     top box, so a real image always has proposals (and if not, the program raises).
  With these the program matches eager torch exactly (max |diff| 0.0 with 0, 1 and 20
  detections per image). Symbolic height/width do not work: that export took ~3 min on 2
  cores and `torch.export.save` then failed ("Failed serializing node ceil ... op <built-in
  function ceil> is not in _SYM_OPS": GeneralizedRCNNTransform pads with math.ceil of a
  symbolic float). So the program takes S x S images, the size the model was trained at.
- ONNX: the TorchScript-based exporter (`dynamo=False`) traces torchvision's FasterRCNN in
  eval mode at opset 11 and 17 alike (torchvision has ONNX-aware code paths for tracing:
  RoIAlign, NMS, the resize inside GeneralizedRCNNTransform) and the graph accepts any image
  size. The torch.export-based exporter could start from the program above, but only at its
  one fixed size, so the ONNX file stays on the (deprecated) tracer; its deprecation and
  tracer notices are filtered by category and text in `_export_onnx`.
"""
from __future__ import annotations

import copy
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torchvision
import yaml
from torch import Tensor, nn
from torch.export import ExportedProgram
from torchvision.ops import boxes as box_ops

from core.errors import InputError
from data.coco import CocoSet
from deploy.onnx_export import load_program, make_session, save_program, write_model_yml
from deploy.quantize import (CALIBRATION_IMAGES, DETECTOR_OPS, QuantizationError, Quantized, quantization_block,
                             quantize_onnx)

__all__ = [
    "MODEL_YML",
    "ONNX_FILE",
    "ONNX_OPSET",
    "OUTPUT_NAMES",
    "PROGRAM_FILE",
    "detector_int8_figures",
    "export_detector",
    "export_detector_program",
    "export_int8_detector",
    "parity_check",
]

ONNX_FILE, PROGRAM_FILE, MODEL_YML = "model.onnx", "model.pt2", "model.yml"
ONNX_OPSET = 17  # 11 works too; opsets of the tracer, not of the dynamo exporter
INPUT_NAME = "image"
OUTPUT_NAMES = ("boxes", "labels", "scores")


# --- torch.export program -------------------------------------------------------------------


class _ProgramDetector(nn.Module):
    """GeneralizedRCNN's eval-mode forward over the same transform/backbone/rpn/roi_heads,
    with the one hint torch.export needs: every image has at least one proposal."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        det = self.detector
        original_sizes = [(im.shape[-2], im.shape[-1]) for im in images]
        image_list, _ = det.transform(images)
        features = det.backbone(image_list.tensors)
        proposals, _ = det.rpn(image_list, features)
        for boxes in proposals:
            torch._check(boxes.shape[0] > 0)
        detections, _ = det.roi_heads(features, proposals, image_list.image_sizes)
        return det.transform.postprocess(detections, image_list.image_sizes, original_sizes)


def _batched_nms_without_branch(boxes: Tensor, scores: Tensor, idxs: Tensor,
                                iou_threshold: float) -> Tensor:
    """Per-class NMS by shifting each class's boxes beyond all others (torchvision's trick),
    valid for zero boxes without an `if`: the shift uses max(all coordinates, 0)."""
    top = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()
    shifted = boxes + (idxs.to(boxes) * (top + 1))[:, None]
    return torchvision.ops.nms(shifted, scores, iou_threshold)


def _nms_fake(dets: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Shape of torchvision::nms's output while tracing: any count from 0 to len(dets)."""
    kept = torch.library.get_ctx().new_dynamic_size(min=0)
    torch._check(kept <= dets.shape[0])
    return dets.new_empty(kept, dtype=torch.long)


_EXPORT_LOCK = threading.Lock()  # the shims below are process-wide while in place


@contextmanager
def _exportable_nms() -> Iterator[None]:
    """Fixes 1 and 2 of the module docstring, undone on exit. The swapped batched_nms keeps
    the same boxes, so a detector running in another thread meanwhile is unaffected."""
    with _EXPORT_LOCK:
        original = box_ops.batched_nms
        lib = torch.library.Library("torchvision", "FRAGMENT")
        try:
            torch.library.register_fake("torchvision::nms", _nms_fake, lib=lib)
            box_ops.batched_nms = _batched_nms_without_branch
            yield
        finally:
            box_ops.batched_nms = original
            lib._destroy()  # drops our fake kernel; torchvision's is current again


def _example_image(image_size: int) -> Tensor:
    # A fixed pseudo-random image: tracing only records ops, but an all-zero image would take
    # no path through the detections that a real image takes.
    return torch.rand(3, image_size, image_size, generator=torch.Generator().manual_seed(0))


def export_detector_program(model: nn.Module, image_size: int) -> ExportedProgram:
    """torch.export program of `model` (a torchvision FasterRCNN) in eval mode for a list of
    one [3, image_size, image_size] image; the caller's model is not modified."""
    clone = copy.deepcopy(model).eval()
    example = _example_image(image_size)
    with torch.no_grad():
        # One eager pass fills the RoI pooler's cached level scales, so the traced forward
        # reads constants instead of computing and assigning them.
        clone([example])
    with _exportable_nms(), warnings.catch_warnings():
        # Dynamo notes that the anchor generator re-assigns its cached anchors in forward:
        # a cache of constants, the same in the graph.
        warnings.filterwarnings("ignore", "While compiling, we found certain side effects",
                                UserWarning)
        return torch.export.export(_ProgramDetector(clone), ([example],), strict=True)


def _program_input_shape(program: ExportedProgram) -> tuple[int, ...]:
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            return tuple(int(d) for d in node.meta["val"].shape)
    raise ValueError("the program has no tensor input")


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
            # Expected with this deliberate (deprecated) exporter, nothing to act on: its own
            # two deprecation notices, torchvision scripting its NMS helpers while tracing
            # ("`torch.jit.script` is deprecated", 8 per export), tracer notes on Python
            # numbers and shape arithmetic in torchvision's transform/poolers (parity_check
            # measures the result) and two notes from those code paths. Others still show.
            for message, category in (
                ("You are using the legacy TorchScript-based ONNX export", DeprecationWarning),
                ("The feature will be removed", DeprecationWarning),
                ("`torch.jit.script` is deprecated", FutureWarning),
                ("To copy construct from a tensor", UserWarning),
                ("Exporting aten::index operator of advanced indexing", UserWarning),
            ):
                warnings.filterwarnings("ignore", message, category)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
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
    """Write model.onnx, model.pt2 and model.yml for a torchvision FasterRCNN into `out_dir`.

    `labels` names every class the detector outputs, index 0 = background (len = num_classes).
    Returns the paths written (keys model_dir, onnx, program, model_yml). Each file goes to a
    temporary name first and is renamed once complete, and the model's training flags are
    restored afterwards.
    """
    labels = _check_export_args(model, image_size, labels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _eval_mode(model):
        _export_onnx(model, _example_image(image_size), out_dir / ONNX_FILE, opset)
        save_program(export_detector_program(model, image_size), out_dir / PROGRAM_FILE)
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
        "files": {"onnx": ONNX_FILE, "program": PROGRAM_FILE},
        "export": {"onnx_exporter": "torchscript (dynamo=False)", "onnx_opset": opset,
                   "program_input": f"list of one float32 RGB image [3, {image_size}, "
                                    f"{image_size}] in [0, 1]",
                   "torch": str(torch.__version__)},
    }
    yml = write_model_yml(out_dir / MODEL_YML, meta)
    return {
        "model_dir": str(out_dir), "onnx": str(out_dir / ONNX_FILE),
        "program": str(out_dir / PROGRAM_FILE), "model_yml": str(yml),
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
    """Run eager torch, ONNX Runtime (model.onnx) and the torch.export program (model.pt2,
    loaded back from disk) on the same images.

    Per runtime (prefix `onnx_`, `pt2_`): detections found, how many pair up with torch's
    (same label, nearest box), images whose counts differ, max |box diff| (px) and |score
    diff| over matched pairs, and the fastest single-image time (ms; one run per image, so a
    rough figure). The program takes only its export size (module docstring), so it runs on
    the images of that size; `pt2_images` says how many (its other keys are absent if none).
    """
    out_dir = Path(out_dir)
    for name in (ONNX_FILE, PROGRAM_FILE):
        if not (out_dir / name).is_file():
            raise InputError("out_dir", f"{out_dir} has no {name}; run export_detector first.")
    if not images or not all(isinstance(im, Tensor) and im.ndim == 3 and im.shape[0] == 3
                             for im in images):
        raise InputError("images", "give a non-empty list of float RGB tensors [3, H, W] in [0, 1].")
    session = make_session(out_dir / ONNX_FILE, threads)
    exported = load_program(out_dir / PROGRAM_FILE)
    program, program_shape = exported.module(), _program_input_shape(exported)
    runs: dict[str, tuple[list[int], list[Detections], list[float]]] = {
        "torch": ([], [], []), "onnx": ([], [], []), "pt2": ([], [], [])}

    def timed(name: str, index: int, fn) -> None:
        t0 = time.perf_counter()
        out = fn()
        runs[name][2].append(time.perf_counter() - t0)
        runs[name][0].append(index)
        runs[name][1].append(_as_numpy(out))

    with _eval_mode(model), torch.no_grad():
        for i, image in enumerate(images):
            image = image.detach().float().cpu()
            timed("torch", i, lambda: model([image])[0])
            timed("onnx", i, lambda: dict(zip(OUTPUT_NAMES, session.run(
                None, {INPUT_NAME: image.numpy()}))))
            if tuple(image.shape) == program_shape:
                timed("pt2", i, lambda: program([image])[0])

    _, ref, ref_s = runs["torch"]
    report: dict[str, Any] = {
        "images": len(images),
        "torch_detections": int(sum(len(r["scores"]) for r in ref)),
        "torch_min_ms_per_image": 1000 * min(ref_s),
        "pt2_images": len(runs["pt2"][0]),
    }
    for name in ("onnx", "pt2"):
        indices, got, seconds = runs[name]
        if indices:
            report.update(_summarise(name, [ref[i] for i in indices], got, seconds))
    return report


# --- int8 -----------------------------------------------------------------------------------

INT8_DIR = "inference_model_int8"


def export_int8_detector(float_dir: Path, calibration: list[Tensor], out_dir: Path | None = None,
                         max_images: int = CALIBRATION_IMAGES) -> Quantized:
    """Static int8 twin of the detector folder `float_dir` (default <parent>/inference_model_int8):
    Conv/Gemm/MatMul quantized (DETECTOR_OPS; resizing, box decoding and NMS stay float),
    calibrated on `calibration` (float RGB [3, H, W] training images in [0, 1], as the graph takes
    them), model.yml as the float one's plus a `quantization:` block, so DetectorPredictor loads it.
    Raises QuantizationError, after removing any stale int8 folder, when ORT cannot quantize it."""
    float_dir = Path(float_dir)
    out_dir = Path(out_dir) if out_dir is not None else float_dir.parent / INT8_DIR
    meta = yaml.safe_load((float_dir / MODEL_YML).read_text())
    try:
        q = quantize_onnx(float_dir / ONNX_FILE, out_dir / ONNX_FILE, [im.detach().float().cpu().numpy()
                                                                       for im in calibration],
                          max_images=max_images, op_types=DETECTOR_OPS)
    except QuantizationError:
        shutil.rmtree(out_dir, ignore_errors=True)  # never leave an int8 folder of another model
        raise
    meta["files"] = {"onnx": ONNX_FILE}  # the int8 model exists only as ONNX
    meta["quantization"] = quantization_block(q)
    write_model_yml(out_dir / MODEL_YML, meta)
    return q


def detector_int8_figures(float_onnx: Path, int8_onnx: Path, coco: CocoSet, max_images: int | None, threads: int,
                          interleaved_ms: Callable[[Mapping[str, Callable[[], object]]], Mapping[str, float]]
                          ) -> dict[str, float]:
    """COCO mAP (pycocotools, as training scores) of the float and the int8 ONNX model on the same
    held-out images (`coco`'s first `max_images`), int8_map_delta = int8 − float in points of
    mAP@[.5:.95], and their single-image latency on the first image timed by `interleaved_ms`."""
    from data.coco import CocoDetection
    from data.coco_eval import coco_map, to_coco_detections

    dataset = CocoDetection(coco, max_images=max_images)
    images = [dataset[i][0].numpy() for i in range(len(dataset))]
    ids = list(dataset.image_ids)
    sessions = {"float": make_session(Path(float_onnx), threads), "int8": make_session(Path(int8_onnx), threads)}
    scores = {}
    for name, session in sessions.items():
        outputs = [dict(zip(OUTPUT_NAMES, session.run(None, {INPUT_NAME: im}))) for im in images]
        scores[name] = coco_map(coco, to_coco_detections(ids, outputs, coco), image_ids=ids)
    ms = interleaved_ms({k: (lambda s=s: s.run(None, {INPUT_NAME: images[0]})) for k, s in sessions.items()})
    return {"float_ort_map": scores["float"]["mAP"], "float_ort_map50": scores["float"]["mAP50"],
            "int8_map": scores["int8"]["mAP"], "int8_map50": scores["int8"]["mAP50"],
            "int8_map_delta": 100 * (scores["int8"]["mAP"] - scores["float"]["mAP"]), "int8_eval_images": len(ids),
            "float_ms_per_image_interleaved": ms["float"], "int8_ms_per_image": ms["int8"],
            "int8_latency_ratio": ms["int8"] / ms["float"] if ms["float"] else float("nan")}
