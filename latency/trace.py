"""The latency-table ops of any network, read off one real forward pass at the ATen level.

`ops_of_network(module, example)` runs the module once in eval mode under a
`TorchDispatchMode` and turns every ATen kernel it calls into a table op dict
(`latency.table`): convolutions, batch norms, activations, same-shape adds, poolings (global
means included), fully connected layers, concatenations, channel slices, nearest upsampling
and channel gathers. Working below the module level is what makes one recorder serve every
space: a ResNet's residual add, a ShuffleNet's channel split and concat and an FPN's upsampling
are functional calls that no module hook sees (`nas_models.blazeface.ops_of_model` hooks
modules, which is enough for BlazeFace only).

Views (reshape, transpose, flatten) cost nothing and are not ops. Any other kernel is counted
in `Traced.untabled` by name: the predictor's per-op term and intercept absorb their cost, and
a caller can show what the table leaves out. Shapes are each op's input: n, c_in, h, w.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from core.errors import InputError
from latency.measure import torch_threads

__all__ = ["Traced", "ops_of_network"]

aten = torch.ops.aten

# Kernels that allocate, alias or reshape without computing anything worth a table entry.
_FREE = {"empty", "view", "_unsafe_view", "t", "transpose", "permute", "reshape", "expand",
         "unsqueeze", "squeeze", "flatten", "alias", "detach", "lift_fresh", "_to_copy",
         "zeros", "zeros_like", "empty_like", "_local_scalar_dense", "select", "split",
         "split_with_sizes", "chunk", "unbind", "as_strided", "clone", "contiguous"}
_ACTS = {"relu": "relu", "relu_": "relu", "hardswish": "hardswish", "hardswish_": "hardswish",
         "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "hardsigmoid": "hardsigmoid",
         "hardsigmoid_": "hardsigmoid", "silu": "swish", "silu_": "swish", "tanh": "tanh",
         "tanh_": "tanh", "gelu": "gelu", "elu": "elu", "elu_": "elu", "leaky_relu": "leaky_relu",
         "leaky_relu_": "leaky_relu"}


@dataclass(frozen=True)
class Traced:
    """Table ops in call order, and the computing kernels no table op covers (name -> count)."""

    ops: tuple[dict[str, Any], ...]
    untabled: Mapping[str, int] = field(default_factory=dict)


def _square(value: Sequence[int] | int, what: str) -> int:
    values = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
    if len(set(values)) != 1:
        raise InputError("module", f"{what} {tuple(values)} is not square; latency tables key square "
                                   "kernels, strides and paddings only.")
    return values[0]


def _nchw(x: torch.Tensor) -> dict[str, int]:
    n, c, h, w = (int(v) for v in x.shape)
    return {"n": n, "c_in": c, "h": h, "w": w}


def _aliases(out: Any, args: tuple) -> bool:
    """Whether `out` is a view of the first argument (a slice over a whole dim, a narrow): free."""
    if not (isinstance(out, torch.Tensor) and args and isinstance(args[0], torch.Tensor)):
        return False
    return out.untyped_storage().data_ptr() == args[0].untyped_storage().data_ptr()


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[dict[str, Any]] = []
        self.untabled: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        op = self._op(name, args, out)
        if op is not None:
            self.ops.append(op)
        elif name not in _FREE and not _aliases(out, args):
            self.untabled[name] += 1
        return out

    @staticmethod
    def _op(name: str, args: tuple, out: Any) -> dict[str, Any] | None:  # noqa: C901 - one case per kernel
        x = args[0] if args else None
        if name == "convolution" and not args[6]:  # transposed convolutions have no table op
            weight, bias, stride, pad, dilation, groups = args[1], args[2], args[3], args[4], args[5], args[8]
            return {"op": "conv", "flag_bias": int(bias is not None), "flag_relu": 0, **_nchw(x),
                    "c_out": int(weight.shape[0]), "groups": int(groups),
                    "k": _square(tuple(weight.shape[2:]), "kernel"), "pad": _square(pad, "padding"),
                    "stride": _square(stride, "stride"), "dilation": _square(dilation, "dilation")}
        if name in ("native_batch_norm", "_native_batch_norm_legit_no_training", "batch_norm") and x.ndim == 4:
            return {"op": "batch_norm", "active_type": "none", **_nchw(x)}
        if name in _ACTS and x.ndim == 4:
            return {"op": "activation", "act": _ACTS[name], **_nchw(x)}
        if name in ("hardtanh", "hardtanh_") and x.ndim == 4 and tuple(args[1:3]) == (0.0, 6.0):
            return {"op": "activation", "act": "relu6", **_nchw(x)}
        if name in ("add", "add_") and isinstance(args[1], torch.Tensor) and x.ndim == 4 \
                and args[1].shape == x.shape:
            return {"op": "eltwise", "elt_type": "add", **_nchw(x)}
        if name in ("max_pool2d_with_indices", "max_pool2d", "avg_pool2d") and x.ndim == 4:
            k = _square(args[1], "pooling kernel")
            stride = _square(args[2] if len(args) > 2 and args[2] else k, "pooling stride")
            pad = _square(args[3] if len(args) > 3 else 0, "pooling padding")
            ceil = int(bool(args[5] if name != "avg_pool2d" and len(args) > 5 else
                            args[4] if name == "avg_pool2d" and len(args) > 4 else False))
            pool = "max" if name.startswith("max") else "avg"
            return {"op": "pooling", "flag_global_pooling": 0, **_nchw(x), "k": k, "pad": pad,
                    "stride": stride, "ceil_mode": ceil, "pool_type": pool}
        if (name == "mean" and x.ndim == 4 and len(args) > 1 and sorted(d % 4 for d in args[1]) == [2, 3]) or \
                (name in ("adaptive_avg_pool2d", "_adaptive_avg_pool2d") and x.ndim == 4
                 and tuple(args[1]) == (1, 1)):
            return {"op": "pooling", "flag_global_pooling": 1, **_nchw(x), "k": int(x.shape[2]),
                    "pad": 0, "stride": 1, "ceil_mode": 0, "pool_type": "avg"}
        if name in ("addmm", "mm") and isinstance(out, torch.Tensor) and out.ndim == 2:
            inp = args[1] if name == "addmm" else x
            return {"op": "fc", "flag_bias": int(name == "addmm"), "n": int(inp.shape[0]),
                    "c_in": int(inp.shape[1]), "c_out": int(out.shape[1])}
        if name == "cat" and isinstance(out, torch.Tensor) and out.ndim == 4 \
                and (len(args) > 1 and args[1] % 4 == 1):
            return {"op": "concat", **_nchw(out), "inputs": len(x)}
        if name == "slice" and x.ndim == 4 and len(args) > 1 and args[1] % 4 == 1 and out.shape[1] != x.shape[1]:
            step = int(args[4]) if len(args) > 4 else 1
            return {"op": "slice", **_nchw(x), "c_out": int(out.shape[1]), "stride": step}
        if name == "upsample_nearest2d" and x.ndim == 4:
            return {"op": "resize", **_nchw(x), "scale": int(out.shape[2]) // int(x.shape[2])}
        if name == "index_select" and x.ndim == 4 and args[1] % 4 == 1:
            return {"op": "gather", **_nchw(x), "c_out": int(out.shape[1])}
        return None


def ops_of_network(module: nn.Module, example: torch.Tensor) -> Traced:
    """The table ops one eval-mode, no-grad, one-thread forward pass of `module` on `example` runs
    (module docstring). The module's train/eval flags are restored afterwards."""
    if not isinstance(example, torch.Tensor) or example.ndim != 4:
        raise InputError("example", "must be one (n, c, h, w) image tensor.")
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    recorder = _Recorder()
    try:
        # One thread: only shapes are read, and with the other core busy a multi-threaded pass
        # of tiny convs here took 2.6 s against 0.02 s (OpenMP barrier waits).
        with torch_threads(1), torch.no_grad(), recorder:
            module(example)
    finally:
        for m, flag in flags:
            m.training = flag
    return Traced(tuple(recorder.ops), dict(recorder.untabled))
