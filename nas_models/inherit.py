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

__all__ = ["InheritReport", "inherit_weights", "state_mismatch"]

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
