"""ONNX, torch.export and ONNX Runtime helpers shared by every pipeline's export stage.

Checked on torch 2.14.1, onnx 1.23, onnxscript 0.7, onnxruntime 1.32:
- TorchScript is deprecated in torch 2.14 (`torch.jit.trace`/`script` warn on every call), so
  the torch-side artifact of an export is a `torch.export` program (`export_program`, saved as
  `.pt2` by `save_program`, read back by `load_program`).
- ONNX: `dynamo=True` (the default) converts a torch.export program. For PP-LCNet x0.25 at
  32 px and x1.0 at 224 px it takes 3-5 s on 2 shared cores (the TorchScript-based exporter
  0.2-0.4 s), gives the same operators (BatchNorm folded into Conv) and the same ONNX Runtime
  latency (min 2.3 ms both for x1.0, batch 1, 2 threads), and matches eager torch exactly
  (max |diff| 0.0). Its opset is 18 (`ONNX_OPSET`): asked for 17 it tries a down-conversion
  that fails on PP-LCNet (an onnx version-converter assertion it logs with a traceback,
  leaving the graph at 18 anyway).
- `dynamo=False`, the TorchScript-based exporter, is deprecated and stays only for models
  torch.export cannot capture as a whole graph; its two DeprecationWarnings are filtered by
  their exact text (no `torch.jit.trace` notice is printed for plain modules).
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import yaml
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from torch import nn
from torch.export import ExportedProgram

from core.errors import InputError

__all__ = [
    "ONNX_OPSET",
    "WithSoftmax",
    "export_onnx",
    "export_program",
    "load_program",
    "make_session",
    "max_abs_diff_vs_torch",
    "program_to_onnx",
    "save_program",
]

ONNX_OPSET = 18  # the dynamo exporter's own opset; lower ones need a fragile down-conversion

# What ONNX Runtime raises for a file that is not a loadable model (random bytes, an empty
# file, a truncated graph); all derive from Exception directly.
_ORT_LOAD_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.InvalidProtobuf,
                    ort_state.InvalidGraph, ort_state.NoModel, ort_state.NoSuchFile,
                    ort_state.NotImplemented, ort_state.RuntimeException)


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


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    modes = _module_modes(model)
    model.eval()
    try:
        yield model
    finally:
        _restore_modes(modes)


def _check_example(example: object) -> torch.Tensor:
    if not isinstance(example, torch.Tensor):
        raise InputError("example", f"must be a torch.Tensor; got {type(example).__name__}.")
    return example


def _tmp_name(path: Path) -> Path:
    # Same folder (so os.replace is atomic), hidden, and keeping the suffix: torch.export.save
    # warns about archive names that do not end in .pt2.
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def _batch_dims(dynamic_batch: bool) -> tuple[dict[int, torch.export.Dim], ...] | None:
    # Keyed by position, so it fits whatever forward() names its argument.
    return ({0: torch.export.Dim("batch")},) if dynamic_batch else None


def export_program(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = True) -> ExportedProgram:
    """`torch.export` program of `model` in eval mode, traced on `example` (every module's
    training flag is restored afterwards). With `dynamic_batch`, axis 0 is symbolic."""
    example = _check_example(example)
    if dynamic_batch and example.shape[0] == 1:
        # torch.export specialises a size-1 dimension to the constant 1 (and then rejects the
        # dynamic batch), so trace on two copies of the image instead.
        example = torch.cat([example, example])
    with _eval_mode(model), torch.no_grad():
        return torch.export.export(model, (example,), dynamic_shapes=_batch_dims(dynamic_batch))


def save_program(program: ExportedProgram, path: Path) -> Path:
    """Write `program` to `path` (.pt2) through a temporary file renamed when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        torch.export.save(program, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_program(path: Path) -> ExportedProgram:
    """Read a program written by `save_program`. torchvision is imported first because its
    operators (nms, roi_align) must be registered before a detector's graph deserialises."""
    import torchvision  # noqa: F401  (registers torch.ops.torchvision.*)

    path = Path(path)
    if not path.is_file():
        raise InputError("path", f"no torch.export program at {path}.")
    serde = logging.getLogger("torch._export.serde.serialize")
    level = serde.level
    # Deserialising a graph with data-dependent sizes logs one "Symbol uN did not appear in
    # the graph" warning per unused size symbol: harmless, and a dozen lines per load.
    serde.setLevel(logging.ERROR)
    try:
        return torch.export.load(str(path))
    finally:
        serde.setLevel(level)


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    opset: int = ONNX_OPSET,
    dynamic_batch: bool = True,
    input_name: str = "image",
    output_name: str | Sequence[str] = "output",
    dynamo: bool = True,
) -> Path:
    """Export `model` (in eval mode) traced on `example` to `path`; returns `path`.

    With `dynamic_batch`, axis 0 of the input and of every output is a symbolic `batch`,
    so the file runs any batch size whatever the example's. `output_name` may be a list
    for models with several outputs. The graph is written to a temporary file in the same
    folder, checked with `onnx.checker`, then renamed, so a crash never leaves a half-written
    `path` behind. Every module's training flag is restored afterwards. `dynamo=True` goes
    through `export_program` + `program_to_onnx`; `dynamo=False` uses the deprecated
    TorchScript-based tracer (module docstring), e.g. at `opset` 17.
    """
    example = _check_example(example)
    if dynamo:
        program = export_program(model, example, dynamic_batch)
        return program_to_onnx(program, path, opset, dynamic_batch, input_name, output_name)
    output_names = [output_name] if isinstance(output_name, str) else list(output_name)
    with _eval_mode(model):
        return _write_checked(Path(path), lambda tmp: _export_torchscript(
            model, example, tmp, opset, dynamic_batch, input_name, output_names))


def program_to_onnx(
    program: ExportedProgram,
    path: Path,
    opset: int = ONNX_OPSET,
    dynamic_batch: bool = True,
    input_name: str = "image",
    output_name: str | Sequence[str] = "output",
) -> Path:
    """Convert a torch.export program (one tensor input) to ONNX at `path`, checked and
    renamed into place as `export_onnx` does; `dynamic_batch` must match the program's."""
    output_names = [output_name] if isinstance(output_name, str) else list(output_name)

    def write(tmp: Path) -> None:
        # dynamic_shapes again: the program already has a symbolic batch, this names it
        # `batch` in the ONNX graph (otherwise an internal name such as `s31`).
        # external_data=False keeps weights inside the one file (a side `.data` file's name
        # is baked into the graph, which the rename would break).
        onnx_program = torch.onnx.export(
            program, dynamo=True, opset_version=opset, input_names=[input_name],
            output_names=output_names, dynamic_shapes=_batch_dims(dynamic_batch),
            external_data=False, verbose=False,
        )
        onnx_program.save(str(tmp), external_data=False)

    return _write_checked(Path(path), write)


def _write_checked(path: Path, write: Callable[[Path], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        write(tmp)
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, path)
    finally:
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
        # This exporter is deprecated and says so twice per call; asked for explicitly
        # (dynamo=False), the notices are noise. Anything else still shows.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export",
                                DeprecationWarning)
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning,
                                module=r"torch\.onnx")
        with torch.no_grad():
            torch.onnx.export(
                model, (example,), str(dest), dynamo=False, opset_version=opset,
                input_names=[input_name], output_names=output_names,
                dynamic_axes=dynamic_axes, do_constant_folding=True,
            )


def write_model_yml(path: Path, meta: dict) -> Path:
    """An inference folder's model.yml, written whole or not at all (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(yaml.safe_dump(meta, sort_keys=False))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def make_session(path: Path, threads: int = 2, field: str = "path") -> ort.InferenceSession:
    """A CPU ONNX Runtime session using `threads` intra-op threads and one inter-op thread
    (so timings compare with `torch.set_num_threads(threads)`).

    A missing or unloadable file (random bytes, empty, not an ONNX graph) is an InputError
    naming `field`, so callers can name what the user gave (e.g. `model_dir`).
    """
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise InputError("threads", f"must be a positive integer; got {threads!r}.")
    path = Path(path)
    if not path.is_file():
        raise InputError(field, f"no ONNX file at {path}.")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only; ORT's warnings would drown flow logs
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except _ORT_LOAD_ERRORS as exc:
        # ORT's text is "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from ... failed:
        # Protobuf parsing failed."; its last clause is the useful part.
        reason = str(exc).rsplit("failed:", 1)[-1].strip().rstrip(".") or type(exc).__name__
        raise InputError(field, f"{path} is not a loadable ONNX model ({reason}); "
                                "re-export the model.") from exc


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
