"""Export a trained classifier as an inference-model folder (PaddleX `export_inference` analogue):

    model.onnx   softmax inside the graph, dynamic batch (run by ONNX Runtime)
    model.pt2    torch.export program of the same module (load with
                 `deploy.onnx_export.load_program`, call `.module()(images)`); dynamic batch
    model.yml    labels, input size, preprocessing and file names — all a Predictor needs

Both model files come from one torch.export capture: the program is saved as is and
converted to ONNX by the dynamo exporter (see deploy/onnx_export.py for the checks behind
that choice). TorchScript (`model.ts` until torch 2.14 deprecated it) is no longer written.

`export_int8` writes a static int8 twin (deploy/quantize.py) as its own folder,
inference_model_int8/ (model.onnx + model.yml with a `quantization:` block); `int8_figures`
scores both ONNX models on the same held-out images and times them interleaved.
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import yaml
from torch import nn

from data.transforms import Preprocess
from deploy.onnx_export import (
    ONNX_OPSET,
    WithSoftmax,
    export_program,
    load_program,
    make_session,
    max_abs_diff_vs_torch,
    program_to_onnx,
    save_program,
    write_model_yml,
)
from deploy.quantize import CALIBRATION_IMAGES, QuantizationError, Quantized, quantization_block, quantize_onnx

ONNX_FILE, PROGRAM_FILE, MODEL_YML = "model.onnx", "model.pt2", "model.yml"


def export_classifier(model: nn.Module, desc: dict[str, Any], labels: list[str], preprocess: Preprocess,
                      out_dir: Path) -> dict[str, str]:
    """Write model.onnx, model.pt2 and model.yml into `out_dir`; returns their paths
    (keys model_dir, onnx, program, model_yml)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped = WithSoftmax(model).eval()
    example = torch.zeros(1, 3, preprocess.input_size, preprocess.input_size)
    program = export_program(wrapped, example)
    onnx_path = program_to_onnx(program, out_dir / ONNX_FILE, input_name="image", output_name="probabilities")
    program_path = save_program(program, out_dir / PROGRAM_FILE)
    meta = {
        "model": desc,
        "labels": list(labels),
        "input": {"name": "image", "layout": "NCHW", "channel_order": preprocess.channel_order, "size": preprocess.input_size},
        "transforms": preprocess.to_dict(),
        "output": {"name": "probabilities", "softmax": True},
        "files": {"onnx": ONNX_FILE, "program": PROGRAM_FILE},
        "export": {"onnx_exporter": "torch.export (dynamo=True)", "onnx_opset": ONNX_OPSET,
                   "torch": str(torch.__version__)},
    }
    write_model_yml(out_dir / MODEL_YML, meta)
    return {"model_dir": str(out_dir), "onnx": str(onnx_path), "program": str(program_path),
            "model_yml": str(out_dir / MODEL_YML)}


def parity(model: nn.Module, onnx_path: Path, images: torch.Tensor, threads: int = 2) -> dict[str, float]:
    """Max |ORT − torch| on the softmax outputs, and the same for the torch.export program
    (model.pt2 beside `onnx_path`) loaded back from disk."""
    wrapped = WithSoftmax(model).eval()
    ort_diff = max_abs_diff_vs_torch(wrapped, make_session(onnx_path, threads), images)
    program = load_program(Path(onnx_path).with_name(PROGRAM_FILE)).module()
    with torch.no_grad():
        expected, got = wrapped(images), program(images)
    if got.shape != expected.shape:  # never let broadcasting hide a wrong batch axis
        raise ValueError(f"output shape {tuple(got.shape)} from the program, {tuple(expected.shape)} from torch")
    pt2_diff = (got.double() - expected.double()).abs().max().item()
    return {"onnx_max_abs_diff": float(ort_diff), "pt2_max_abs_diff": float(pt2_diff)}


INT8_DIR = "inference_model_int8"  # beside the float folder: its own inference folder for `spnas predict`


# Below this top-1 agreement with the float model on the calibration images, per-tensor weights
# are retried per channel. Measured: SPOS paths (affine-free BatchNorm folded into convolutions,
# channel ranges far apart) kept 0.25-0.63 test top-1 of 0.83-0.92 per tensor and lost nothing per
# channel; ResNet-20 and PP-LCNet agree >= 0.97 per tensor, which stays (faster here, deploy/quantize.py).
PER_TENSOR_AGREEMENT_FLOOR = 0.95


def export_int8(float_dir: Path, calibration: np.ndarray | torch.Tensor, out_dir: Path | None = None,
                max_images: int = CALIBRATION_IMAGES) -> Quantized:
    """Static int8 twin of the classifier folder `float_dir`: `out_dir` (default
    <float_dir's parent>/inference_model_int8) gets the quantized model.onnx and a model.yml with
    the same labels and preprocessing plus a `quantization:` block, so the Predictor loads it
    unchanged. `calibration`: preprocessed training images (N, C, H, W). Weights per tensor, unless
    the result's top-1 agrees with the float model on fewer than PER_TENSOR_AGREEMENT_FLOOR of the
    calibration images: then per channel, if that agrees more (model.yml says which and why).
    Raises QuantizationError — after removing any stale int8 folder — when ORT cannot quantize it."""
    float_dir = Path(float_dir)
    out_dir = Path(out_dir) if out_dir is not None else float_dir.parent / INT8_DIR
    meta = yaml.safe_load((float_dir / MODEL_YML).read_text())
    images = calibration.numpy() if isinstance(calibration, torch.Tensor) else np.asarray(calibration)
    float_onnx = float_dir / meta["files"]["onnx"]
    try:
        q = quantize_onnx(float_onnx, out_dir / ONNX_FILE, images, max_images=max_images)
        agree = top1_agreement(float_onnx, Path(q.path), images[:max_images])
        chosen_by = {"top1_agreement_with_float": {"per_tensor": agree}}
        if agree < PER_TENSOR_AGREEMENT_FLOOR:
            q = _try_per_channel(float_onnx, out_dir, images, max_images, agree, chosen_by, q)
    except QuantizationError:
        shutil.rmtree(out_dir, ignore_errors=True)  # never leave an int8 folder of another model
        raise
    meta["files"] = {"onnx": ONNX_FILE}  # no torch program: the int8 model exists only as ONNX
    meta["quantization"] = {**quantization_block(q), "weights_chosen_by": chosen_by}
    write_model_yml(out_dir / MODEL_YML, meta)
    return q


def _try_per_channel(float_onnx: Path, out_dir: Path, images: np.ndarray, max_images: int, agree: float,
                     chosen_by: dict[str, Any], per_tensor: Quantized) -> Quantized:
    """Quantize per channel beside the per-tensor model and keep it if its top-1 agrees more with
    the float model; a per-channel failure keeps the per-tensor model (and says why in `chosen_by`)."""
    trial = out_dir / f".per_channel.{ONNX_FILE}"
    try:
        pc = quantize_onnx(float_onnx, trial, images, max_images=max_images, per_channel=True)
        pc_agree = top1_agreement(float_onnx, trial, images[:max_images])
        chosen_by["top1_agreement_with_float"]["per_channel"] = pc_agree
        if pc_agree > agree:
            trial.replace(out_dir / ONNX_FILE)
            return replace(pc, path=str(out_dir / ONNX_FILE))
        return per_tensor
    except QuantizationError as exc:
        chosen_by["per_channel_error"] = exc.reason
        return per_tensor
    finally:
        trial.unlink(missing_ok=True)


def top1_agreement(float_onnx: Path, int8_onnx: Path, images: np.ndarray) -> float:
    """Share of `images` on which both classifier ONNX models pick the same class (no labels needed:
    the calibration images decide the int8 settings, the held-out ones only report them)."""
    float_picks, int8_picks = (ort_top1(make_session(Path(p), 1), images) for p in (float_onnx, int8_onnx))
    return float((float_picks == int8_picks).mean())


def ort_top1(session: ort.InferenceSession, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """The class a classifier session (softmax output) picks for each preprocessed image."""
    name = session.get_inputs()[0].name
    picks = [session.run(None, {name: np.ascontiguousarray(images[i:i + batch], dtype=np.float32)})[0].argmax(1)
             for i in range(0, len(images), batch)]
    return np.concatenate(picks) if picks else np.empty(0, dtype=np.int64)


def ort_accuracy(session: ort.InferenceSession, images: np.ndarray, labels: np.ndarray, batch: int = 256) -> float:
    """Top-1 accuracy of a classifier session (softmax output) on preprocessed `images`."""
    right = int((ort_top1(session, images, batch) == np.asarray(labels)[:len(images)]).sum())
    return right / max(len(images), 1)


Interleave = Callable[[Mapping[str, Callable[[], object]]], Mapping[str, float]]


def int8_figures(float_onnx: Path, int8_onnx: Path, images: np.ndarray, labels: np.ndarray, threads: int,
                 interleaved_ms: Interleave) -> dict[str, float]:
    """Accuracy of both ONNX models through ORT on the same held-out images (int8_acc_delta:
    int8 − float in percentage points; this is int8's parity figure, not a tensor diff) and their
    batch-1 latency timed by `interleaved_ms` (latency.measure's: deploy sits below latency, which
    imports it) on the same threads."""
    images, labels = np.asarray(images, dtype=np.float32), np.asarray(labels)
    sessions = {"float": make_session(Path(float_onnx), threads), "int8": make_session(Path(int8_onnx), threads)}
    acc = {k: ort_accuracy(s, images, labels) for k, s in sessions.items()}
    one = {s.get_inputs()[0].name: images[:1] for s in sessions.values()}
    ms = interleaved_ms({k: (lambda s=s: s.run(None, one)) for k, s in sessions.items()})
    return {"float_ort_acc": acc["float"], "int8_acc": acc["int8"],
            "int8_acc_delta": 100 * (acc["int8"] - acc["float"]), "int8_eval_images": int(len(images)),
            "float_ms_batch1_interleaved": ms["float"], "int8_ms_batch1": ms["int8"],
            "int8_latency_ratio": ms["int8"] / ms["float"] if ms["float"] else float("nan")}


def int8_twin(float_dir: Path, calibration: np.ndarray | torch.Tensor, images: np.ndarray | torch.Tensor,
              labels: np.ndarray | torch.Tensor, threads: int, interleaved_ms: Interleave,
              max_images: int = CALIBRATION_IMAGES) -> dict[str, Any]:
    """`export_int8` then `int8_figures` on held-out `images`/`labels`: the report fields
    (int8_acc, int8_acc_delta, int8_ms_batch1, int8_latency_ratio, int8_model_dir, ...), or
    {"int8_error": reason} when ORT could not quantize the graph (the float folder is kept)."""
    try:
        q = export_int8(Path(float_dir), calibration, max_images=max_images)
    except QuantizationError as exc:
        return {"int8_error": exc.reason}
    as_np = (lambda a: a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a))
    figures = int8_figures(Path(float_dir) / ONNX_FILE, Path(q.path), as_np(images), as_np(labels), threads,
                           interleaved_ms)
    return {**figures, "int8_model_dir": str(Path(q.path).parent), "int8_quantize_s": q.seconds,
            "int8_calibration_images": q.calibration_images, "int8_qdq_nodes": q.qdq_nodes}


def log_int8(logger: logging.Logger | logging.LoggerAdapter, name: str, r: Mapping[str, Any]) -> None:
    """One line: the int8 twin's accuracy delta and latency ratio, or why there is none."""
    if r.get("int8_error"):
        logger.warning("%s: no int8 model, keeping the float one: %s", name, r["int8_error"])
    elif "int8_acc" in r:
        logger.info("%s int8: acc %.4f (%+.2f points vs float ONNX on %d images), batch-1 %.3f ms = %.2fx float",
                    name, r["int8_acc"], r["int8_acc_delta"], r["int8_eval_images"], r["int8_ms_batch1"],
                    r["int8_latency_ratio"])
