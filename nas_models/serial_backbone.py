"""SP-NAS serial backbone: a ResNet-style network whose shape is a short code string.

Code grammar (Vega SP-NAS's backbone encoding): digits are blocks, each digit is that block's stride ('1' keeps
the resolution, '2' halves it), '-' separates stages. The width starts at `base_width` and
doubles at each new stage; the block type is a separate argument. So ResNet-18 is
'11-21-21-21' with BasicBlock and ResNet-50 is '111-2111-211111-211' with Bottleneck.

Reads top-down: code grammar (`validate_code`, `encode_code`) → blocks → `SerialBackbone`.
Parameter names are `stem.conv`, `stem.bn`, `stages.{s}.{b}.conv1/bn1/...`,
`stages.{s}.{b}.downsample.{0,1}`: a block keeps its name when a mutation inserts blocks
after it or adds a stage, so weights inherit by name + shape (`nas_models.inherit`), and
torchvision's `layer{s+1}.{b}.*` maps onto `stages.{s}.{b}.*` one to one (`nas_models.convert`).
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Callable

import torch
from torch import nn

from core.errors import InputError

__all__ = [
    "BLOCK_TYPES",
    "MAX_BLOCKS",
    "BasicBlock",
    "Bottleneck",
    "SerialBackbone",
    "encode_code",
    "stage_channels",
    "stage_strides",
    "validate_block",
    "validate_code",
]

LayerFactory = Callable[..., nn.Module]

MAX_BLOCKS = 60  # SP-NAS search space: 8-60 blocks (we accept fewer for small demos)
STEM_STRIDE = 4  # 7x7 s2 conv + 3x3 s2 max-pool, as torchvision's ResNet


# --- the code grammar -------------------------------------------------------------------


def validate_code(code: str, max_stages: int = 6, field: str = "backbone_code") -> list[list[int]]:
    """Decode a serial code into per-stage lists of block strides, or raise InputError."""
    allowed = (
        "digits 1 (keep) or 2 (halve) per block, stages separated by single '-', "
        "e.g. '11-21-21-21'"
    )
    if not isinstance(code, str):
        raise InputError(field, f"must be a string of {allowed}, got {type(code).__name__}.")
    if not code:
        raise InputError(field, f"is empty; expected {allowed}.")
    bad = sorted(set(code) - set("12-"))
    if bad:
        raise InputError(field, f"{code!r} contains {''.join(bad)!r}; expected {allowed}.")
    parts = code.split("-")
    if any(not p for p in parts):
        raise InputError(
            field,
            f"{code!r} has an empty stage (leading, trailing or double '-'); expected {allowed}.",
        )
    if len(parts) > max_stages:
        raise InputError(
            field, f"{code!r} has {len(parts)} stages; at most {max_stages} are allowed."
        )
    n_blocks = sum(len(p) for p in parts)
    if n_blocks > MAX_BLOCKS:
        raise InputError(
            field, f"{code!r} has {n_blocks} blocks; at most {MAX_BLOCKS} are allowed."
        )
    return [[int(c) for c in p] for p in parts]


def encode_code(stages: list[list[int]]) -> str:
    """Inverse of `validate_code`: [[1, 1], [2, 1]] -> '11-21'."""
    return "-".join("".join(str(s) for s in stage) for stage in stages)


def stage_strides(code: str) -> list[int]:
    """Output stride (w.r.t. the input image) of every stage's feature map."""
    strides, total = [], STEM_STRIDE
    for stage in validate_code(code):
        for s in stage:
            total *= s
        strides.append(total)
    return strides


# --- blocks -------------------------------------------------------------------------------


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs + identity (torchvision names, so ResNet-18/34 weights map directly)."""

    expansion = 1

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, planes, stride)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.act = act_layer(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce → 3x3 (stride here, as torchvision "ResNet v1.5") → 1x1 expand ×4.

    `groups`/`width_per_group` turn it into the ResNeXt block (32x4d: groups=32, 4).
    """

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        # torchvision's formula; max(1, ...) keeps tiny demo widths from collapsing to 0.
        width = max(1, planes * width_per_group // 64) * groups
        self.conv1 = conv1x1(in_ch, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.act = act_layer(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + shortcut)


# Block type name -> constructor taking (in_ch, planes, stride, downsample, norm, act).
BLOCK_TYPES: dict[str, Callable[..., nn.Module]] = {
    "BasicBlock": BasicBlock,
    "Bottleneck": Bottleneck,
    "ResNeXt": partial(Bottleneck, groups=32, width_per_group=4),
}


def validate_block(block: str, field: str = "block") -> str:
    """Canonical block name (case-insensitive match), or InputError."""
    if isinstance(block, str):
        for name in BLOCK_TYPES:
            if name.lower() == block.lower():
                return name
    raise InputError(field, f"{block!r} is not a block type; allowed: {', '.join(BLOCK_TYPES)}.")


def _expansion(block: str) -> int:
    fn = BLOCK_TYPES[block]
    return (fn.func if isinstance(fn, partial) else fn).expansion


def stage_channels(code: str, block: str = "BasicBlock", base_width: int = 64) -> list[int]:
    """Output channels of every stage, without building the network."""
    n = len(validate_code(code))
    return [base_width * 2**s * _expansion(validate_block(block)) for s in range(n)]


# --- model --------------------------------------------------------------------------------


class SerialBackbone(nn.Module):
    """ResNet-like feature extractor built from a serial code.

    forward(x) returns an OrderedDict {"0": stage-0 features, "1": ...}; `out_channels` and
    `strides` give each stage's channels and output stride. No classifier head: see
    `nas_models.detector.BackboneClassifier`.
    """

    def __init__(
        self,
        code: str,
        block: str = "BasicBlock",
        base_width: int = 64,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        frozen_stem: bool = False,
        act_layer: LayerFactory = nn.ReLU,
        max_stages: int = 6,
    ) -> None:
        super().__init__()
        layout = validate_code(code, max_stages)
        self.block = validate_block(block)
        if not isinstance(base_width, int) or isinstance(base_width, bool) or base_width < 1:
            raise InputError("base_width", f"must be a positive integer, got {base_width!r}.")
        self.code = code
        self.base_width = base_width
        block_fn = BLOCK_TYPES[self.block]
        expansion = _expansion(self.block)

        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False),
                bn=norm_layer(base_width),
                act=act_layer(inplace=True),
                pool=nn.MaxPool2d(3, stride=2, padding=1),
            )
        )
        in_ch = base_width
        self.stages = nn.ModuleList()
        self.out_channels: list[int] = []
        self.strides: list[int] = []
        total_stride = STEM_STRIDE
        for s, strides in enumerate(layout):
            planes = base_width * 2**s
            out_ch = planes * expansion
            blocks = []
            for stride in strides:
                downsample = None
                if stride != 1 or in_ch != out_ch:
                    downsample = nn.Sequential(conv1x1(in_ch, out_ch, stride), norm_layer(out_ch))
                blocks.append(block_fn(in_ch, planes, stride, downsample, norm_layer, act_layer))
                in_ch = out_ch
                total_stride *= stride
            self.stages.append(nn.Sequential(*blocks))
            self.out_channels.append(out_ch)
            self.strides.append(total_stride)

        self._init_weights()
        if frozen_stem:
            for p in self.stem.parameters():
                p.requires_grad_(False)

    def _init_weights(self) -> None:
        # torchvision's ResNet init, so from-scratch training behaves like the calibration run.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.stem(x)
        features: OrderedDict[str, torch.Tensor] = OrderedDict()
        for s, stage in enumerate(self.stages):
            x = stage(x)
            features[str(s)] = x
        return features
