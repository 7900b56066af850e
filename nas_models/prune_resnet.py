"""Channel-pruned CIFAR ResNet-20/32/56: the PruneEA search space (Vega PruneEA).

Reads top-down: the architecture as data → encoding layout (groups) → encoding helpers
(validate / repair / random) → blocks → the `PruneResNet` model → `build_prune_resnet` and
`pruned_from_full` → small entry points per depth.

Network (unpruned): 3×3 stem, 16 channels → three stages of n BasicBlocks (n = 3 / 5 / 9 for
depth 20 / 32 / 56) with 16 / 32 / 64 channels, stride 2 at the first block of stages 2 and 3 →
global average pool → FC. A block is conv3×3-BN-ReLU-conv3×3-BN, plus its shortcut, then ReLU;
the shortcut is a 1×1 conv + BN projection where the width or stride changes (first block of
stages 2 and 3), identity elsewhere. ResNet-20 at 32×32: 40.81M MACs, 0.272M params.

Encoding: one bit per prunable output channel, 1 = keep, in Vega's order — all `ch_middle`
groups first, then the `ch_final` groups. For ResNet-20 (464 bits):

    start  length  group          kind       the bits choose the output channels of
      0      16    stage1.block1  ch_middle  stages.0.0.conv1
     16      16    stage1.block2  ch_middle  stages.0.1.conv1
     ...                                     (one group per block: 9 groups, 336 bits)
    144      64    stage3.block1  ch_middle  stages.2.0.conv1
    208      64    stage3.block2  ch_middle  stages.2.1.conv1
    272      64    stage3.block3  ch_middle  stages.2.2.conv1
    336      16    stem           ch_final   stem.conv
    352      16    stage1         ch_final   stages.0.*.conv2
    368      32    stage2         ch_final   stages.1.*.conv2 and stages.1.0.shortcut.conv
    400      64    stage3         ch_final   stages.2.*.conv2 and stages.2.0.shortcut.conv

`ch_middle` = the first conv of each block: nothing else writes to its output, so every block
chooses freely. `ch_final` = the residual width of the stem and of each stage: every conv that
writes onto a stage's residual path (each block's conv2, the projection) is added channel by
channel, so they share one mask. Length = n·(16+32+64) ch_middle + (16+16+32+64) ch_final =
112·n + 128 → 464 / 688 / 1136. `encoding_groups(depth)` lists the groups.

Pruned = masked, exactly. The pruned network is physically smaller (convs, BN, FC and
projections lose the dropped rows/columns), and computes exactly what the full network computes
with every dropped channel set to zero (after its block's activation), which is how PruneEA
evaluates candidates with inherited weights. The one place this needs care is the stem →
stage 1 join: the full network has an identity shortcut there, but the stem and stage-1 masks
may differ. The pruned block then gets a parameter-free `ChannelSelect` shortcut: each kept
stage-1 channel receives the same-numbered stem channel, or zeros where the stem dropped it (a
stem channel that stage 1 drops is read by nothing downstream, so it vanishes). It costs no
MACs and no parameters, adds no weights that the full network lacks, and keeps the unpruned
network at 40.81M MACs. (Vega's own rebuild adds a 1×1 projection when the *counts* differ and
keeps an identity when they match; that is neither what its masked search evaluated nor free.)
Projections are only ever the two the full network has; pruning never adds or removes layers.

A group must keep at least one channel. An all-zero group is repaired by keeping the channel
whose conv filters (summed over every conv writing to the group) have the largest L2 norm in a
full network's weights, or channel 0 when no weights are given (`repair_encoding`);
`build_prune_resnet` repairs with channel 0 and `pruned_from_full` by weight norm. The model's
`arch` records the repaired encoding, so {"type": "PruneResNet", **model.arch} rebuilds it.

Pure torch: no training, data or tracking code here.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import InputError

__all__ = [
    "BLOCKS_PER_STAGE",
    "Group",
    "PruneResNet",
    "build_prune_resnet",
    "channel_scores",
    "encoding_groups",
    "encoding_length",
    "from_desc",
    "keep_largest",
    "prune_resnet20",
    "prune_resnet32",
    "prune_resnet56",
    "pruned_from_full",
    "random_encoding",
    "repair_encoding",
    "space_ops",
    "validate_encoding",
]

LayerFactory = Callable[..., nn.Module]
Encoding = str | Sequence[int] | np.ndarray

# The architecture as data: depth = 6n + 2 with n blocks per stage.
BLOCKS_PER_STAGE: dict[int, int] = {20: 3, 32: 5, 56: 9}
STEM_WIDTH = 16
STAGE_WIDTHS: tuple[int, ...] = (16, 32, 64)
STAGE_STRIDES: tuple[int, ...] = (1, 2, 2)


# --- encoding layout ----------------------------------------------------------------------


class Group(NamedTuple):
    """One run of bits in the encoding: `encoding[start:start + length]`."""

    name: str  # "stage2.block3" (ch_middle) or "stem" / "stage2" (ch_final)
    start: int
    length: int
    kind: str  # "ch_middle" or "ch_final"

    @property
    def stop(self) -> int:
        return self.start + self.length


class _BlockSpec(NamedTuple):
    path: str  # module path in the model, e.g. "stages.1.0"
    in_group: str  # ch_final group the block reads
    mid_group: str  # its own ch_middle group
    out_group: str  # ch_final group it writes
    stride: int
    projection: bool  # the full network has a 1×1 conv + BN shortcut here


def _check_depth(depth: Any, field: str = "depth") -> int:
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) \
            or int(depth) not in BLOCKS_PER_STAGE:
        allowed = ", ".join(str(d) for d in BLOCKS_PER_STAGE)
        raise InputError(field, f"PruneResNet depth must be one of {allowed}; got {depth!r}.")
    return int(depth)


@lru_cache(maxsize=None)
def _groups(depth: int) -> tuple[Group, ...]:
    n = BLOCKS_PER_STAGE[depth]
    named = [(f"stage{s}.block{b}", w, "ch_middle")
             for s, w in enumerate(STAGE_WIDTHS, 1) for b in range(1, n + 1)]
    named += [("stem", STEM_WIDTH, "ch_final")]
    named += [(f"stage{s}", w, "ch_final") for s, w in enumerate(STAGE_WIDTHS, 1)]
    groups, start = [], 0
    for name, length, kind in named:
        groups.append(Group(name, start, length, kind))
        start += length
    return tuple(groups)


@lru_cache(maxsize=None)
def _block_specs(depth: int) -> tuple[_BlockSpec, ...]:
    specs, prev, prev_width = [], "stem", STEM_WIDTH
    for s, (width, stride) in enumerate(zip(STAGE_WIDTHS, STAGE_STRIDES), 1):
        for b in range(BLOCKS_PER_STAGE[depth]):
            block_stride = stride if b == 0 else 1
            projection = block_stride != 1 or prev_width != width
            specs.append(_BlockSpec(f"stages.{s - 1}.{b}", prev, f"stage{s}.block{b + 1}",
                                    f"stage{s}", block_stride, projection))
            prev, prev_width = f"stage{s}", width
    return tuple(specs)


def encoding_groups(depth: int) -> list[Group]:
    """The encoding's groups in order (see the module docstring for the layout)."""
    return list(_groups(_check_depth(depth)))


def encoding_length(depth: int) -> int:
    """Bits in a ResNet-`depth` encoding: 464 / 688 / 1136 for depth 20 / 32 / 56."""
    return _groups(_check_depth(depth))[-1].stop


def _writer_convs(depth: int) -> dict[str, list[str]]:
    """Per group, the conv weights whose output channels the group's bits select."""
    writers: dict[str, list[str]] = {"stem": ["stem.conv.weight"]}
    for spec in _block_specs(depth):
        writers[spec.mid_group] = [f"{spec.path}.conv1.weight"]
        writers.setdefault(spec.out_group, []).append(f"{spec.path}.conv2.weight")
        if spec.projection:
            writers[spec.out_group].append(f"{spec.path}.shortcut.conv.weight")
    return writers


# --- encoding helpers ---------------------------------------------------------------------


def validate_encoding(encoding: Encoding, depth: int, field: str = "encoding") -> str:
    """Check length and values; return the canonical '0/1' string.

    Accepts a '0101…' string or a 1-D sequence / numpy array of 0/1 (ints or bools). Does not
    reject all-zero groups: `repair_encoding` fixes those.
    """
    depth = _check_depth(depth)
    length = encoding_length(depth)
    n_mid = sum(g.length for g in _groups(depth) if g.kind == "ch_middle")
    if isinstance(encoding, str):
        bad = next((i for i, c in enumerate(encoding) if c not in "01"), None)
        if bad is not None:
            raise InputError(field, f"must contain only '0' and '1'; got {encoding[bad]!r} "
                                    f"at position {bad}.")
        bits = encoding
    else:
        if isinstance(encoding, np.ndarray) and encoding.ndim != 1:
            raise InputError(field, f"must be a 1-D list of 0/1; got an array of shape "
                                    f"{encoding.shape}.")
        if isinstance(encoding, (bytes, Mapping)) or not isinstance(encoding, Iterable):
            raise InputError(field, f"must be a '0/1' string or a list of 0/1; got "
                                    f"{type(encoding).__name__}.")
        values = list(encoding)
        for i, v in enumerate(values):
            if isinstance(v, (str, bytes)) or not _is_bit(v):
                raise InputError(field, f"values must be 0 or 1; got {v!r} at position {i}.")
        bits = "".join("1" if v else "0" for v in values)
    if len(bits) != length:
        raise InputError(field, f"a ResNet-{depth} encoding has {length} bits ({n_mid} ch_middle"
                                f" + {length - n_mid} ch_final); got {len(bits)}.")
    return bits


def _is_bit(v: Any) -> bool:
    try:
        return bool(v == 0 or v == 1)
    except (TypeError, ValueError):  # e.g. a nested list or array
        return False


def repair_encoding(
    encoding: Encoding,
    depth: int,
    full_state_dict: Mapping[str, torch.Tensor] | None = None,
) -> str:
    """Make every group keep at least one channel; return the canonical '0/1' string.

    In an all-zero group, set the bit of the channel whose output filters have the largest L2
    norm, summed over every conv writing to the group (for a stage: each block's conv2 and the
    projection), in `full_state_dict` (the state_dict of an unpruned `PruneResNet` of this
    depth). Without weights, keep channel 0. Groups with a kept channel are left unchanged.
    """
    bits = list(validate_encoding(encoding, depth))
    scores = None if full_state_dict is None else channel_scores(full_state_dict, depth)
    for group in _groups(depth):
        if "1" in bits[group.start:group.stop]:
            continue
        keep = 0 if scores is None else int(np.argmax(scores[group.name]))  # ties → lowest channel
        bits[group.start + keep] = "1"
    return "".join(bits)


def channel_scores(full_state_dict: Mapping[str, torch.Tensor], depth: int) -> dict[str, np.ndarray]:
    """Per channel group, each channel's squared L2 filter norm in an unpruned `PruneResNet`'s
    `full_state_dict`, summed over every conv writing to the group (for a stage: each block's
    conv2 and the projection): the magnitude criterion `repair_encoding` and `keep_largest` use."""
    writers = _writer_convs(_check_depth(depth))
    return {g.name: sum(_filter_norms(full_state_dict, key, g.length) for key in writers[g.name])
            for g in _groups(depth)}


def keep_largest(encoding: Encoding, depth: int, scores: Mapping[str, np.ndarray]) -> str:
    """The encoding that keeps, in every group, as many channels as `encoding` does (at least one)
    but the ones with the largest `scores` (`channel_scores`; ties → lowest channel): which
    channels survive follows the magnitude criterion of filter pruning, how many per group is
    the encoding's. Idempotent; the canonical '0/1' string."""
    bits = np.frombuffer(validate_encoding(encoding, depth).encode(), np.uint8) == ord("1")
    out = np.zeros(len(bits), dtype=bool)
    for g in _groups(depth):
        k = max(1, int(bits[g.start:g.stop].sum()))
        out[g.start + np.argsort(-np.asarray(scores[g.name]), kind="stable")[:k]] = True
    return "".join("1" if b else "0" for b in out)


def _filter_norms(state_dict: Mapping[str, torch.Tensor], key: str, channels: int) -> np.ndarray:
    weight = state_dict.get(key)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4 or weight.shape[0] != channels:
        raise InputError("full_state_dict", f"needs {key!r} with {channels} output channels, "
                                            "as in an unpruned PruneResNet of this depth.")
    return weight.detach().float().flatten(1).pow(2).sum(1).cpu().numpy()


def random_encoding(depth: int, rng: np.random.Generator, p_keep: float = 0.5) -> str:
    """Each bit 1 with probability `p_keep` (PruneEA's random initial models use 0.5), then
    repaired (an all-zero group keeps channel 0). Deterministic given the rng state."""
    depth = _check_depth(depth)
    if isinstance(p_keep, bool) or not isinstance(p_keep, (int, float)) or not 0 < p_keep <= 1:
        raise InputError("p_keep", f"must be a probability in (0, 1]; got {p_keep!r}.")
    bits = rng.random(encoding_length(depth)) < p_keep
    return repair_encoding(bits.astype(np.int8), depth)


def _kept_channels(encoding: str, depth: int) -> dict[str, np.ndarray]:
    """Per group, the indices (into the full network's channels) of the kept channels."""
    return {g.name: np.flatnonzero(np.frombuffer(encoding[g.start:g.stop].encode(), np.uint8)
                                   == ord("1"))
            for g in _groups(depth)}


# --- blocks -------------------------------------------------------------------------------


class ConvBnAct(nn.Module):
    """Conv (no bias: BN follows) → BN → activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1,
                 act_layer: LayerFactory = nn.ReLU, norm_layer: LayerFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, bias=False)
        self.bn = norm_layer(out_ch)
        self.act = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Projection(nn.Module):
    """1×1 conv + BN shortcut where the residual width or resolution changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int,
                 norm_layer: LayerFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)
        self.bn = norm_layer(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ChannelSelect(nn.Module):
    """Identity shortcut between two residual paths of the same full width whose kept channels
    differ: output channel j carries the input channel with the same full-network index, or
    zeros if the input dropped it. No parameters, no MACs (a pad and a gather)."""

    def __init__(self, in_kept: np.ndarray, out_kept: np.ndarray) -> None:
        super().__init__()
        position = {int(c): i for i, c in enumerate(in_kept)}
        zero = len(in_kept)  # index of the zero channel padded on at forward time
        index = [position.get(int(c), zero) for c in out_kept]
        self.in_channels, self.out_channels = len(in_kept), len(out_kept)
        self.zero_fill = zero in index
        # Not persistent: it follows from the encoding, so state_dicts hold weights only.
        self.register_buffer("index", torch.tensor(index, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.zero_fill:
            x = F.pad(x, (0, 0, 0, 0, 0, 1))  # one zero channel at the end
        return x.index_select(1, self.index)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, zero_fill={self.zero_fill}"


class BasicBlock(nn.Module):
    """conv3×3 (stride) → BN → act → conv3×3 → BN, + shortcut, → act. `mid_ch` is the block's
    free (ch_middle) width; `out_ch` the stage's shared residual (ch_final) width."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1,
                 shortcut: nn.Module | None = None, act_layer: LayerFactory = nn.ReLU,
                 norm_layer: LayerFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(mid_ch)
        self.act1 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(mid_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(out_ch)
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.act2 = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(x + shortcut)


# --- model --------------------------------------------------------------------------------


class PruneResNet(nn.Module):
    """CIFAR ResNet-`depth` keeping the channels `encoding` selects (a validated, repaired
    '0/1' string; use `build_prune_resnet` for user input).

    `arch` is the JSON-able description ({"depth", "encoding", "num_classes"}); `kept` maps
    each encoding group to the indices of the full network's channels this network keeps.
    """

    def __init__(self, depth: int, encoding: str, num_classes: int = 10,
                 act_layer: LayerFactory = nn.ReLU, norm_layer: LayerFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        self.kept = _kept_channels(encoding, depth)
        if any(len(idx) == 0 for idx in self.kept.values()):
            raise ValueError("every encoding group must keep a channel: call repair_encoding first")
        self.arch: dict[str, Any] = {"depth": depth, "encoding": encoding, "num_classes": num_classes}
        self.num_classes = num_classes
        width = {name: len(idx) for name, idx in self.kept.items()}

        self.stem = ConvBnAct(3, width["stem"], 3, act_layer=act_layer, norm_layer=norm_layer)
        stages: list[list[nn.Module]] = [[] for _ in STAGE_WIDTHS]
        for spec in _block_specs(depth):
            in_kept, out_kept = self.kept[spec.in_group], self.kept[spec.out_group]
            if spec.projection:
                shortcut: nn.Module = Projection(len(in_kept), len(out_kept), spec.stride, norm_layer)
            elif np.array_equal(in_kept, out_kept):
                shortcut = nn.Identity()
            else:  # only stem → stage 1: same full width, different masks
                shortcut = ChannelSelect(in_kept, out_kept)
            stages[int(spec.path.split(".")[1])].append(BasicBlock(
                len(in_kept), width[spec.mid_group], len(out_kept), spec.stride, shortcut,
                act_layer=act_layer, norm_layer=norm_layer))
        self.stages = nn.Sequential(*(nn.Sequential(*blocks) for blocks in stages))
        self.num_features = width[f"stage{len(STAGE_WIDTHS)}"]

        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- builders -----------------------------------------------------------------------------


def _check_num_classes(num_classes: Any, field: str = "num_classes") -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise InputError(field, f"must be a positive integer; got {num_classes!r}.")
    return int(num_classes)


def build_prune_resnet(depth: int, encoding: Encoding | None = None,
                       num_classes: int = 10) -> nn.Module:
    """ResNet-`depth` (20, 32 or 56) keeping the channels `encoding` selects (None: all),
    randomly initialised. An all-zero group keeps channel 0 (see `repair_encoding`)."""
    depth = _check_depth(depth)
    num_classes = _check_num_classes(num_classes)
    encoding = "1" * encoding_length(depth) if encoding is None else repair_encoding(encoding, depth)
    return PruneResNet(depth, encoding, num_classes)


def pruned_from_full(full_model: nn.Module, encoding: Encoding) -> nn.Module:
    """The pruned network `encoding` selects, with weights copied from `full_model` (an
    unpruned `PruneResNet`, e.g. the trained base model): kept output channels and input
    channels of every conv, BN affine and running statistics, FC input columns, projections.

    An all-zero group keeps its largest-norm channel (see `repair_encoding`). In eval mode the
    result equals `full_model` with the dropped channels zeroed; with an all-ones encoding it
    equals `full_model`. The result is on `full_model`'s device, in its training mode.
    """
    if not isinstance(full_model, PruneResNet) or "0" in full_model.arch["encoding"]:
        raise InputError("full_model", "must be an unpruned PruneResNet (built with no encoding "
                                       "or all ones) whose weights the pruned network inherits.")
    depth, num_classes = full_model.arch["depth"], full_model.arch["num_classes"]
    full_state = full_model.state_dict()
    encoding = repair_encoding(encoding, depth, full_state)
    param = next(full_model.parameters())
    # Same dtype and device before copying, so a float64 base model is not rounded to float32.
    pruned = PruneResNet(depth, encoding, num_classes).to(device=param.device, dtype=param.dtype)

    rows_cols = _inherit_plan(depth, pruned.kept)
    state = {}
    for key, tensor in full_state.items():
        rows, cols = rows_cols[key.rsplit(".", 1)[0]]
        if tensor.ndim >= 1 and rows is not None:
            tensor = tensor.index_select(0, torch.as_tensor(rows, device=tensor.device))
        if tensor.ndim >= 2 and cols is not None:
            tensor = tensor.index_select(1, torch.as_tensor(cols, device=tensor.device))
        state[key] = tensor
    pruned.load_state_dict(state)  # strict: any layer not covered above is a bug
    return pruned.train(full_model.training)


def _inherit_plan(depth: int, kept: dict[str, np.ndarray]) -> dict[str, tuple[Any, Any]]:
    """Per layer: (kept output channels, kept input channels), None where nothing is cut."""
    plan: dict[str, tuple[Any, Any]] = {"stem.conv": (kept["stem"], None),
                                        "stem.bn": (kept["stem"], None)}
    for spec in _block_specs(depth):
        i, m, o, p = kept[spec.in_group], kept[spec.mid_group], kept[spec.out_group], spec.path
        plan |= {f"{p}.conv1": (m, i), f"{p}.bn1": (m, None),
                 f"{p}.conv2": (o, m), f"{p}.bn2": (o, None)}
        if spec.projection:
            plan |= {f"{p}.shortcut.conv": (o, i), f"{p}.shortcut.bn": (o, None)}
    plan["fc"] = (None, kept[f"stage{len(STAGE_WIDTHS)}"])
    return plan


def from_desc(desc: Mapping[str, Any]) -> nn.Module:
    """Rebuild from {"type": "PruneResNet", "depth", "encoding", "num_classes"} (= model.arch)."""
    unknown = sorted(set(desc) - {"type", "depth", "encoding", "num_classes"})
    if unknown:
        raise InputError("desc", f"unknown PruneResNet keys {unknown}; allowed: depth, encoding, "
                                 "num_classes.")
    if "depth" not in desc:
        raise InputError("desc.depth", "is missing; a PruneResNet desc needs depth 20, 32 or 56.")
    depth = _check_depth(desc["depth"], field="desc.depth")
    encoding = desc.get("encoding")
    if encoding is not None:
        encoding = validate_encoding(encoding, depth, field="desc.encoding")
    num_classes = _check_num_classes(desc.get("num_classes", 10), field="desc.num_classes")
    return build_prune_resnet(depth, encoding, num_classes)


def space_ops(depth: int, num_classes: int = 10, image_size: int = 32) -> list[dict[str, Any]]:
    """Every primitive op a pruned ResNet-`depth` of this space can run on one image, as latency
    table op dicts (latency.table; the keys latency.trace reads off a forward pass): each conv for
    every pair of kept input/output counts its groups allow, each BN / ReLU / add for every count,
    the stem → stage-1 channel gather (with or without its zero channel), the head. About 11,000
    ops for any depth (deeper networks repeat the same shapes)."""
    depth, num_classes = _check_depth(depth), _check_num_classes(num_classes)
    ops: dict[tuple, dict[str, Any]] = {}

    def add(op: str, c: int, h: int, **fields: Any) -> None:
        entry = {"op": op, "n": 1, "c_in": c, "h": h, "w": h, **fields}
        ops.setdefault(tuple(sorted(entry.items())), entry)

    def conv(c_in: int, c_out: int, h: int, k: int, stride: int) -> None:
        add("conv", c_in, h, flag_bias=0, flag_relu=0, c_out=c_out, groups=1, k=k, pad=(k - 1) // 2,
            stride=stride, dilation=1)

    def bn_relu(c: int, h: int, relu: bool = True) -> None:
        add("batch_norm", c, h, active_type="none")
        if relu:
            add("activation", c, h, act="relu")

    width = {"stem": STEM_WIDTH, **{f"stage{s}": w for s, w in enumerate(STAGE_WIDTHS, 1)}}
    h = image_size
    for x in range(1, STEM_WIDTH + 1):
        conv(3, x, h, 3, 1)
        bn_relu(x, h)
    for spec in _block_specs(depth):
        mid_width = width[spec.out_group]
        out_h = (h - 1) // spec.stride + 1
        for a in range(1, width[spec.in_group] + 1):
            for m in range(1, mid_width + 1):
                conv(a, m, h, 3, spec.stride)
            for b in range(1, width[spec.out_group] + 1):
                if spec.projection:
                    conv(a, b, h, 1, spec.stride)
                else:  # a ChannelSelect shortcut: a gather, after a zero channel when one is needed
                    add("gather", a, h, c_out=b)
                    add("gather", a + 1, h, c_out=b)
        for m in range(1, mid_width + 1):
            bn_relu(m, out_h)
            for b in range(1, width[spec.out_group] + 1):
                conv(m, b, out_h, 3, 1)
        for b in range(1, width[spec.out_group] + 1):
            bn_relu(b, out_h)  # bn2 (and the projection's BN), then the ReLU after the add
            add("eltwise", b, out_h, elt_type="add")
        h = out_h
    for c in range(1, STAGE_WIDTHS[-1] + 1):
        add("pooling", c, h, flag_global_pooling=1, k=h, pad=0, stride=1, ceil_mode=0, pool_type="avg")
        ops.setdefault(("fc", c), {"op": "fc", "flag_bias": 1, "n": 1, "c_in": c, "c_out": num_classes})
    return list(ops.values())


def prune_resnet20(encoding: Encoding | None = None, **kwargs: Any) -> nn.Module:
    return build_prune_resnet(20, encoding, **kwargs)


def prune_resnet32(encoding: Encoding | None = None, **kwargs: Any) -> nn.Module:
    return build_prune_resnet(32, encoding, **kwargs)


def prune_resnet56(encoding: Encoding | None = None, **kwargs: Any) -> nn.Module:
    return build_prune_resnet(56, encoding, **kwargs)
