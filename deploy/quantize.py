"""Post-training static int8 quantization of an exported ONNX model with ONNX Runtime.

`quantize_onnx` calibrates activation ranges on a few real training images (MinMax), writes a
QDQ graph (QuantizeLinear/DequantizeLinear pairs around each quantized op; ORT's CPU provider
fuses them into integer kernels when the session loads it) with per-channel int8 weights, and
checks that the result loads and runs. Anything that goes wrong is a `QuantizationError` whose
`reason` names the op when ORT does, so an export stage can log one line and keep the float
model.

Choices, measured here (2 shared cores of an AMD EPYC with AVX2 and no VNNI, 1 ORT thread, batch
1, onnxruntime 1.32, 32 MinMax calibration images; latency int8 / float by
`latency.measure.interleaved_ms`, accuracy delta int8 − float in points):
- lcnet/full's default PP-LCNet x1.0 (12 epochs, float top-1 0.977 on its 176 test digits; 6
  passes): per-tensor weights with uint8 activations (U8S8) 1.08 and +0.57 points (one digit
  more right); per-channel weights (U8S8 or S8S8 alike) 1.15 and −5.1 points; per-channel with
  reduce_range (7-bit weights, ORT's advice for U8S8 without VNNI) 1.14 and 0.0 points; S8S8
  per-tensor 1.08 and +0.57 points.
- benchmarks/quantize_int8.py (PP-LCNet x1.0, 3 epochs, 300 test digits, 4 passes): at 32 px
  U8S8 per-tensor 1.11, S8S8 per-tensor 1.16, per-channel 1.18 (with reduce_range 1.18); at
  224 px (same weights, latency only) 1.23 / 1.23 / 1.17 / 1.18.
- prune-ea's ResNet-20 (dense 3x3 convolutions): 0.64 with the default below, −0.33 points.
So int8 pays off here only for dense convolutions; PP-LCNet spends its time in depthwise
convolutions and elementwise activations, where Q/DQ adds work that integer kernels without
VNNI do not win back (a VNNI/AMX CPU should do better). Default: U8S8 per-tensor — the fastest at
the pipelines' 32 px and no less accurate; `per_channel=True, reduce_range=True` is the
alternative for networks whose channels differ widely in range.
- SPOS paths (a default spos/full run, 300 test digits): per-tensor weights lost 20-62 points
  (0.52 / 0.25 / 0.63 top-1 against float 0.92 / 0.87 / 0.83), per-channel 0 to +0.3, at 1.6x the
  float latency either way; with int8 activations 2.2-2.6x. deploy/classifier_export.py therefore
  retries per channel when per-tensor disagrees with the float model on the calibration images.
- Softmax and detector post-processing stay float (FLOAT_OPS, DETECTOR_OPS): probabilities
  rounded to 1/256 steps and quantized box coordinates buy nothing.
- MinMax calibration: under 1 s for 32 images here; Entropy / Percentile build histograms.
"""
from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from core.errors import InputError

__all__ = ["CALIBRATION_IMAGES", "DETECTOR_OPS", "QUANT_FORMAT", "ImageCalibrationReader", "QuantizationError",
           "Quantized", "quantization_block", "quantize_onnx"]

CALIBRATION_IMAGES = 32  # enough for MinMax ranges on the embedded sets; calibration then takes < 1 s
QUANT_FORMAT = "QDQ"
# Ops never quantized: Softmax (see above) and the post-processing ops of detectors, whose
# outputs are indices, scores compared against thresholds or box coordinates in pixels.
DETECTOR_OPS = ("Conv", "Gemm", "MatMul")  # detectors: the backbone, FPN and heads; box arithmetic stays float
FLOAT_OPS = frozenset({"Softmax", "NonMaxSuppression", "TopK", "RoiAlign", "Gather", "GatherElements", "GatherND",
                       "NonZero", "Exp", "Log", "Div", "Sub", "Where", "Greater", "Less", "Equal", "Cast",
                       "ScatterND", "Range", "Shape", "Expand", "Tile", "ReduceMax", "Sigmoid", "Slice",
                       "Unsqueeze", "Squeeze", "Transpose", "Split"})


class QuantizationError(RuntimeError):
    """Static quantization failed; `reason` is one line, `op` the ONNX op ORT names (or None)."""

    def __init__(self, reason: str, op: str | None = None) -> None:
        self.reason, self.op = reason, op
        super().__init__(reason)


@dataclass(frozen=True)
class Quantized:
    """A written int8 model: where, how long quantization took, and what became integer."""

    path: str
    seconds: float
    calibration_images: int
    op_types: tuple[str, ...]  # op types fed by a DequantizeLinear (run on int8 inputs)
    qdq_nodes: int             # QuantizeLinear + DequantizeLinear nodes in the graph
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = False
    reduce_range: bool = False
    quant_format: str = QUANT_FORMAT
    calibrate_method: str = "MinMax"


class ImageCalibrationReader:
    """ORT CalibrationDataReader over preprocessed images (N, C, H, W float32), `batch` at a time;
    `batch` None feeds one (C, H, W) image per call (graphs without a batch axis: detectors,
    whose images may differ in size, so a list of (C, H, W) arrays is taken too)."""

    def __init__(self, input_name: str, images: np.ndarray | list[np.ndarray], batch: int | None = 8) -> None:
        if batch is None:
            self._batches = [np.ascontiguousarray(im, dtype=np.float32) for im in images]
            shapes_ok = bool(self._batches) and all(im.ndim == 3 for im in self._batches)
        else:
            images = np.ascontiguousarray(images, dtype=np.float32)
            shapes_ok = images.ndim == 4 and images.shape[0] > 0
            self._batches = [images[i:i + batch] for i in range(0, len(images), batch)]
        if not shapes_ok:
            raise InputError("calibration_images", "must be a non-empty (N, C, H, W) array or, for a graph "
                                                   "taking one image, a list of (C, H, W) arrays.")
        self.input_name = input_name
        self._next = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._next, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._next = iter(self._batches)


def _images(calibration_batches: np.ndarray | Iterable[np.ndarray], limit: int) -> list[np.ndarray]:
    """At most `limit` (C, H, W) arrays from batches (N, C, H, W) or single images (C, H, W)."""
    batches = [calibration_batches] if isinstance(calibration_batches, np.ndarray) else list(calibration_batches)
    images: list[np.ndarray] = []
    for b in batches:
        a = np.asarray(b.numpy() if hasattr(b, "numpy") else b, dtype=np.float32)
        if a.ndim not in (3, 4):
            raise InputError("calibration_images", f"must be (N, C, H, W) batches or (C, H, W) images; got shape "
                                                   f"{tuple(a.shape)}.")
        images += [a] if a.ndim == 3 else list(a)
    if not images:
        raise InputError("calibration_images", "no calibration images were given.")
    return images[:limit]


_ORT_OP = (re.compile(r"for (\w+)\(\d+\) node with name"),         # no kernel for the quantized node
           re.compile(r"Op \((\w+)\)"),                              # shape inference / type checks
           re.compile(r"op_type[=:]\s*'?(\w+)"),
           re.compile(r"[Nn]ode \S+ \((\w+)\)"))


def _op_named(text: str) -> str | None:
    for pattern in _ORT_OP:
        m = pattern.search(text)
        if m:
            return m.group(1)
    return None


def _failure(stage: str, exc: BaseException) -> QuantizationError:
    text = " ".join(str(exc).split()) or type(exc).__name__
    op = _op_named(text)
    where = f" at op {op}" if op else ""
    return QuantizationError(f"{stage} failed{where}: {text[:300]}", op)


def quantization_block(q: Quantized) -> dict[str, object]:
    """What model.yml says about an int8 model (the `quantization:` block)."""
    return {"method": "static", "dtype": "int8", "format": q.quant_format, "activations": q.activation_type,
            "weights": f"{q.weight_type}, {'per-channel' if q.per_channel else 'per-tensor'}"
                       f"{', 7-bit range' if q.reduce_range else ''}",
            "calibration": {"method": q.calibrate_method, "images": q.calibration_images,
                            "source": "training images"},
            "quantized_op_types": list(q.op_types), "qdq_nodes": q.qdq_nodes,
            "tool": f"onnxruntime.quantization {_ort_version()}"}


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


class _NoPreprocessHint(logging.Filter):
    # quantize_static logs "Please consider pre-processing" twice through the root logger on
    # every call; ORT's optimiser does that folding when the session loads the graph anyway ...
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # ... and one "Expected bias ... to be an initializer" per conv whose bias the tracer
        # left as a computed tensor (ORT then keeps that bias in float): expected, not news.
        return "pre-processing before quantization" not in message and "to be an initializer" not in message


@contextmanager
def _quiet_root() -> Iterator[None]:
    root, hint = logging.getLogger(), _NoPreprocessHint()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)


def quantize_onnx(float_onnx: Path, out_onnx: Path, calibration_batches: np.ndarray | Iterable[np.ndarray], *,
                  max_images: int = CALIBRATION_IMAGES, activation_int8: bool = False, per_channel: bool = False,
                  op_types: Sequence[str] | None = None, reduce_range: bool = False,
                  check_batch: bool = True) -> Quantized:
    """Write a static int8 (QDQ) copy of `float_onnx` to `out_onnx`, calibrated on at most
    `max_images` preprocessed images (arrays or tensors, N×C×H×W, in the model's input
    convention). Raises QuantizationError (the float model is untouched) when ORT cannot
    quantize the graph or cannot run the result."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    float_onnx, out_onnx = Path(float_onnx), Path(out_onnx)
    if not float_onnx.is_file():
        raise InputError("float_onnx", f"no ONNX file at {float_onnx}.")
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise InputError("max_images", f"must be a positive integer; got {max_images!r}.")
    images = _images(calibration_batches, max_images)
    try:
        model = onnx.load(str(float_onnx))
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
        raise _failure(f"reading {float_onnx}", exc) from exc
    if len(model.graph.input) != 1:
        raise QuantizationError(f"the graph has {len(model.graph.input)} inputs; calibration feeds one image input")
    input_name = model.graph.input[0].name
    batched = len(model.graph.input[0].type.tensor_type.shape.dim) == 4
    present = {n.op_type for n in model.graph.node}
    wanted = sorted(present - FLOAT_OPS) if op_types is None else sorted(present & set(op_types))
    if not wanted:
        raise QuantizationError(f"no op to quantize (graph ops: {', '.join(sorted(present))})")
    out_onnx.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_onnx.with_name(f".{out_onnx.stem}.{os.getpid()}.tmp.onnx")
    t0 = time.perf_counter()
    try:
        reader = ImageCalibrationReader(input_name, np.stack(images) if batched else images, 8 if batched else None)
        # quantize_static keeps its augmented calibration graph in its own temporary folder.
        with _quiet_root():
            quantize_static(
                model, str(tmp), reader,
                quant_format=QuantFormat.QDQ, op_types_to_quantize=wanted, per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QInt8 if activation_int8 else QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                calibration_providers=["CPUExecutionProvider"],
            )
        seconds = time.perf_counter() - t0
        nodes = onnx.load(str(tmp)).graph.node
        qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in nodes)
        if qdq == 0:
            raise QuantizationError(f"ORT quantized no op (graph ops: {', '.join(sorted(present))})")
        if check_batch:
            _check_runs(tmp, input_name, images[0][None] if batched else images[0])
        os.replace(tmp, out_onnx)
    except (QuantizationError, InputError):
        raise
    except Exception as exc:  # ORT and onnx raise many unrelated types; all mean "keep the float model"
        raise _failure("static int8 quantization", exc) from exc
    finally:
        tmp.unlink(missing_ok=True)
    # An op runs in int8 when its inputs come from DequantizeLinear and its output goes to
    # QuantizeLinear (ORT fuses that pattern); Softmax after a DQ reads plain floats.
    dq_outputs = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    q_inputs = {i for n in nodes if n.op_type == "QuantizeLinear" for i in n.input}
    fed = sorted({n.op_type for n in nodes if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                  and any(i in dq_outputs for i in n.input) and any(o in q_inputs for o in n.output)})
    return Quantized(path=str(out_onnx), seconds=seconds, calibration_images=int(len(images)), op_types=tuple(fed),
                     qdq_nodes=int(qdq), activation_type="int8" if activation_int8 else "uint8",
                     per_channel=per_channel, reduce_range=reduce_range)


def _check_runs(path: Path, input_name: str, image: np.ndarray) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        session.run(None, {input_name: image})
    except Exception as exc:
        raise _failure("running the int8 model", exc) from exc
