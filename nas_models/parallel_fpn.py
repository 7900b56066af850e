"""SP-NAS parallel level: extra sub-networks per stage, fused before an FPN.

The neck code is a list over the serial backbone's stages, e.g. [0, 1, 0, 2]: stage s gets
K_s extra residual branches (a BasicBlock-style pair of 3x3 convs at that stage's channels
and resolution). Each branch reads the stage's feature and its output is summed into that
feature before the FPN; the serial path itself is unchanged, so serial weights stay valid.
The last BN of every branch starts at zero, so a freshly added branch leaves the network's
output exactly as it was and training grows it from there.

Parameter names: `body.*` (the SerialBackbone), `branches.{s}.{k}.conv1/bn1/conv2/bn2`,
`fpn.*` (torchvision's FeaturePyramidNetwork, so FasterRCNN-FPN checkpoints map onto it).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from core.errors import InputError
from nas_models.serial_backbone import SerialBackbone, conv3x3

__all__ = [
    "MAX_BRANCHES_PER_STAGE",
    "ParallelBackbone",
    "ParallelBranch",
    "validate_neck_code",
]

LayerFactory = Callable[..., nn.Module]

MAX_BRANCHES_PER_STAGE = 8  # a sanity bound; Vega's demo space uses 0-3


def validate_neck_code(
    code: Sequence[int] | None,
    num_stages: int,
    max_per_stage: int = MAX_BRANCHES_PER_STAGE,
    field: str = "neck_code",
) -> list[int]:
    """A list of K per stage (None → all zeros), or InputError."""
    if code is None:
        return [0] * num_stages
    allowed = f"a list of {num_stages} integers in 0..{max_per_stage}, one per backbone stage"
    if isinstance(code, (str, bytes)) or not isinstance(code, Sequence):
        raise InputError(field, f"must be {allowed}, got {code!r}.")
    if len(code) != num_stages:
        raise InputError(field, f"{list(code)!r} has {len(code)} entries; expected {allowed}.")
    for k in code:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= max_per_stage:
            raise InputError(field, f"{list(code)!r} contains {k!r}; expected {allowed}.")
    return [int(k) for k in code]


class ParallelBranch(nn.Module):
    """conv3x3-BN-act-conv3x3-BN at constant channels/resolution; last BN zero-initialised."""

    def __init__(
        self,
        channels: int,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        act_layer: LayerFactory = nn.ReLU,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.bn1 = norm_layer(channels)
        self.act = act_layer(inplace=True)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = norm_layer(channels)
        for m in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if getattr(self.bn2, "weight", None) is not None:
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


class ParallelBackbone(nn.Module):
    """Serial body → per-stage parallel branches (summed in) → FPN with a 'pool' level.

    forward(images) returns an OrderedDict {"0", ..., str(n-1), "pool"} of `out_channels`
    (= fpn_channels) maps, the interface torchvision's FasterRCNN expects of a backbone.
    """

    def __init__(
        self,
        serial: SerialBackbone,
        neck_code: Sequence[int] | None = None,
        fpn_channels: int = 64,
        norm_layer: LayerFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if isinstance(fpn_channels, bool) or not isinstance(fpn_channels, int) or fpn_channels < 1:
            raise InputError("fpn_channels", f"must be a positive integer, got {fpn_channels!r}.")
        self.body = serial
        self.neck_code = validate_neck_code(neck_code, serial.num_stages)
        self.branches = nn.ModuleList(
            nn.ModuleList(ParallelBranch(ch, norm_layer) for _ in range(k))
            for ch, k in zip(serial.out_channels, self.neck_code)
        )
        self.fpn = FeaturePyramidNetwork(
            serial.out_channels, fpn_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = fpn_channels

    @property
    def feature_names(self) -> list[str]:
        """Names of the stage levels (what RoI pooling reads; 'pool' is RPN-only)."""
        return [str(s) for s in range(self.body.num_stages)]

    def fuse(self, features: OrderedDict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        """Add every branch's output to its stage's feature."""
        fused: OrderedDict[str, torch.Tensor] = OrderedDict()
        for (name, feat), branches in zip(features.items(), self.branches):
            out = feat
            for branch in branches:
                out = out + branch(feat)
            fused[name] = out
        return fused

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.fuse(self.body(x)))
