"""Count multiply-accumulates (MACs) and parameters of a torch model.

Papers in this project say "FLOPs" and mean MACs (multiply-accumulates:
one per multiply-add of a conv or linear layer), so this reports MACs.
`torch.utils.flop_counter.FlopCounterMode` counts a multiply-add as 2 FLOPs and covers
conv / matmul / linear / attention ops (not BN, activations or pooling, which the papers'
tables leave out as well); MACs = its total / 2.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs_params", "count_params", "format_count"]


def count_params(model: nn.Module) -> int:
    """All parameters, trainable or not (shared tensors once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs_params(
    model: nn.Module, example: torch.Tensor | tuple[int, ...] | list[Any]
) -> tuple[int, int]:
    """MACs of one forward pass on `example`, and the parameter count.

    `example` is a shape tuple (run on `torch.zeros(shape)`) or anything the model takes
    as its single argument, e.g. a tensor, or a list of images for a detector. MACs cover
    the whole batch. The model runs in eval mode (BN/dropout behave as at inference) under
    `torch.no_grad`; every module's training flag is restored afterwards.
    """
    if isinstance(example, tuple):
        param = next(model.parameters(), None)
        example = torch.zeros(example, device=param.device if param is not None else "cpu")
    # Per module, not just the top flag: callers may keep some parts (e.g. frozen BN) in eval.
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        for m, training in modes:
            m.training = training
    return counter.get_total_flops() // 2, count_params(model)


def format_count(n: float) -> str:
    """Short human form: 3_000_000 → '3.0M', 161_400_000 → '161.4M', 1_500 → '1.5K'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))
