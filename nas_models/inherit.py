"""Weight inheritance between SP-NAS candidates: copy every tensor whose name AND shape match.

SerialBackbone names blocks `stages.{s}.{b}`, so after an expand (a block inserted), a swap
(a stage boundary moved) or an added stage, most of the parent's tensors still fit the
child by name and shape. Buffers (BN running statistics) are copied too.

With `freeze_inherited_blocks`, backbone blocks whose parameters were ALL inherited stop
receiving gradients (Vega's `freeze_swap_keys`): only new or reshaped blocks and the heads
train. Their BN running statistics still update in train mode, as in Vega.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from core.errors import InputError

__all__ = ["InheritReport", "inherit_weights", "require_loaded_share", "state_mismatch"]

# "stages.1.0.conv1.weight" or "backbone.body.stages.1.0.conv1.weight" -> block prefix
_BLOCK = re.compile(r"^(.*?stages\.\d+\.\d+)\.")


@dataclass
class InheritReport:
    matched: int
    total: int
    matched_names: list[str] = field(default_factory=list)
    frozen_blocks: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.matched / self.total if self.total else 0.0


@torch.no_grad()
def inherit_weights(
    model: nn.Module,
    parent_state: Mapping[str, torch.Tensor],
    freeze_inherited_blocks: bool = False,
) -> InheritReport:
    """Copy parent tensors into `model` in place where name and shape match; report counts.

    `total` counts the model's state_dict entries (parameters and buffers).
    """
    own = model.state_dict()  # tensors share storage with the model: copy_ writes through
    matched: list[str] = []
    for name, tensor in own.items():
        src = parent_state.get(name)
        if isinstance(src, torch.Tensor) and src.shape == tensor.shape:
            tensor.copy_(src)
            matched.append(name)

    frozen: list[str] = []
    if freeze_inherited_blocks:
        inherited = set(matched)
        blocks: dict[str, list[tuple[str, nn.Parameter]]] = {}
        for name, p in model.named_parameters():
            m = _BLOCK.match(name)
            if m:
                blocks.setdefault(m.group(1), []).append((name, p))
        for prefix, params in blocks.items():
            if all(n in inherited for n, _ in params):
                for _, p in params:
                    p.requires_grad_(False)
                frozen.append(prefix)
    return InheritReport(len(matched), len(own), matched, frozen)


def require_loaded_share(
    report: InheritReport | int,
    total_tensors: int | None,
    field: str,
    min_share: float = 0.5,
) -> None:
    """Refuse a user's weights file of which too little fits the model.

    `report` is inherit_weights' report (or the number of tensors loaded); `total_tensors` is
    what the share is taken of (None: the report's total, i.e. the model's tensors). Loading by
    name and shape silently skips whatever does not fit, so weights for another architecture
    would otherwise "load" and leave the model untrained.
    """
    matched = report.matched if isinstance(report, InheritReport) else int(report)
    total = total_tensors if total_tensors is not None else (
        report.total if isinstance(report, InheritReport) else None)
    if total is None or total < 1:
        raise ValueError(f"total_tensors must be a positive count, got {total!r}")
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share must be in (0, 1], got {min_share!r}")
    if matched < min_share * total:
        raise InputError(
            field,
            f"only {matched} of {total} tensors matched by name and shape (need at least "
            f"{min_share * 100:g} %); give weights saved from the same architecture.",
        )


def state_mismatch(
    expected: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    optional_suffix: str | None = None,
) -> str:
    """'' when `given` has exactly `expected`'s names and shapes; otherwise one line saying
    what is missing, unexpected or shape-mismatched (a few names each), for an InputError.
    Expected names ending in `optional_suffix` (e.g. BN counters) may be absent."""
    missing = sorted(k for k in expected if k not in given
                     and not (optional_suffix and k.endswith(optional_suffix)))
    unexpected = sorted(k for k in given if k not in expected)
    wrong = sorted(k for k in given if k in expected
                   and tuple(given[k].shape) != tuple(expected[k].shape))
    return "; ".join(
        f"{label} {len(names)} (e.g. {', '.join(names[:3])})"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", wrong))
        if names
    )
