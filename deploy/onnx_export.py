"""ONNX export and ONNX Runtime helpers shared by every pipeline's export stage.

Exporter choice (torch 2.14, onnx 1.23, onnxruntime 1.32, checked here): the TorchScript
exporter (`dynamo=False`) is the default. It exports PP-LCNet in ~0.3 s at the requested
opset with a symbolic batch axis. The torch.export-based exporter (`dynamo=True`, torch's
own default since 2.9) also gives correct graphs but takes ~11 s for the same model, and
its down-conversion to opset 17 fails (an onnx version-converter assertion it catches,
leaving the graph at opset 18). It stays available through `dynamo=True` for models that
the tracer cannot handle.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from spnas.errors import InputError

__all__ = ["WithSoftmax", "export_onnx", "make_session", "max_abs_diff_vs_torch"]


class WithSoftmax(nn.Module):
    """Wrap a classifier returning logits so the exported graph ends in softmax
    (the deployed model returns probabilities, as PaddleX's inference model does)."""

    def __init__(self, model: nn.Module, dim: int = 1) -> None:
        super().__init__()
        self.model = model
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=self.dim)


def _module_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(m, m.training) for m in model.modules()]


def _restore_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    for m, training in modes:
        m.training = training


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    opset: int = 17,
    dynamic_batch: bool = True,
    input_name: str = "image",
    output_name: str | Sequence[str] = "output",
    dynamo: bool = False,
) -> Path:
    """Export `model` (in eval mode) traced on `example` to `path`; returns `path`.

    With `dynamic_batch`, axis 0 of the input and of every output is a symbolic `batch`,
    so the file runs any batch size whatever the example's. `output_name` may be a list
    for models with several outputs. The graph is written to a temporary file in the same
    folder, checked with `onnx.checker`, then renamed, so a crash never leaves a half-written
    `path` behind. Every module's training flag is restored afterwards.
    """
    path = Path(path)
    if not isinstance(example, torch.Tensor):
        raise InputError("example", f"must be a torch.Tensor; got {type(example).__name__}.")
    output_names = [output_name] if isinstance(output_name, str) else list(output_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")

    modes = _module_modes(model)
    model.eval()
    try:
        if dynamo:
            _export_dynamo(model, example, tmp, opset, dynamic_batch, input_name, output_names)
        else:
            _export_torchscript(model, example, tmp, opset, dynamic_batch, input_name,
                                output_names)
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, path)
    finally:
        _restore_modes(modes)
        tmp.unlink(missing_ok=True)
    return path


def _export_torchscript(
    model: nn.Module, example: torch.Tensor, dest: Path, opset: int, dynamic_batch: bool,
    input_name: str, output_names: list[str],
) -> None:
    dynamic_axes = (
        {name: {0: "batch"} for name in [input_name, *output_names]} if dynamic_batch else None
    )
    with warnings.catch_warnings():
        # The deprecation notice is expected: we choose this exporter on purpose (module doc).
        warnings.simplefilter("ignore", DeprecationWarning)
        with torch.no_grad():
            torch.onnx.export(
                model, (example,), str(dest), dynamo=False, opset_version=opset,
                input_names=[input_name], output_names=output_names,
                dynamic_axes=dynamic_axes, do_constant_folding=True,
            )


def _export_dynamo(
    model: nn.Module, example: torch.Tensor, dest: Path, opset: int, dynamic_batch: bool,
    input_name: str, output_names: list[str],
) -> None:
    # dynamic_shapes is keyed by the forward() argument, whatever its name, so pass a tuple.
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    # external_data=False: keep weights inside the one file (True writes a side `.data` file
    # whose name is baked into the graph, which a rename would break).
    program = torch.onnx.export(
        model, (example,), dynamo=True, opset_version=opset, input_names=[input_name],
        output_names=output_names, dynamic_shapes=dynamic_shapes, external_data=False,
        verbose=False,
    )
    program.save(str(dest), external_data=False)


def make_session(path: Path, threads: int = 2) -> ort.InferenceSession:
    """A CPU ONNX Runtime session using `threads` intra-op threads and one inter-op thread
    (so timings compare with `torch.set_num_threads(threads)`)."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise InputError("threads", f"must be a positive integer; got {threads!r}.")
    path = Path(path)
    if not path.is_file():
        raise InputError("path", f"no ONNX file at {path}.")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only; ORT's warnings would drown flow logs
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _as_arrays(out: object) -> list[np.ndarray]:
    if isinstance(out, torch.Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, (tuple, list)):
        return [a for o in out for a in _as_arrays(o)]
    raise TypeError(f"cannot compare a model output of type {type(out).__name__}")


def max_abs_diff_vs_torch(
    model: nn.Module, session: ort.InferenceSession, inputs: torch.Tensor
) -> float:
    """Largest absolute difference between the eager model (eval mode, no grad) and the
    session on the same `inputs`, over all outputs in order."""
    modes = _module_modes(model)
    model.eval()
    try:
        with torch.no_grad():
            expected = _as_arrays(model(inputs))
    finally:
        _restore_modes(modes)
    feed = {session.get_inputs()[0].name: inputs.detach().cpu().numpy()}
    got = session.run(None, feed)
    if len(got) != len(expected):
        raise ValueError(f"session has {len(got)} outputs, the model {len(expected)}")
    diffs = [0.0]
    for g, e in zip(got, expected):
        if g.shape != e.shape:  # never let broadcasting hide a wrong batch axis
            raise ValueError(f"output shape {g.shape} from ONNX Runtime, {e.shape} from torch")
        if e.size:
            diffs.append(float(np.max(np.abs(g.astype(np.float64) - e))))
    return max(diffs)
