"""Per-op MACs/params lookup table for the SPOS ShuffleNetV2 space.

SPOS filters and samples paths by FLOPs thousands of times; counting a whole network each
time would dominate the search. As in the release (its `op_flops_dict.pkl`), a path's cost is
a sum: fixed parts (stem and its pool, head 1×1 conv, classifier) plus the chosen op of each of
the 20 blocks, each counted once at the input shape it sees in the network. Counting uses the
project's counter (`latency.flops.count_macs_params`, multiply-accumulates), on modules built
with BN affine so `params` is what a stand-alone subnet (`build_subnet`, affine=True) has; the
sums equal counting the whole subnet exactly, because every op's input shape is fixed by the
preset whatever the other blocks choose.

The table is saved as JSON with the preset's fields, the input size and num_classes; `load`
refuses a table built for anything else, and `build_or_load` rebuilds it instead.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latency.flops import count_macs_params
from nas_models.spos_shufflenet import (
    NUM_CHOICES,
    Preset,
    build_supernet,
    get_preset,
    validate_choices,
)
from core.errors import InputError

__all__ = ["MacsTable", "build_macs_table", "build_or_load"]

FORMAT = "spnas.spos_macs_table"
VERSION = 1


@dataclass(frozen=True)
class MacsTable:
    """Costs of every op of one preset at one input size (batch 1).

    `fixed` = stem (+ pool) + head conv + classifier, as {"macs", "params"}; `parts` the same
    per fixed part; `per_block[i][c]` / `per_block_params[i][c]` the cost of choice c at block i.
    """

    preset: Preset
    num_classes: int
    input_size: int
    fixed_macs: int
    fixed_params: int
    per_block: list[list[int]]
    per_block_params: list[list[int]]
    parts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def n_blocks(self) -> int:
        return len(self.per_block)

    def macs(self, choices: Sequence[int]) -> int:
        """MACs of the subnet `choices` (one image)."""
        choices = validate_choices(choices, self.n_blocks)
        return self.fixed_macs + sum(row[c] for row, c in zip(self.per_block, choices))

    def params(self, choices: Sequence[int]) -> int:
        """Parameters of the stand-alone subnet `choices` (BN affine included)."""
        choices = validate_choices(choices, self.n_blocks)
        return self.fixed_params + sum(row[c] for row, c in zip(self.per_block_params, choices))

    def min_path(self) -> list[int]:
        return [min(range(len(row)), key=row.__getitem__) for row in self.per_block]

    def max_path(self) -> list[int]:
        return [max(range(len(row)), key=row.__getitem__) for row in self.per_block]

    def min_macs(self) -> int:
        return self.fixed_macs + sum(min(row) for row in self.per_block)

    def max_macs(self) -> int:
        return self.fixed_macs + sum(max(row) for row in self.per_block)

    def matches(self, preset: str | Preset | Mapping[str, Any], num_classes: int,
                input_size: int | None = None) -> bool:
        """True if this table was built for exactly this preset, class count and input size."""
        preset = get_preset(preset)
        size = preset.input_size if input_size is None else input_size
        return (self.preset == preset and self.num_classes == num_classes
                and self.input_size == size)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "preset": asdict(self.preset),
                "num_classes": self.num_classes, "input_size": self.input_size,
                "fixed": {"macs": self.fixed_macs, "params": self.fixed_params},
                "parts": self.parts, "per_block_macs": self.per_block,
                "per_block_params": self.per_block_params}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)  # atomic: a reader never sees half a table
        return path

    @classmethod
    def from_dict(cls, data: Any, field_name: str = "macs_table") -> MacsTable:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(field_name, f"is not an SPOS MACs table (expected JSON with "
                                         f"format {FORMAT!r}).")
        if data.get("version") != VERSION:
            raise InputError(field_name, f"has table version {data.get('version')!r}; this "
                                         f"code reads version {VERSION}: rebuild it.")
        try:
            preset = get_preset(data["preset"])
            per_block = [[int(v) for v in row] for row in data["per_block_macs"]]
            per_block_params = [[int(v) for v in row] for row in data["per_block_params"]]
            table = cls(preset=preset, num_classes=int(data["num_classes"]),
                        input_size=int(data["input_size"]),
                        fixed_macs=int(data["fixed"]["macs"]),
                        fixed_params=int(data["fixed"]["params"]),
                        per_block=per_block, per_block_params=per_block_params,
                        parts={k: {"macs": int(v["macs"]), "params": int(v["params"])}
                               for k, v in data.get("parts", {}).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(field_name, f"is malformed ({exc!s}); rebuild it.") from None
        shape_ok = len(per_block) == sum(preset.stage_blocks) and all(
            len(row) == NUM_CHOICES for row in per_block + per_block_params) \
            and len(per_block_params) == len(per_block)
        if not shape_ok:
            raise InputError(field_name, f"must hold {sum(preset.stage_blocks)} blocks x "
                                         f"{NUM_CHOICES} choices of MACs and params; rebuild it.")
        return table

    @classmethod
    def load(cls, path: str | Path, preset: str | Preset | Mapping[str, Any] | None = None,
             num_classes: int | None = None, input_size: int | None = None) -> MacsTable:
        """Read a saved table; with `preset` / `num_classes` given, refuse one built for others."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError("macs_table", f"file {str(path)!r} does not exist.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError("macs_table", f"file {str(path)!r} is not readable JSON ({exc!s}).") \
                from None
        table = cls.from_dict(data)
        if preset is not None or num_classes is not None or input_size is not None:
            want = get_preset(preset) if preset is not None else table.preset
            classes = table.num_classes if num_classes is None else num_classes
            if not table.matches(want, classes, input_size):
                raise InputError("macs_table", f"file {str(path)!r} was built for preset "
                                               f"{table.preset.name!r} at {table.input_size} px "
                                               f"with {table.num_classes} classes, not preset "
                                               f"{want.name!r} at {input_size or want.input_size} "
                                               f"px with {classes} classes; rebuild it.")
        return table


def _count(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, int, tuple[int, ...]]:
    """MACs and params of `module` on zeros of `shape`, and its output shape."""
    macs, params = count_macs_params(module, shape)
    with torch.no_grad():
        out = module.eval()(torch.zeros(shape))
    return int(macs), int(params), tuple(out.shape)


def build_macs_table(preset: str | Preset | Mapping[str, Any] = "small", num_classes: int = 10,
                     input_size: int | None = None) -> MacsTable:
    """Count every op of `preset` once (a few seconds for the paper preset at 224 px)."""
    preset = get_preset(preset)
    size = preset.input_size if input_size is None else input_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError("input_size", f"must be a positive integer (pixels); got {size!r}.")
    # affine=True: every op carries the BN parameters of a stand-alone subnet.
    net = build_supernet(preset, num_classes=num_classes, affine=True)
    # One thread: ~90 tiny single-image ops gain nothing from a second OpenMP worker, and on a
    # busy machine waking it costs up to ~0.2 s per op (measured on our 2-core boxes).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _build(net, preset, size)
    finally:
        torch.set_num_threads(threads)


def _build(net: nn.Module, preset: Preset, size: int) -> MacsTable:
    parts: dict[str, dict[str, int]] = {}

    macs, params, shape = _count(nn.Sequential(net.stem, net.stem_pool), (1, 3, size, size))
    parts["stem"] = {"macs": macs, "params": params}
    per_block, per_block_params = [], []
    for block in net.blocks:
        row = [_count(op, shape) for op in block.choices]
        per_block.append([m for m, _, _ in row])
        per_block_params.append([p for _, p, _ in row])
        shape = row[0][2]  # every choice of a block has the same output shape
    macs, params, shape = _count(net.head, shape)
    parts["head"] = {"macs": macs, "params": params}
    macs, params, _ = _count(nn.Sequential(net.global_pool, net.flatten, net.classifier), shape)
    parts["classifier"] = {"macs": macs, "params": params}

    return MacsTable(preset=preset, num_classes=net.num_classes, input_size=size,
                     fixed_macs=sum(p["macs"] for p in parts.values()),
                     fixed_params=sum(p["params"] for p in parts.values()),
                     per_block=per_block, per_block_params=per_block_params, parts=parts)


def build_or_load(path: str | Path, preset: str | Preset | Mapping[str, Any] = "small",
                  num_classes: int = 10, input_size: int | None = None) -> MacsTable:
    """The table at `path` if it was built for this preset/classes/size; otherwise build it and
    save it there (replacing a stale one). A file that is not a table is refused, not replaced."""
    path = Path(path)
    if path.exists():
        table = MacsTable.load(path)
        if table.matches(preset, num_classes, input_size):
            return table
    table = build_macs_table(preset, num_classes, input_size)
    table.save(path)
    return table
