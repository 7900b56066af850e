"""PP-LCNet: a CPU-friendly stack of depthwise-separable blocks (PP-LCNet paper).

Reads top-down: the architecture table → blocks → the `LCNet` model → `build_lcnet`
(validates the scale, builds from `LCNET_ARCH`) → one small entry point per paper scale.

The network is pure torch and returns logits; softmax is added at export
(`deploy.onnx_export.WithSoftmax`).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, NamedTuple

import torch
from torch import nn

from core.errors import InputError

__all__ = [
    "BlockCfg",
    "LCNET_ARCH",
    "LCNET_SCALES",
    "LCNET_PAPER_TABLE",
    "LCNet",
    "build_lcnet",
    "make_divisible",
]

LayerFactory = Callable[..., nn.Module]


class BlockCfg(NamedTuple):
    """One depthwise-separable block, channels before scaling."""

    kernel: int
    in_ch: int
    out_ch: int
    stride: int
    se: bool


# The architecture as data: PaddleClas' NET_CONFIG, grouped into the stages it names
# blocks2..blocks6 (each new stage starts with the stride-2 block), so detectors can tap
# stage outputs at strides 2, 4, 8, 16 and 32.
LCNET_ARCH: dict[str, tuple[BlockCfg, ...]] = {
    "blocks2": (BlockCfg(3, 16, 32, 1, False),),
    "blocks3": (BlockCfg(3, 32, 64, 2, False), BlockCfg(3, 64, 64, 1, False)),
    "blocks4": (BlockCfg(3, 64, 128, 2, False), BlockCfg(3, 128, 128, 1, False)),
    "blocks5": (BlockCfg(3, 128, 256, 2, False),) + (BlockCfg(5, 256, 256, 1, False),) * 5,
    "blocks6": (BlockCfg(5, 256, 512, 2, True), BlockCfg(5, 512, 512, 1, True)),
}
STEM_CHANNELS = 16
HEAD_CHANNELS = 1280  # the 1x1 "class expand" conv; deliberately not scaled

# Paper (ImageNet, 224 px): scale -> (params M, MACs M, top-1 %). The paper says FLOPs; they
# are multiply-accumulates, as everywhere in this project (latency/flops.py).
LCNET_PAPER_TABLE: dict[float, tuple[float, float, float]] = {
    0.25: (1.5, 18, 51.86),
    0.35: (1.6, 29, 58.09),
    0.5: (1.9, 47, 63.14),
    0.75: (2.4, 99, 68.18),
    1.0: (3.0, 161, 71.32),
    1.5: (4.5, 342, 73.71),
    2.0: (6.5, 590, 75.18),
    2.5: (9.0, 906, 76.60),
}
LCNET_SCALES: tuple[float, ...] = tuple(LCNET_PAPER_TABLE)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round `v` to the nearest multiple of `divisor`, never dropping more than 10 %."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBnAct(nn.Module):
    """Conv (no bias: BN follows) → BN → activation."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act_layer: LayerFactory = nn.Hardswish,
        norm_layer: LayerFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False
        )
        self.bn = norm_layer(out_ch)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """Channel attention: pool → 1x1 reduce (ReLU) → 1x1 expand (hard sigmoid) → rescale."""

    def __init__(
        self,
        channels: int,
        reduction: int = 4,
        act_layer: LayerFactory = nn.ReLU,
        gate_layer: LayerFactory = nn.Hardsigmoid,
    ) -> None:
        super().__init__()
        reduced = channels // reduction  # PaddleClas divides plainly, no make_divisible
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act = act_layer()
        self.conv_expand = nn.Conv2d(reduced, channels, 1)
        self.gate = gate_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.conv_expand(self.act(self.conv_reduce(self.pool(x)))))
        return x * s


class DepthwiseSeparable(nn.Module):
    """Depthwise k×k (stride s) → optional SE → pointwise 1×1. No residual: the paper found
    shortcuts slow CPU inference without helping accuracy at these sizes."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int,
        use_se: bool,
        act_layer: LayerFactory = nn.Hardswish,
        norm_layer: LayerFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.dw = ConvBnAct(in_ch, in_ch, kernel, stride, groups=in_ch,
                            act_layer=act_layer, norm_layer=norm_layer)
        self.se = SqueezeExcite(in_ch) if use_se else nn.Identity()
        self.pw = ConvBnAct(in_ch, out_ch, 1, act_layer=act_layer, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.se(self.dw(x)))


class LCNet(nn.Module):
    """PP-LCNet classifier.

    `features` (stem + stages) maps images to the last feature map (stride 32);
    `forward_head` pools it and returns logits (or the 1280-d embedding if `pre_logits`).
    """

    def __init__(
        self,
        arch: dict[str, tuple[BlockCfg, ...]],
        scale: float = 1.0,
        num_classes: int = 1000,
        dropout: float = 0.2,
        head_channels: int = HEAD_CHANNELS,
        act_layer: LayerFactory = nn.Hardswish,
        norm_layer: LayerFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.num_classes = num_classes

        def ch(c: int) -> int:
            return make_divisible(c * scale)

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["stem"] = ConvBnAct(3, ch(STEM_CHANNELS), 3, stride=2,
                                   act_layer=act_layer, norm_layer=norm_layer)
        self.stage_channels: list[int] = []  # output channels per stage, for feature taps
        for name, blocks in arch.items():
            layers[name] = nn.Sequential(*(
                DepthwiseSeparable(ch(b.in_ch), ch(b.out_ch), b.kernel, b.stride, b.se,
                                   act_layer=act_layer, norm_layer=norm_layer)
                for b in blocks
            ))
            self.stage_channels.append(ch(blocks[-1].out_ch))
        self.features = nn.Sequential(layers)
        self.num_features = self.stage_channels[-1]

        # Head: pool first, so the wide 1280 conv runs on a 1x1 map and costs almost nothing.
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_head = nn.Conv2d(self.num_features, head_channels, 1, bias=False)
        self.act_head = act_layer()
        self.dropout = nn.Dropout(dropout)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(head_channels, num_classes)
        self.head_channels = head_channels

        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init by fan-out per group: torch's kaiming_normal_ ignores groups and
                # would make depthwise weights sqrt(channels) times too small.
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.act_head(self.conv_head(self.global_pool(x))))
        x = self.flatten(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.features(x))


def _check_scale(scale: float) -> float:
    # Accept 1 for 1.0 (and float noise), but only the scales the paper reports.
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        for s in LCNET_SCALES:
            if abs(scale - s) < 1e-9:
                return s
    allowed = ", ".join(str(s) for s in LCNET_SCALES)
    raise InputError("scale", f"PP-LCNet scale must be one of {allowed}; got {scale!r}.")


def build_lcnet(scale: float, num_classes: int = 1000, dropout: float = 0.2) -> nn.Module:
    """PP-LCNet at one of `LCNET_SCALES`, randomly initialised, returning logits."""
    scale = _check_scale(scale)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise InputError("num_classes", f"must be a positive integer; got {num_classes!r}.")
    if not 0.0 <= dropout < 1.0:
        raise InputError("dropout", f"must be in [0, 1); got {dropout!r}.")
    return LCNet(LCNET_ARCH, scale=scale, num_classes=num_classes, dropout=dropout)


def lcnet_x0_25(**kwargs) -> nn.Module:
    return build_lcnet(0.25, **kwargs)


def lcnet_x0_35(**kwargs) -> nn.Module:
    return build_lcnet(0.35, **kwargs)


def lcnet_x0_5(**kwargs) -> nn.Module:
    return build_lcnet(0.5, **kwargs)


def lcnet_x0_75(**kwargs) -> nn.Module:
    return build_lcnet(0.75, **kwargs)


def lcnet_x1_0(**kwargs) -> nn.Module:
    return build_lcnet(1.0, **kwargs)


def lcnet_x1_5(**kwargs) -> nn.Module:
    return build_lcnet(1.5, **kwargs)


def lcnet_x2_0(**kwargs) -> nn.Module:
    return build_lcnet(2.0, **kwargs)


def lcnet_x2_5(**kwargs) -> nn.Module:
    return build_lcnet(2.5, **kwargs)
