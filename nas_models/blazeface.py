"""BlazeFace and its SANAS search space (PaddleSlim's BlazeFace-NAS, seed 000).

The space is 9 integer tokens; `filters_of` turns them into BlazeNet's `blaze_filters` /
`double_blaze_filters` / `use_5x5kernel` by the seed's rules (three single blaze blocks, four
double blaze blocks). `build_from_tokens` builds the detector on torchvision's SSD machinery:

    conv1 3x3/2 → 3 single blaze blocks (stride 4) → 4 double blaze blocks
    → feature maps at strides 8 and 16 → SSD heads (3x3 convs) over square priors

A single blaze block is depthwise conv + pointwise conv; a double blaze block adds a second
depthwise + pointwise pair with a ReLU in between (a bottleneck through `mid` channels).
Stride-2 blocks take their residual through a 2x2 max pool and a 1x1 conv to the new width.
With `use_5x5kernel` false a depthwise 5x5 becomes two stacked depthwise 3x3 (the same 5x5
receptive field); the seed's latency table lists both of them (stride 1 then the block's
stride) because it only measured 3x3 kernels.

Defaults follow the BlazeFace paper at its own 128-px input: 2 priors per cell on the 16x16
map, 6 on the 8x8 map (896 priors), 2 classes (background, face), softmax scores. The model
is a `torchvision.models.detection.SSD`: `model(images, targets)` returns the loss dict in
train mode, `model(images)` a list of {boxes, scores, labels} in eval mode.

`ops_of_model` / `ops_of_tokens` list the primitive ops a forward pass really runs (found with
forward hooks), in the fields of PaddleSlim's latency table (latency/table.py's `FIELDS`), so a latency table
can be built and looked up for any candidate. `stem_ops` / `block_ops` / `head_ops` /
`softmax_op` list the same ops part by part with the same hooks, so `latency.measure.space_ops`
can enumerate the whole space without building every network.
"""
from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Sequence

import torch
from torch import nn

from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSDHead

from core.errors import InputError

__all__ = [
    "BLAZE_FILTER_NUM1",
    "BLAZE_FILTER_NUM2",
    "DEFAULT_IMAGE_SIZE",
    "DOUBLE_FILTER_NUM",
    "INIT_TOKENS",
    "KNOBS",
    "LATENCY_RANGE_TABLE",
    "MID_FILTER_NUM",
    "RANGE_TABLE",
    "USE_5X5KERNEL",
    "BlazeBlock",
    "BlazeNet",
    "block_ops",
    "build_blazeface",
    "build_from_tokens",
    "describe",
    "filters_of",
    "head_ops",
    "init_tokens",
    "ops_of_model",
    "ops_of_tokens",
    "range_table",
    "softmax_op",
    "stem_ops",
    "validate_tokens",
]

# --- the search space (seed 000, PaddleSlim BlazeFaceNasSpace) -------------------------------

BLAZE_FILTER_NUM1 = (4, 8, 12, 16, 20, 24, 32)               # first (smallest) blocks
BLAZE_FILTER_NUM2 = (8, 12, 16, 20, 24, 32, 40, 48, 64)      # single blaze blocks
MID_FILTER_NUM = (8, 12, 16, 20, 24, 32)                     # double blocks' bottleneck
DOUBLE_FILTER_NUM = (8, 12, 16, 24, 32, 40, 48, 64, 72, 80, 88, 96)  # double blaze blocks
USE_5X5KERNEL = (0, 1)
RANGE_TABLE = (7, 9, 12, 12, 6, 6, 6, 6, 2)
# Latency mode: the seed's table only holds 3x3 kernels, so token 8 (use_5x5kernel) is fixed at 0.
LATENCY_RANGE_TABLE = (7, 9, 12, 12, 6, 6, 6, 6, 1)
INIT_TOKENS = (2, 1, 3, 8, 2, 1, 2, 1, 1)

DEFAULT_IMAGE_SIZE = 128          # BlazeFace's own input size; the embedded face set uses it
FEATURE_STRIDES = (8, 16)
# Prior (anchor) side lengths in px at 128-px input, per feature map; scaled with image_size.
BLAZEFACE_ANCHOR_SIZES = ((16.0, 24.0), (32.0, 48.0, 64.0, 80.0, 96.0, 128.0))


def range_table(latency_mode: bool = False) -> list[int]:
    """Exclusive upper bound of each token (lower bounds are 0)."""
    return list(LATENCY_RANGE_TABLE if latency_mode else RANGE_TABLE)


def init_tokens(latency_mode: bool = False) -> list[int]:
    """The seed's initial tokens; in latency mode the kernel token is 0 (3x3), the only value allowed."""
    tokens = list(INIT_TOKENS)
    if latency_mode:
        tokens[8] = 0
    return tokens


def validate_tokens(tokens: Any, latency_mode: bool = False) -> list[int]:
    """`tokens` as a list of 9 ints, or one InputError on field "tokens" naming the allowed ranges."""
    ranges = range_table(latency_mode)
    allowed = (f"must be {len(ranges)} integers with 0 <= tokens[i] < {ranges}[i]"
               + (" (latency mode: the last token is 0, 3x3 kernels only)" if latency_mode else ""))
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence) and not hasattr(tokens, "tolist"):
        raise InputError("tokens", f"{allowed}; got {tokens!r}.")
    values = list(tokens.tolist() if hasattr(tokens, "tolist") else tokens)
    if len(values) != len(ranges):
        raise InputError("tokens", f"{allowed}; got {len(values)} values {values!r}.")
    for i, (value, bound) in enumerate(zip(values, ranges)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < bound:
            raise InputError("tokens", f"{allowed}; tokens[{i}] is {value!r}.")
    return [int(v) for v in values]


def filters_of(tokens: Sequence[int], latency_mode: bool = False) -> dict[str, Any]:
    """The seed's token rules: BlazeNet's blaze_filters, double_blaze_filters and use_5x5kernel.

    blaze_filters entries are [dw channels, out channels(, stride)]; double_blaze_filters
    entries are [dw channels, mid channels, out channels(, stride)].
    """
    t = validate_tokens(tokens, latency_mode)
    n1 = BLAZE_FILTER_NUM1[t[0]]
    n2 = BLAZE_FILTER_NUM2[t[1]]
    d2, d3 = DOUBLE_FILTER_NUM[t[2]], DOUBLE_FILTER_NUM[t[3]]
    m4, m5, m6, m7 = (MID_FILTER_NUM[t[i]] for i in (4, 5, 6, 7))
    return {
        "blaze_filters": [[n1, n1], [n1, n2, 2], [n2, n2]],
        "double_blaze_filters": [[n2, m4, d2, 2], [d2, m5, d2], [d2, m6, d3, 2], [d3, m7, d3]],
        "use_5x5kernel": bool(USE_5X5KERNEL[t[8]]),
    }


def describe(tokens: Sequence[int]) -> str:
    """The structure block the seed prints for a found architecture (same markers and keys)."""
    f = filters_of(tokens)
    return "\n".join([
        "------------->>> BlazeFace-NAS structure start: <<<----------------",
        "BlazeNet:",
        f"  blaze_filters: {f['blaze_filters']}",
        f"  double_blaze_filters: {f['double_blaze_filters']}",
        f"  use_5x5kernel: {f['use_5x5kernel']}",
        "  with_extra_blocks: true",
        "  lite_edition: false",
        "-------------->>> BlazeFace-NAS structure end! <<<-----------------",
    ])


# --- blocks ----------------------------------------------------------------------------------

class ConvBN(nn.Sequential):
    """conv (no bias: BN follows) → BN (→ ReLU)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 relu: bool = False) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Add(nn.Module):
    """Element-wise sum as a module, so forward hooks see the residual adds (latency ops)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


def _depthwise(channels: int, stride: int, use_5x5: bool) -> nn.Sequential:
    """A 5x5 depthwise conv, or two 3x3 ones (stride on the second) covering the same 5x5 field."""
    if use_5x5:
        return nn.Sequential(ConvBN(channels, channels, 5, stride, groups=channels))
    return nn.Sequential(ConvBN(channels, channels, 3, 1, groups=channels),
                         ConvBN(channels, channels, 3, stride, groups=channels))


# A layer spec names one BlazeNet layer: ("depthwise", channels, stride, use_5x5),
# ("conv_bn", c_in, c_out, kernel, stride, relu), ("max_pool",), ("add",) or ("relu",).
# The network is built from specs (`_layer`) and the space's op list is read off the same specs
# (`_layer_ops`), so there is one description of each block's layers.
LayerSpec = tuple[Any, ...]


def _layer(spec: LayerSpec) -> nn.Module:
    kind, *args = spec
    if kind == "depthwise":
        return _depthwise(*args)
    if kind == "conv_bn":
        c_in, c_out, kernel, stride, relu = args
        return ConvBN(c_in, c_out, kernel, stride, relu=relu)
    if kind == "max_pool":
        return nn.MaxPool2d(2, 2, ceil_mode=True)
    if kind == "add":
        return Add()
    if kind == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"unknown BlazeNet layer spec {spec!r}")


def _stem_spec(width: int) -> LayerSpec:
    """conv1: 3x3/2 conv → BN → ReLU from the RGB image to `width` channels."""
    return ("conv_bn", 3, width, 3, 2, True)


def _block_plan(c_in: int, c_out: int, double_out: int | None, stride: int,
                use_5x5: bool) -> tuple[list[LayerSpec], list[LayerSpec]]:
    """A blaze block's (branch, shortcut) layers; an empty shortcut is the identity."""
    out = c_out if double_out is None else double_out
    branch = [("depthwise", c_in, stride, use_5x5), ("conv_bn", c_in, c_out, 1, 1, double_out is not None)]
    if double_out is not None:
        branch += [("depthwise", c_out, 1, use_5x5), ("conv_bn", c_out, double_out, 1, 1, False)]
    # Stride 2: the residual is pooled to the new resolution and projected to the new width.
    shortcut = [] if stride == 1 else [("max_pool",), ("conv_bn", c_in, out, 1, 1, False)]
    return branch, shortcut


class BlazeBlock(nn.Module):
    """Single (`double_out` None) or double blaze block with a residual connection.

    single: dw(c_in) → pw(c_in→c_out)                          + shortcut → ReLU
    double: dw(c_in) → pw(c_in→c_mid) → ReLU → dw → pw(→double_out) + shortcut → ReLU
    """

    def __init__(self, c_in: int, c_out: int, double_out: int | None = None, stride: int = 1,
                 use_5x5: bool = True) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"blaze block stride must be 1 or 2, got {stride}")
        out = c_out if double_out is None else double_out
        if stride == 1 and out != c_in:
            raise ValueError(f"a stride-1 blaze block keeps its width ({c_in} in, {out} out)")
        branch, shortcut = _block_plan(c_in, c_out, double_out, stride, use_5x5)
        self.branch = nn.Sequential(*map(_layer, branch))
        self.shortcut = nn.Sequential(*map(_layer, shortcut)) if shortcut else nn.Identity()
        self.add = _layer(("add",))
        self.act = _layer(("relu",))
        self.out_channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # `block_ops` lists the ops in this order: branch, shortcut, add, act.
        y = self.branch(x)
        return self.act(self.add(self.shortcut(x), y))


class BlazeNet(nn.Module):
    """BlazeNet backbone from (blaze_filters, double_blaze_filters, use_5x5kernel).

    Returns an OrderedDict {"0": stride-8 map, "1": stride-16 map}: the output of the last
    block before each stride-2 double block's successor resolution, as SSD expects.
    """

    def __init__(self, blaze_filters: list[list[int]], double_blaze_filters: list[list[int]],
                 use_5x5kernel: bool = True) -> None:
        super().__init__()
        width = blaze_filters[0][0]
        self.conv1 = _layer(_stem_spec(width))
        blocks: list[tuple[str, BlazeBlock]] = []
        for k, spec in enumerate(blaze_filters):
            c_dw, c_out, *stride = spec
            _check_width(f"blaze_filters[{k}]", c_dw, width)
            blocks.append((f"blaze_{k}", BlazeBlock(c_dw, c_out, None, *stride, use_5x5=use_5x5kernel)))
            width = c_out
        for k, spec in enumerate(double_blaze_filters):
            c_dw, c_mid, c_out, *stride = spec
            _check_width(f"double_blaze_filters[{k}]", c_dw, width)
            blocks.append((f"double_blaze_{k}",
                           BlazeBlock(c_dw, c_mid, c_out, *stride, use_5x5=use_5x5kernel)))
            width = c_out
        self.blocks = nn.Sequential(OrderedDict(blocks))
        strides = [2]
        for _, block in blocks:
            strides.append(strides[-1] * (2 if not isinstance(block.shortcut, nn.Identity) else 1))
        # Last block at each of the two deepest resolutions (strides 8 and 16 for the seed's space).
        deepest = sorted(set(strides[1:]))[-2:]
        self.feature_indices = [max(i for i, s in enumerate(strides[1:]) if s == target) for target in deepest]
        self.feature_strides = deepest
        self.out_channels = [blocks[i][1].out_channels for i in self.feature_indices]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        x = self.conv1(x)
        features: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.feature_indices:
                features[str(len(features))] = x
        return features


def _check_width(field: str, c_dw: int, width: int) -> None:
    if c_dw != width:
        raise InputError(field, f"depthwise width {c_dw} must equal the incoming width {width}.")


class SquarePriors(DefaultBoxGenerator):
    """BlazeFace's priors: square boxes of given pixel sides per map, centred on each cell.

    torchvision's DefaultBoxGenerator tiles and converts the boxes; only the (w, h) pairs
    differ from SSD's (scales and aspect ratios), so that is all this overrides.
    """

    def __init__(self, sizes: Sequence[Sequence[float]], image_size: int, steps: Sequence[int]) -> None:
        self.sizes = [tuple(float(s) for s in level) for level in sizes]
        self.image_size = image_size
        super().__init__(aspect_ratios=[[] for _ in self.sizes], scales=[1.0] * (len(self.sizes) + 1),
                         steps=list(steps), clip=False)

    def _generate_wh_pairs(self, num_outputs: int, dtype: torch.dtype = torch.float32,
                           device: torch.device = torch.device("cpu")) -> list[torch.Tensor]:
        return [torch.tensor([[s / self.image_size] * 2 for s in level], dtype=dtype, device=device)
                for level in self.sizes]

    def num_anchors_per_location(self) -> list[int]:
        return [len(level) for level in self.sizes]


# --- the detector ----------------------------------------------------------------------------

def _check_int(field: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(field, f"must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_fraction(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value < 1.0:
        raise InputError(field, f"must be a number between 0 and 1 (exclusive), got {value!r}.")
    return float(value)


def build_blazeface(
    blaze_filters: list[list[int]],
    double_blaze_filters: list[list[int]],
    use_5x5kernel: bool = True,
    num_classes: int = 2,
    image_size: int = DEFAULT_IMAGE_SIZE,
    anchor_sizes: Sequence[Sequence[float]] | None = None,
    iou_thresh: float = 0.35,
    score_thresh: float = 0.01,
    nms_thresh: float = 0.3,
    topk_candidates: int = 100,
    detections_per_img: int = 50,
) -> SSD:
    """A torchvision SSD over BlazeNet(blaze_filters, double_blaze_filters, use_5x5kernel).

    num_classes counts the background (2 = background + face), as torchvision's SSD does.
    Images are resized to image_size x image_size (a multiple of 16, so both maps tile it).
    anchor_sizes: prior sides in px per feature map; default BlazeFace's (16, 24) and
    (32, 48, 64, 80, 96, 128) at 128 px, scaled by image_size / 128.
    iou_thresh 0.35 (not SSD's 0.5): a 16-px face halfway between two stride-8 cells overlaps
    the nearest 16-px prior by IoU ~0.39, so 0.5 would leave small faces one forced match.
    """
    _check_int("num_classes", num_classes, 2)
    _check_int("image_size", image_size, 32)
    if image_size % FEATURE_STRIDES[-1]:
        raise InputError("image_size", f"must be a multiple of {FEATURE_STRIDES[-1]} (the deepest "
                                       f"feature stride), got {image_size}.")
    for field, value in (("topk_candidates", topk_candidates), ("detections_per_img", detections_per_img)):
        _check_int(field, value, 1)
    for field, value in (("iou_thresh", iou_thresh), ("score_thresh", score_thresh),
                         ("nms_thresh", nms_thresh)):
        _check_fraction(field, value)
    if anchor_sizes is None:
        anchor_sizes = [[s * image_size / DEFAULT_IMAGE_SIZE for s in level] for level in BLAZEFACE_ANCHOR_SIZES]
    if (len(anchor_sizes) != len(FEATURE_STRIDES)
            or not all(len(level) and all(isinstance(s, numbers.Real) and s > 0 for s in level)
                       for level in anchor_sizes)):
        raise InputError("anchor_sizes", f"must be {len(FEATURE_STRIDES)} non-empty lists of positive "
                                         f"sizes in px (one per feature map), got {anchor_sizes!r}.")

    backbone = BlazeNet(blaze_filters, double_blaze_filters, use_5x5kernel)
    if list(backbone.feature_strides) != list(FEATURE_STRIDES):
        raise InputError("blaze_filters", f"must bring the features to strides {list(FEATURE_STRIDES)}, "
                                          f"got {backbone.feature_strides}.")
    priors = SquarePriors(anchor_sizes, image_size, FEATURE_STRIDES)
    head = SSDHead(backbone.out_channels, priors.num_anchors_per_location(), num_classes)
    model = SSD(
        backbone, priors, (image_size, image_size), num_classes,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],  # inputs in [0, 1] → [-1, 1]
        head=head, score_thresh=score_thresh, nms_thresh=nms_thresh,
        detections_per_img=detections_per_img, iou_thresh=iou_thresh,
        topk_candidates=topk_candidates,
    )
    _init_backbone(backbone)
    model.arch = {
        "blaze_filters": [list(v) for v in blaze_filters],
        "double_blaze_filters": [list(v) for v in double_blaze_filters],
        "use_5x5kernel": bool(use_5x5kernel), "num_classes": num_classes, "image_size": image_size,
        "anchor_sizes": [list(map(float, level)) for level in anchor_sizes],
        "iou_thresh": iou_thresh, "score_thresh": score_thresh, "nms_thresh": nms_thresh,
        "topk_candidates": topk_candidates, "detections_per_img": detections_per_img,
    }
    return model


KNOBS = ("anchor_sizes", "iou_thresh", "score_thresh", "nms_thresh", "topk_candidates",
         "detections_per_img")


def build_from_tokens(tokens: Sequence[int], num_classes: int = 2, image_size: int = DEFAULT_IMAGE_SIZE,
                      latency_mode: bool = False, **knobs: Any) -> SSD:
    """BlazeFace detector for SANAS `tokens` (see `build_blazeface` for `knobs`).

    `model.tokens` and `model.filters` (from `filters_of`) describe the architecture;
    `model.arch` holds exactly this function's arguments, so
    `build_from_desc({"type": "BlazeFace", **model.arch})` rebuilds the model.
    """
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise InputError(unknown[0], f"is not a BlazeFace build option; allowed: tokens, num_classes, "
                                     f"image_size, latency_mode, {', '.join(KNOBS)}.")
    filters = filters_of(tokens, latency_mode)
    model = build_blazeface(filters["blaze_filters"], filters["double_blaze_filters"],
                            filters["use_5x5kernel"], num_classes=num_classes, image_size=image_size,
                            **knobs)
    model.tokens = validate_tokens(tokens, latency_mode)
    model.filters = filters
    model.arch = {"tokens": list(model.tokens), "num_classes": num_classes, "image_size": image_size,
                  **{k: model.arch[k] for k in knobs}}
    return model


def _init_backbone(backbone: nn.Module) -> None:
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


# --- primitive ops (for latency tables) ------------------------------------------------------

# Each op dict carries the fields of its type in PaddleSlim's latency table (latency/table.py
# owns the format: `FIELDS` lists them, `key_of` turns an op into its table key). The model
# only names the ops; the latency room, which sits above the models, reads and keys them.


def ops_of_model(model: SSD, batch_size: int = 1) -> list[dict[str, Any]]:
    """The primitive ops of one eval-mode forward pass, in execution order.

    Found with forward hooks on a real forward pass (`model([zeros]*batch_size)`), so the list
    is what the network runs. Each op is a dict with "op" (an op type of the latency table), that type's
    fields, "module" (the module's qualified name, "" for the softmax) and "part"
    ("backbone" | "head" | "postprocess"). Shapes are the op's input: n, c_in, h, w.

    conv: flag_bias (0/1), flag_relu (always 0: activations and BN are separate ops here, as
          in the seed's table), n, c_in, h, w, c_out, groups, k, pad, stride, dilation.
    batch_norm: active_type "none" (the ReLU is its own op); activation: act "relu";
    eltwise: elt_type "add"; pooling: flag_global_pooling 0, k, pad, stride, ceil_mode (0/1),
    pool_type "max"; softmax: the class scores (n, priors, classes) as n, c_in=priors,
    h=classes, w=1, axis=2 (over classes) — what SSD's postprocess runs.
    Not listed: input normalization/resizing, box decoding and NMS (no table entries exist).
    """
    _check_int("batch_size", batch_size, 1)
    image_size = int(model.transform.fixed_size[0]) if model.transform.fixed_size else DEFAULT_IMAGE_SIZE
    head_out: dict[str, torch.Tensor] = {}

    def keep_head(module: nn.Module, inputs: tuple, output: dict[str, torch.Tensor]) -> None:
        head_out.update(output)

    handle = model.head.register_forward_hook(keep_head)
    training = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with _recorded_ops(model) as ops, torch.no_grad():
            device = next(model.parameters()).device
            model([torch.zeros(3, image_size, image_size, device=device)] * batch_size)
    finally:
        handle.remove()
        for m, flag in training:
            m.training = flag
    return [*ops, _softmax_op(head_out["cls_logits"])]


_OP_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, Add)


@contextmanager
def _recorded_ops(root: nn.Module) -> Iterator[list[dict[str, Any]]]:
    """While open, every op module under `root` that runs appends its op (`_op_of`, plus
    "module": its name under `root`, and "part") to the yielded list, in call order."""
    ops: list[dict[str, Any]] = []
    names = {m: name for name, m in root.named_modules()}

    def record(module: nn.Module, inputs: tuple, output: Any) -> None:
        op = _op_of(module, inputs[0])
        if op is not None:
            name = names[module]
            ops.append({**op, "module": name, "part": "head" if name.startswith("head") else "backbone"})

    handles = [m.register_forward_hook(record) for m in root.modules() if isinstance(m, _OP_MODULES)]
    try:
        yield ops
    finally:
        for handle in handles:
            handle.remove()


def _softmax_op(cls_logits: torch.Tensor) -> dict[str, Any]:
    """SSD's postprocess softmax over the class scores (n, priors, classes)."""
    n, priors, classes = cls_logits.shape
    return {"op": "softmax", "axis": 2, "n": int(n), "c_in": int(priors), "h": int(classes), "w": 1,
            "module": "", "part": "postprocess"}


# Ops part by part, for enumerating the space: each part is built as the network builds it and
# run once with the hooks above (on zeros: the hooks read shapes only). Results are cached per
# part and input shape, as thousands of block configurations share a few hundred layers.

@contextmanager
def _one_thread() -> Iterator[None]:
    """Run tiny one-off forward passes on one torch thread: with the cores busy, a multi-threaded
    conv here took ~10 ms against <1 ms (shapes are all that is read)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@lru_cache(maxsize=None)
def _layer_ops(spec: LayerSpec, n: int, c: int, h: int) -> tuple[tuple[dict[str, Any], ...], tuple[int, int]]:
    """Ops of layer `spec` on an (n, c, h, h) input, and the output's (channels, side)."""
    layer = _layer(spec).eval()
    x = torch.zeros(n, c, h, h)
    with _one_thread(), _recorded_ops(layer) as ops, torch.no_grad():
        y = layer(x, x) if spec[0] == "add" else layer(x)
    return tuple(ops), (int(y.shape[1]), int(y.shape[2]))


def _chain_ops(specs: Sequence[LayerSpec], n: int, c: int, h: int) -> tuple[list[dict[str, Any]], int, int]:
    ops: list[dict[str, Any]] = []
    for spec in specs:
        layer_ops, (c, h) = _layer_ops(spec, n, c, h)
        ops += [{**op, "part": "backbone"} for op in layer_ops]
    return ops, c, h


def stem_ops(width: int, image_size: int = DEFAULT_IMAGE_SIZE, batch_size: int = 1) -> list[dict[str, Any]]:
    """Ops of BlazeNet's conv1 to `width` channels on a (batch, 3, image_size, image_size) input."""
    return _chain_ops([_stem_spec(width)], batch_size, 3, image_size)[0]


def block_ops(c_in: int, c_out: int, double_out: int | None, stride: int, use_5x5: bool, size: int,
              batch_size: int = 1) -> list[dict[str, Any]]:
    """Ops of `BlazeBlock(c_in, c_out, double_out, stride, use_5x5)` on a (batch, c_in, size,
    size) input, in the order its forward runs them (branch, shortcut, add, ReLU)."""
    branch, shortcut = _block_plan(c_in, c_out, double_out, stride, use_5x5)
    ops, c, h = _chain_ops(branch, batch_size, c_in, size)
    ops += _chain_ops(shortcut, batch_size, c_in, size)[0]
    return ops + _chain_ops([("add",), ("relu",)], batch_size, c, h)[0]


def _head(channels: Sequence[int], levels: Sequence[int], num_classes: int) -> SSDHead:
    anchors = [len(BLAZEFACE_ANCHOR_SIZES[level]) for level in levels]
    return SSDHead(list(channels), anchors, num_classes).eval()


def _head_features(channels: Sequence[int], levels: Sequence[int], image_size: int,
                   batch_size: int) -> list[torch.Tensor]:
    return [torch.zeros(batch_size, c, image_size // FEATURE_STRIDES[level], image_size // FEATURE_STRIDES[level])
            for c, level in zip(channels, levels)]


def head_ops(channels: int, level: int, image_size: int = DEFAULT_IMAGE_SIZE, batch_size: int = 1,
             num_classes: int = 2) -> list[dict[str, Any]]:
    """Ops of the SSD head's box and class convs on feature map `level` (0: stride 8, 1: stride
    16) of `channels` channels, with BlazeFace's default priors."""
    head = _head([channels], [level], num_classes)
    with _one_thread(), _recorded_ops(head) as ops, torch.no_grad():
        head(_head_features([channels], [level], image_size, batch_size))
    return [{**op, "part": "head"} for op in ops]


def softmax_op(image_size: int = DEFAULT_IMAGE_SIZE, batch_size: int = 1, num_classes: int = 2) -> dict[str, Any]:
    """The class softmax every BlazeFace of the space runs (its shape depends on the priors only)."""
    levels = range(len(FEATURE_STRIDES))
    channels = [DOUBLE_FILTER_NUM[0]] * len(FEATURE_STRIDES)
    with _one_thread(), torch.no_grad():
        out = _head(channels, levels, num_classes)(_head_features(channels, levels, image_size, batch_size))
    return _softmax_op(out["cls_logits"])


def _op_of(module: nn.Module, x: torch.Tensor) -> dict[str, Any] | None:
    n, c, h, w = (int(v) for v in x.shape)
    shape = {"n": n, "c_in": c, "h": h, "w": w}
    if isinstance(module, nn.Conv2d):
        return {"op": "conv", "flag_bias": int(module.bias is not None), "flag_relu": 0, **shape,
                "c_out": module.out_channels, "groups": module.groups, "k": _one(module.kernel_size),
                "pad": _one(module.padding), "stride": _one(module.stride),
                "dilation": _one(module.dilation)}
    if isinstance(module, nn.BatchNorm2d):
        return {"op": "batch_norm", "active_type": "none", **shape}
    if isinstance(module, nn.ReLU):
        return {"op": "activation", "act": "relu", **shape}
    if isinstance(module, Add):
        return {"op": "eltwise", "elt_type": "add", **shape}
    if isinstance(module, nn.MaxPool2d):
        return {"op": "pooling", "flag_global_pooling": 0, **shape, "k": _one(module.kernel_size),
                "pad": _one(module.padding), "stride": _one(module.stride),
                "ceil_mode": int(module.ceil_mode), "pool_type": "max"}
    return None


def _one(value: Any) -> int:
    """Square kernels/strides only: (3, 3) → 3."""
    if isinstance(value, tuple):
        if len(set(value)) != 1:
            raise ValueError(f"non-square value {value} has no latency-table key")
        value = value[0]
    return int(value)


def ops_of_tokens(tokens: Sequence[int], image_size: int = DEFAULT_IMAGE_SIZE, batch_size: int = 1,
                  num_classes: int = 2, latency_mode: bool = False, **knobs: Any) -> list[dict[str, Any]]:
    """`ops_of_model` of the detector `build_from_tokens(tokens, ...)` builds (see there for keys)."""
    model = build_from_tokens(tokens, num_classes=num_classes, image_size=image_size,
                              latency_mode=latency_mode, **knobs)
    return ops_of_model(model, batch_size)
