"""SP-NAS detector: torchvision FasterRCNN over SerialBackbone → parallel branches → FPN.

Sized for 2 CPU cores by default (measured here: FPN 64 channels, 96-px images, RPN
pre/post-NMS 300/100, 64 RoIs per image ≈ 0.5 s per batch-8 step with a ResNet-18 body).
Every backbone stage feeds the FPN (codes have 1-6 stages); the FPN adds a 'pool' level,
and the anchor generator has one size per level, the pool level included.

Parameter names: `backbone.body.*` (SerialBackbone), `backbone.branches.*`,
`backbone.fpn.*`, then torchvision's own `rpn.*` and `roi_heads.*` — the same names as
torchvision's fasterrcnn_resnet50_fpn wherever the structure matches (see nas_models.convert).

Also here, for the reignite step: `BackboneClassifier` (backbone + global pool + linear) over
the detector's own backbone module (`serial_body`), so training it trains the detector.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from core.errors import InputError
from nas_models.parallel_fpn import ParallelBackbone
from nas_models.serial_backbone import SerialBackbone

__all__ = [
    "ASPECT_RATIOS",
    "BackboneClassifier",
    "anchor_sizes",
    "build_detector",
    "serial_body",
]

ASPECT_RATIOS = (0.5, 1.0, 2.0)
ROI_OUTPUT_SIZE = 7


def _check_int(field: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(field, f"must be an integer >= {minimum}, got {value!r}.")
    return value


def anchor_sizes(level_strides: Sequence[int], image_size: int) -> tuple[tuple[int], ...]:
    """One anchor size per FPN level (pool level included), from the levels' strides.

    size = k * max(stride, 4 * 2**level): at least k strides wide (so anchors tile the
    map densely enough) and at least doubling per level (so codes whose stages keep the
    resolution still span object scales). k grows gently with the image: 4 at 96 px gives
    16, 32, 64, 128, 256 for ResNet-18 (demo objects of 16-40 px land on the first two
    levels); k reaches 8 at 800 px, which is torchvision's 32..512 default.
    """
    k = 4.0 * (image_size / 96.0) ** (1.0 / 3.0)
    return tuple(
        (int(round(k * max(stride, 4 * 2**level))),) for level, stride in enumerate(level_strides)
    )


def build_detector(
    backbone_code: str,
    block: str = "BasicBlock",
    neck_code: list[int] | None = None,
    num_classes: int = 11,
    fpn_channels: int = 64,
    image_size: int = 96,
    rpn_pre_nms_top_n: int = 300,
    rpn_post_nms_top_n: int = 100,
    box_batch_size_per_image: int = 64,
    box_detections_per_img: int = 20,
    representation_size: int = 1024,
    base_width: int = 64,
) -> FasterRCNN:
    """A FasterRCNN whose backbone is described by (backbone_code, block, neck_code).

    num_classes counts the background class (11 = 10 digits + background).
    `representation_size` is the box head's MLP width: torchvision's 1024, as in the
    calibration run (256 was not measurably faster at 64 FPN channels); with
    fpn_channels=256 the heads take fasterrcnn_resnet50_fpn weights unchanged.
    The build arguments are kept on the model as `detector.arch` (a JSON-able dict).
    """
    _check_int("num_classes", num_classes, 2)
    _check_int("image_size", image_size, 32)
    for field, value in (
        ("rpn_pre_nms_top_n", rpn_pre_nms_top_n),
        ("rpn_post_nms_top_n", rpn_post_nms_top_n),
        ("box_batch_size_per_image", box_batch_size_per_image),
        ("box_detections_per_img", box_detections_per_img),
        ("representation_size", representation_size),
    ):
        _check_int(field, value, 1)

    serial = SerialBackbone(backbone_code, block, base_width=base_width)
    backbone = ParallelBackbone(serial, neck_code, fpn_channels)
    level_strides = serial.strides + [serial.strides[-1] * 2]  # LastLevelMaxPool halves
    anchors = AnchorGenerator(
        sizes=anchor_sizes(level_strides, image_size),
        aspect_ratios=(ASPECT_RATIOS,) * len(level_strides),
    )
    roi_pool = MultiScaleRoIAlign(
        featmap_names=backbone.feature_names, output_size=ROI_OUTPUT_SIZE, sampling_ratio=2
    )
    detector = FasterRCNN(
        backbone,
        num_classes=None,  # given through box_predictor
        min_size=image_size,
        max_size=image_size,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(fpn_channels * ROI_OUTPUT_SIZE**2, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes),
        box_batch_size_per_image=box_batch_size_per_image,
        box_detections_per_img=box_detections_per_img,
    )
    detector.arch = {
        "backbone_code": serial.code,
        "block": serial.block,
        "neck_code": list(backbone.neck_code),
        "num_classes": num_classes,
        "fpn_channels": fpn_channels,
        "image_size": image_size,
        "rpn_pre_nms_top_n": rpn_pre_nms_top_n,
        "rpn_post_nms_top_n": rpn_post_nms_top_n,
        "box_batch_size_per_image": box_batch_size_per_image,
        "box_detections_per_img": box_detections_per_img,
        "representation_size": representation_size,
        "base_width": base_width,
    }
    return detector


# --- reignite: backbone as a classifier and back ------------------------------------------


class BackboneClassifier(nn.Module):
    """SerialBackbone → global average pool of the last stage → linear (backbone.*, fc.*)."""

    def __init__(self, backbone: SerialBackbone, num_classes: int) -> None:
        super().__init__()
        _check_int("num_classes", num_classes, 2)
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(backbone.out_channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = next(reversed(self.backbone(x).values()))
        return self.fc(torch.flatten(self.pool(last), 1))


def serial_body(model: nn.Module) -> SerialBackbone:
    """The SerialBackbone inside a detector, a classifier, or the backbone itself."""
    if isinstance(model, SerialBackbone):
        return model
    for path in ("backbone.body", "backbone"):
        sub = model
        for attr in path.split("."):
            sub = getattr(sub, attr, None)
        if isinstance(sub, SerialBackbone):
            return sub
    raise InputError(
        "model",
        f"{type(model).__name__} has no SerialBackbone; expected a detector from "
        "build_detector, a BackboneClassifier or a SerialBackbone.",
    )
