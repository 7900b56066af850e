"""SPOS ShuffleNetV2 choice space: supernet, stand-alone subnets, weight inheritance (Guo et al. 2019).

Reads top-down: presets (the architecture as data) → choice validation → blocks → the shared
stem/head → `SposSupernet` (every choice of every block) and `SposSubnet` (one path) →
builders (`build_supernet`, `build_subnet`, `subnet_from_supernet`, `from_desc`) → helpers
for training one path (`path_parameters`, `supernet_key`).

Space (Single Path One-Shot, Guo et al. 2019; the Megvii release and NNI's reproduction):
stem 3×3 conv → 20 choice blocks in stages of 4/4/8/4, the first block of every stage with
stride 2 → 1×1 conv to `last_channels` → global average pool → dropout 0.1 → linear (no bias).
Each block is one ShuffleNetV2 unit, and a path picks one of four per block, in this order:

    0 shufflenet 3×3   pw 1×1 → dw k×k → pw 1×1          (k = 3, 5, 7 for choices 0, 1, 2)
    1 shufflenet 5×5
    2 shufflenet 7×7
    3 xception 3×3     (dw 3×3 → pw 1×1) three times

The branch's middle width is half the block's output width. A stride-1 unit splits its input
into even and odd channels, runs the branch on the odd half and concatenates [even, branch];
taking even/odd channels of the previous [kept, branch] concatenation *is* ShuffleNetV2's
channel shuffle (two groups), so no separate shuffle op is needed. A stride-2 unit feeds its
whole input to both the branch and a projection (dw k×k stride 2 → pw 1×1, k = 3 for
xception) and concatenates [projection, branch].

Presets: "paper" is the published ImageNet space at 224 px (stem 16 stride 2, channels
64/160/320/640, last conv 1024: total stride 32, no max-pool, as in the Megvii and NNI code;
the released architecture counts 323M MACs / 3.5M params there). "small" (the default) keeps
the 20 blocks but starts at stride 1 with narrow channels so a supernet trains in minutes on
2 CPU cores at 32×32 px.

Weight sharing: supernet parameter `blocks.{i}.choices.{c}.<rest>` is subnet parameter
`blocks.{i}.<rest>` for a path with choice c at block i; stem, head and classifier keep their
names. The supernet's BatchNorm has no affine parameters (as in the paper), so a subnet built
with `affine=False` and the path's weights and running statistics computes exactly what the
supernet computes on that path.

Pure torch: no training, data or tracking code here.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import InputError

__all__ = [
    "CHOICE_NAMES",
    "NUM_BLOCKS",
    "NUM_CHOICES",
    "PRESETS",
    "Preset",
    "ShuffleUnit",
    "SposSubnet",
    "SposSupernet",
    "block_layout",
    "build_subnet",
    "build_supernet",
    "copy_reference_kernels",
    "from_desc",
    "get_preset",
    "path_parameters",
    "preset_spec",
    "subnet_from_supernet",
    "supernet_key",
    "validate_choices",
]

LayerFactory = Callable[..., nn.Module]

NUM_BLOCKS = 20
CHOICE_NAMES: tuple[str, ...] = ("shufflenet_3x3", "shufflenet_5x5", "shufflenet_7x7", "xception_3x3")
NUM_CHOICES = len(CHOICE_NAMES)
_CHOICE_KERNELS = (3, 5, 7, 3)
_CHOICE_HELP = "0 shufflenet 3x3, 1 5x5, 2 7x7, 3 xception"
DEFAULT_DROPOUT = 0.1  # before the classifier, as in the release


# --- presets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """One instance of the space: widths, depths per stage and the input size it is meant for."""

    name: str
    input_size: int
    stem_channels: int
    stem_stride: int
    stem_pool: bool  # 3×3 stride-2 max-pool after the stem (ShuffleNetV2's; SPOS does not use it)
    stage_blocks: tuple[int, ...]
    stage_channels: tuple[int, ...]
    last_channels: int

    def __post_init__(self) -> None:
        def positive_int(field: str, v: Any) -> None:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"preset.{field}", f"must be a positive integer; got {v!r}.")

        if not isinstance(self.name, str) or not self.name:
            raise InputError("preset.name", f"must be a non-empty string; got {self.name!r}.")
        for field in ("input_size", "stem_channels", "last_channels"):
            positive_int(field, getattr(self, field))
        if self.stem_stride not in (1, 2) or isinstance(self.stem_stride, bool):
            raise InputError("preset.stem_stride", f"must be 1 or 2; got {self.stem_stride!r}.")
        if not isinstance(self.stem_pool, bool):
            raise InputError("preset.stem_pool", f"must be true or false; got {self.stem_pool!r}.")
        blocks, channels = self.stage_blocks, self.stage_channels
        if not isinstance(blocks, tuple) or not blocks:
            raise InputError("preset.stage_blocks", f"must be a tuple of block counts; got {blocks!r}.")
        for v in blocks:
            positive_int("stage_blocks", v)
        if sum(blocks) != NUM_BLOCKS:
            raise InputError("preset.stage_blocks", f"must sum to {NUM_BLOCKS} choice blocks; "
                                                    f"got {blocks!r} (sum {sum(blocks)}).")
        if not isinstance(channels, tuple) or len(channels) != len(blocks):
            raise InputError("preset.stage_channels", f"must be a tuple with one width per stage "
                                                      f"({len(blocks)}); got {channels!r}.")
        prev = self.stem_channels
        for c in channels:
            positive_int("stage_channels", c)
            # Even: stride-1 units split channels in two. Wider than the stage input: a stride-2
            # unit's projection keeps the input width and its branch adds the rest.
            if c % 2 or c <= prev:
                raise InputError("preset.stage_channels",
                                 f"must be even and increase from the stem width {self.stem_channels}; "
                                 f"got {channels!r}.")
            prev = c


PRESETS: dict[str, Preset] = {
    "paper": Preset("paper", input_size=224, stem_channels=16, stem_stride=2, stem_pool=False,
                    stage_blocks=(4, 4, 8, 4), stage_channels=(64, 160, 320, 640),
                    last_channels=1024),
    # 32 px digits: stride-1 stem so the four stride-2 stages end at 2×2; widths chosen so a
    # supernet step on a batch of 64 stays well under 0.1 s on 2 cores (benchmarks/spos_step.py).
    "small": Preset("small", input_size=32, stem_channels=16, stem_stride=1, stem_pool=False,
                    stage_blocks=(4, 4, 8, 4), stage_channels=(32, 64, 96, 128),
                    last_channels=256),
}
DEFAULT_PRESET = "small"


def get_preset(preset: str | Preset | Mapping[str, Any]) -> Preset:
    """A preset by name, a `Preset` as is, or one rebuilt from its fields (a desc's dict)."""
    if isinstance(preset, Preset):
        return preset
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise InputError("preset", f"unknown SPOS preset {preset!r}; known: {sorted(PRESETS)}.")
        return PRESETS[preset]
    if isinstance(preset, Mapping):
        names = [f.name for f in dataclasses.fields(Preset)]
        if set(preset) != set(names):
            raise InputError("preset", f"a custom preset needs exactly the fields {names}; "
                                       f"got {sorted(preset)}.")
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in preset.items()}
        return Preset(**fields)
    raise InputError("preset", f"must be a preset name ({sorted(PRESETS)}) or its fields; "
                               f"got {type(preset).__name__}.")


def preset_spec(preset: Preset) -> str | dict[str, Any]:
    """JSON form for descs and tables: the name of a built-in preset, else all its fields."""
    if PRESETS.get(preset.name) == preset:
        return preset.name
    return dataclasses.asdict(preset)


def block_layout(preset: Preset) -> list[tuple[int, int, int]]:
    """(in_channels, out_channels, stride) of each of the 20 choice blocks."""
    layout, in_ch = [], preset.stem_channels
    for n, out_ch in zip(preset.stage_blocks, preset.stage_channels):
        for j in range(n):
            layout.append((in_ch, out_ch, 2 if j == 0 else 1))
            in_ch = out_ch
    return layout


# --- choices ------------------------------------------------------------------------------


def validate_choices(choices: Any, n_blocks: int = NUM_BLOCKS, field: str = "choices") -> list[int]:
    """Check a path (one choice index per block) and return it as a list of ints."""
    expect = f"must be {n_blocks} integers in 0..{NUM_CHOICES - 1} ({_CHOICE_HELP})"
    if isinstance(choices, np.ndarray) and choices.ndim != 1:
        raise InputError(field, f"{expect}, got an array of shape {choices.shape}.")
    if isinstance(choices, (str, bytes, Mapping)) or not isinstance(choices, Iterable):
        raise InputError(field, f"{expect}, got {type(choices).__name__}.")
    values = list(choices)
    if len(values) != n_blocks:
        raise InputError(field, f"{expect}, got {len(values)}.")
    for i, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) \
                or not 0 <= v < NUM_CHOICES:
            raise InputError(field, f"{expect}, got {v!r} at position {i}.")
    return [int(v) for v in values]


# --- blocks -------------------------------------------------------------------------------


class ConvBn(nn.Module):
    """Conv (no bias: BN follows) → BN → optional ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: bool = True, norm_layer: LayerFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = norm_layer(out_ch)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def channel_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Even and odd channels: the split and the two-group channel shuffle in one step (strided
    views, so any memory format works)."""
    return x[:, 0::2], x[:, 1::2]


class ShuffleUnit(nn.Module):
    """One ShuffleNetV2 unit; `choice` (0..3) picks the branch (see the module docstring)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, choice: int,
                 norm_layer: LayerFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        self.stride, self.choice = stride, choice
        kernel, mid = _CHOICE_KERNELS[choice], out_ch // 2
        branch_in = in_ch if stride == 2 else in_ch // 2
        branch_out = out_ch - (in_ch if stride == 2 else in_ch // 2)

        def dw(ch: int, k: int, s: int = 1) -> ConvBn:  # depthwise, linear (no ReLU)
            return ConvBn(ch, ch, k, s, groups=ch, act=False, norm_layer=norm_layer)

        def pw(i: int, o: int) -> ConvBn:
            return ConvBn(i, o, 1, norm_layer=norm_layer)

        if choice == 3:  # xception: three depthwise-separable 3×3 convs
            layers = [dw(branch_in, 3, stride), pw(branch_in, mid), dw(mid, 3), pw(mid, mid),
                      dw(mid, 3), pw(mid, branch_out)]
        else:
            layers = [pw(branch_in, mid), dw(mid, kernel, stride), pw(mid, branch_out)]
        self.branch = nn.Sequential(*layers)
        self.proj = nn.Sequential(dw(in_ch, kernel, 2), pw(in_ch, in_ch)) if stride == 2 else None

    def branch_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the branch sees of the unit's input (the odd half at stride 1)."""
        return x if self.proj is not None else channel_split(x)[1]

    def join(self, x: torch.Tensor, branch_out: torch.Tensor) -> torch.Tensor:
        """The unit's output from its input and its branch's output on `branch_input(x)`."""
        side = channel_split(x)[0] if self.proj is None else self.proj(x)
        return torch.cat((side, branch_out), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.join(x, self.branch(self.branch_input(x)))


class ChoiceBlock(nn.Module):
    """All four choices of one block; `forward(x, choice)` runs one of them."""

    def __init__(self, in_ch: int, out_ch: int, stride: int,
                 norm_layer: LayerFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        self.choices = nn.ModuleList(ShuffleUnit(in_ch, out_ch, stride, c, norm_layer)
                                     for c in range(NUM_CHOICES))

    def forward(self, x: torch.Tensor, choice: int) -> torch.Tensor:
        return self.choices[choice](x)


# --- models -------------------------------------------------------------------------------


class _SposBase(nn.Module):
    """Stem, head and classifier shared by the supernet and its subnets (same names)."""

    def __init__(self, preset: Preset, num_classes: int, affine: bool, dropout: float) -> None:
        super().__init__()
        self.preset, self.num_classes, self.affine = preset, num_classes, affine
        # partial, not a lambda: whole models stay picklable.
        self.norm_layer: LayerFactory = functools.partial(nn.BatchNorm2d, affine=affine)
        self.stem = ConvBn(3, preset.stem_channels, 3, preset.stem_stride, norm_layer=self.norm_layer)
        self.stem_pool = nn.MaxPool2d(3, 2, 1) if preset.stem_pool else nn.Identity()
        self.head = ConvBn(preset.stage_channels[-1], preset.last_channels, 1, norm_layer=self.norm_layer)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(preset.last_channels, num_classes, bias=False)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init by fan-out per group: kaiming_normal_ ignores groups and would make
                # depthwise weights sqrt(channels) times too small.
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem_pool(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.flatten(self.global_pool(self.head(x))))
        return x if pre_logits else self.classifier(x)


class SposSupernet(_SposBase):
    """Every choice of every block; `forward(x, choices)` runs the one path `choices` names.

    `arch` ({"preset", "num_classes", "dropout"}) rebuilds it with `build_supernet(**arch)`.
    """

    def __init__(self, preset: Preset, num_classes: int = 10, dropout: float = DEFAULT_DROPOUT,
                 affine: bool = False) -> None:
        super().__init__(preset, num_classes, affine, dropout)
        self.blocks = nn.ModuleList(ChoiceBlock(i, o, s, self.norm_layer)
                                    for i, o, s in block_layout(preset))
        self.arch: dict[str, Any] = {"preset": preset_spec(preset), "num_classes": num_classes,
                                     "dropout": dropout}
        self._init_weights()

    def forward(self, x: torch.Tensor, choices: Sequence[int]) -> torch.Tensor:
        choices = validate_choices(choices, len(self.blocks))
        x = self.forward_stem(x)
        for block, c in zip(self.blocks, choices):
            x = block.choices[c](x)
        return self.forward_head(x)


class SposSubnet(_SposBase):
    """One path as a plain network: `forward(x)`.

    `choices` and `preset` say which path of which space; `arch` ({"choices", "preset",
    "num_classes", "affine", "dropout"}) and `desc` (arch + "type") rebuild it.
    """

    def __init__(self, choices: Sequence[int], preset: Preset, num_classes: int = 10,
                 affine: bool = True, dropout: float = DEFAULT_DROPOUT) -> None:
        super().__init__(preset, num_classes, affine, dropout)
        self.choices = list(choices)
        self.blocks = nn.Sequential(*(ShuffleUnit(i, o, s, c, self.norm_layer)
                                      for (i, o, s), c in zip(block_layout(preset), self.choices)))
        self.arch: dict[str, Any] = {"choices": list(self.choices), "preset": preset_spec(preset),
                                     "num_classes": num_classes, "affine": affine, "dropout": dropout}
        self._init_weights()

    @property
    def desc(self) -> dict[str, Any]:
        return {"type": "SposSubnet", **self.arch}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.forward_stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --- builders -----------------------------------------------------------------------------


def _check_num_classes(num_classes: Any, field: str = "num_classes") -> int:
    if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise InputError(field, f"must be a positive integer; got {num_classes!r}.")
    return int(num_classes)


def _check_dropout(dropout: Any, field: str = "dropout") -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise InputError(field, f"must be a number in [0, 1); got {dropout!r}.")
    return float(dropout)


def build_supernet(preset: str | Preset | Mapping[str, Any] = DEFAULT_PRESET, num_classes: int = 10,
                   dropout: float = DEFAULT_DROPOUT, affine: bool = False) -> SposSupernet:
    """The supernet of `preset`, randomly initialised.

    `affine=False` is the paper's supernet. `affine=True` gives every choice the BN
    parameters a stand-alone subnet has; `latency.macs_table` uses it to count subnet params.
    """
    return SposSupernet(get_preset(preset), _check_num_classes(num_classes),
                        _check_dropout(dropout), bool(affine))


def build_subnet(choices: Sequence[int], preset: str | Preset | Mapping[str, Any] = DEFAULT_PRESET,
                 num_classes: int = 10, affine: bool = True,
                 dropout: float = DEFAULT_DROPOUT) -> SposSubnet:
    """The path `choices` as a stand-alone network, randomly initialised (retrain from scratch)."""
    preset = get_preset(preset)
    return SposSubnet(validate_choices(choices, sum(preset.stage_blocks)), preset,
                      _check_num_classes(num_classes), bool(affine), _check_dropout(dropout))


def supernet_key(subnet_key: str, choices: Sequence[int]) -> str:
    """The supernet name of a subnet parameter/buffer: blocks.{i}.<rest> → blocks.{i}.choices.{c}.<rest>."""
    if not subnet_key.startswith("blocks."):
        return subnet_key
    _, i, rest = subnet_key.split(".", 2)
    return f"blocks.{i}.choices.{choices[int(i)]}.{rest}"


def subnet_from_supernet(supernet: SposSupernet, choices: Sequence[int]) -> SposSubnet:
    """The path `choices` of `supernet` as a stand-alone subnet with the path's weights and BN
    running statistics copied; its BN has no affine either, so in eval mode it computes exactly
    what `supernet(x, choices)` computes. Same device, dtype and training mode as `supernet`."""
    if not isinstance(supernet, SposSupernet):
        raise InputError("supernet", f"must be an SposSupernet; got {type(supernet).__name__}.")
    choices = validate_choices(choices, len(supernet.blocks))
    subnet = SposSubnet(choices, supernet.preset, supernet.num_classes, affine=supernet.affine,
                        dropout=supernet.dropout.p)
    param = next(supernet.parameters())
    subnet.to(device=param.device, dtype=param.dtype)
    source = supernet.state_dict()
    subnet.load_state_dict({k: source[supernet_key(k, choices)] for k in subnet.state_dict()})
    return subnet.train(supernet.training)


def path_parameters(supernet: SposSupernet, choices: Sequence[int]) -> set[str]:
    """Names of the supernet parameters one path uses: stem, each block's chosen op, head conv
    and classifier.

    Training one path per step: keep a single optimizer over all supernet parameters and clear
    gradients with `zero_grad(set_to_none=True)` (torch's default) before each step. Parameters
    off the path then have `grad is None`, and torch's SGD skips those entirely: no weight
    decay and no momentum update for them, so only these tensors change (tests/test_spos_model.py
    checks this with SGD, momentum 0.9, weight decay 4e-5 over two different paths).
    """
    choices = validate_choices(choices, len(supernet.blocks))
    chosen = tuple(f"blocks.{i}.choices.{c}." for i, c in enumerate(choices))
    return {name for name, _ in supernet.named_parameters()
            if not name.startswith("blocks.") or name.startswith(chosen)}


@torch.no_grad()
def _copy_padded(source: nn.Module, target: nn.Module) -> None:
    """Same-named tensors of two same-structured modules; a smaller depthwise kernel lands in
    the centre of a larger one, zeros around it (with padding k//2 the output is the same)."""
    theirs = dict(target.state_dict())
    for name, src in source.state_dict().items():
        dst = theirs[name]
        if src.shape == dst.shape:
            dst.copy_(src)
        else:
            dst.zero_()
            off = (dst.shape[-1] - src.shape[-1]) // 2
            dst[..., off:off + src.shape[-2], off:off + src.shape[-1]].copy_(src)


def copy_reference_kernels(supernet: SposSupernet) -> None:
    """Make choices 1 and 2 (shufflenet 5×5, 7×7) of every block compute what choice 0 (3×3)
    computes: its 1×1 convs and BN statistics as they are, its depthwise kernels zero-padded.
    Xception (choice 3) shares only the stride-2 projection's shape with choice 0; that is
    copied, its branch is left to be fitted (engine/supernet.py's warm start)."""
    for block in supernet.blocks:
        reference = block.choices[0]
        for c in (1, 2):
            _copy_padded(reference, block.choices[c])
        if reference.proj is not None:
            _copy_padded(reference.proj, block.choices[3].proj)


def from_desc(desc: Mapping[str, Any]) -> SposSubnet:
    """Rebuild from {"type": "SposSubnet", "choices", "preset", "num_classes"[, "affine",
    "dropout"]} (= subnet.desc)."""
    allowed = {"type", "choices", "preset", "num_classes", "affine", "dropout"}
    unknown = sorted(set(desc) - allowed)
    if unknown:
        raise InputError("desc", f"unknown SposSubnet keys {unknown}; allowed: "
                                 f"{sorted(allowed - {'type'})}.")
    if "choices" not in desc:
        raise InputError("desc.choices", f"is missing; an SposSubnet desc needs {NUM_BLOCKS} "
                                         f"choices in 0..{NUM_CHOICES - 1} ({_CHOICE_HELP}).")
    affine = desc.get("affine", True)
    if not isinstance(affine, bool):
        raise InputError("desc.affine", f"must be true or false; got {affine!r}.")
    preset = get_preset(desc.get("preset", DEFAULT_PRESET))
    choices = validate_choices(desc["choices"], sum(preset.stage_blocks), field="desc.choices")
    return build_subnet(choices, preset,
                        _check_num_classes(desc.get("num_classes", 10), "desc.num_classes"),
                        affine, _check_dropout(desc.get("dropout", DEFAULT_DROPOUT), "desc.dropout"))
