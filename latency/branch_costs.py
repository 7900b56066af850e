"""What one extra parallel branch costs per stage of an SP-NAS serial backbone, measured on a real
forward; the parallel search samples branch counts inversely proportional to it."""
from __future__ import annotations

import torch

from core.errors import InputError
from latency.flops import count_macs_params
from nas_models.parallel_fpn import ParallelBranch
from nas_models.serial_backbone import SerialBackbone


def extra_macs_per_stage(
    backbone_code: str, block: str = "BasicBlock", image_size: int = 96, base_width: int = 64
) -> list[float]:
    """MACs that ONE extra branch adds at each stage, measured on a real forward.

    The serial body runs once on a zero image to get each stage's feature shape; then one
    ParallelBranch per stage is counted with `count_macs_params` on a tensor of that shape.
    The parallel search samples K with probability inversely proportional to these.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise InputError("image_size", f"must be a positive integer, got {image_size!r}.")
    serial = SerialBackbone(backbone_code, block, base_width=base_width).eval()
    with torch.no_grad():
        feats = serial(torch.zeros(1, 3, image_size, image_size))
    shapes = [tuple(f.shape) for f in feats.values()]
    macs = []
    for shape in shapes:
        branch_macs, _ = count_macs_params(ParallelBranch(shape[1]), shape)
        macs.append(float(branch_macs))
    return macs
