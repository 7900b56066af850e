"""BlazeFace SANAS space: token rules (checked against hand-worked lists), validation, the
torchvision SSD detector built from tokens, MACs, the structure text and the op list."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from latency.flops import count_macs_params
from latency.table import FIELDS as OP_FIELDS
from latency.table import key_of as op_key
from nas_models.blazeface import (
    INIT_TOKENS,
    build_from_tokens,
    describe,
    filters_of,
    init_tokens,
    ops_of_model,
    ops_of_tokens,
    range_table,
    validate_tokens,
)
from core.errors import InputError
from nas_models.registry import build_from_desc

SIZE = 128


@pytest.fixture(scope="module")
def initial_model():
    torch.manual_seed(0)
    return build_from_tokens(INIT_TOKENS)


# --- token rules ------------------------------------------------------------------------------

def test_initial_tokens_filters_worked_out_by_hand():
    # tokens [2, 1, 3, 8, 2, 1, 2, 1, 1]:
    # num1[2]=12, num2[1]=12, double[3]=24, double[8]=72, mid[2]=16, mid[1]=12, mid[2]=16,
    # mid[1]=12, use_5x5[1]=1
    assert list(INIT_TOKENS) == [2, 1, 3, 8, 2, 1, 2, 1, 1]
    assert filters_of(INIT_TOKENS) == {
        "blaze_filters": [[12, 12], [12, 12, 2], [12, 12]],
        "double_blaze_filters": [[12, 16, 24, 2], [24, 12, 24], [24, 16, 72, 2], [72, 12, 72]],
        "use_5x5kernel": True,
    }


def test_smallest_and_largest_tokens_by_hand():
    assert filters_of([0] * 9) == {
        "blaze_filters": [[4, 4], [4, 8, 2], [8, 8]],
        "double_blaze_filters": [[8, 8, 8, 2], [8, 8, 8], [8, 8, 8, 2], [8, 8, 8]],
        "use_5x5kernel": False,
    }
    assert filters_of([6, 8, 11, 11, 5, 5, 5, 5, 1]) == {
        "blaze_filters": [[32, 32], [32, 64, 2], [64, 64]],
        "double_blaze_filters": [[64, 32, 96, 2], [96, 32, 96], [96, 32, 96, 2], [96, 32, 96]],
        "use_5x5kernel": True,
    }
    # Every token position feeds its own list entry: num1, num2, double x2, mid x4, kernel.
    assert filters_of([1, 2, 4, 5, 0, 3, 4, 5, 0]) == {
        "blaze_filters": [[8, 8], [8, 16, 2], [16, 16]],
        "double_blaze_filters": [[16, 8, 32, 2], [32, 20, 32], [32, 24, 40, 2], [40, 32, 40]],
        "use_5x5kernel": False,
    }


def test_ranges_and_latency_mode():
    assert range_table() == [7, 9, 12, 12, 6, 6, 6, 6, 2]
    assert range_table(latency_mode=True) == [7, 9, 12, 12, 6, 6, 6, 6, 1]
    assert init_tokens() == [2, 1, 3, 8, 2, 1, 2, 1, 1]
    assert init_tokens(latency_mode=True) == [2, 1, 3, 8, 2, 1, 2, 1, 0]
    assert validate_tokens(np.array(INIT_TOKENS)) == list(INIT_TOKENS)  # numpy from a strategy
    assert filters_of(init_tokens(latency_mode=True), latency_mode=True)["use_5x5kernel"] is False


@pytest.mark.parametrize("tokens, latency_mode, fragment", [
    ([2, 1, 3, 8, 2, 1, 2, 1], False, "got 8 values"),
    ([2, 1, 3, 8, 2, 1, 2, 1, 1, 0], False, "got 10 values"),
    ([7, 1, 3, 8, 2, 1, 2, 1, 1], False, "tokens[0] is 7"),
    ([2, 1, 3, 12, 2, 1, 2, 1, 1], False, "tokens[3] is 12"),
    ([2, 1, 3, 8, -1, 1, 2, 1, 1], False, "tokens[4] is -1"),
    ([2, 1, 3, 8, 2, 1, 2, 1, 1.0], False, "tokens[8] is 1.0"),
    ([2, True, 3, 8, 2, 1, 2, 1, 1], False, "tokens[1] is True"),
    (["2", 1, 3, 8, 2, 1, 2, 1, 1], False, "tokens[0] is '2'"),
    ("213821211", False, "got '213821211'"),
    (None, False, "got None"),
    ([2, 1, 3, 8, 2, 1, 2, 1, 1], True, "tokens[8] is 1"),
])
def test_bad_tokens_raise_one_input_error(tokens, latency_mode, fragment):
    with pytest.raises(InputError) as err:
        validate_tokens(tokens, latency_mode=latency_mode)
    assert err.value.field == "tokens"
    message = str(err.value)
    assert fragment in message
    ranges = "[7, 9, 12, 12, 6, 6, 6, 6, 1]" if latency_mode else "[7, 9, 12, 12, 6, 6, 6, 6, 2]"
    assert ranges in message
    with pytest.raises(InputError):
        build_from_tokens(tokens, latency_mode=latency_mode)


def test_bad_build_options():
    for kwargs, field in (({"image_size": 120}, "image_size"), ({"num_classes": 1}, "num_classes"),
                          ({"iou_thresh": 1.5}, "iou_thresh"), ({"anchor_sizes": [[16]]}, "anchor_sizes"),
                          ({"colour": "red"}, "colour")):
        with pytest.raises(InputError) as err:
            build_from_tokens(INIT_TOKENS, **kwargs)
        assert err.value.field == field


# --- the detector -----------------------------------------------------------------------------

def test_backbone_structure_follows_the_filters(initial_model):
    backbone = initial_model.backbone
    assert backbone.out_channels == [24, 72] and backbone.feature_strides == [8, 16]
    features = backbone(torch.zeros(1, 3, SIZE, SIZE))
    assert [tuple(f.shape) for f in features.values()] == [(1, 24, 16, 16), (1, 72, 8, 8)]
    # 5x5 variant: one depthwise 5x5 per depthwise stage; 3x3 variant: two stacked 3x3.
    kernels = {m.kernel_size[0] for m in backbone.modules()
               if isinstance(m, torch.nn.Conv2d) and m.groups > 1}
    assert kernels == {5}
    small = build_from_tokens(init_tokens(latency_mode=True), latency_mode=True).backbone
    kernels3 = [m.kernel_size[0] for m in small.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    kernels5 = [m.kernel_size[0] for m in backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert set(kernels3) == {3} and len(kernels3) == 2 * len(kernels5) == 2 * (3 + 2 * 4)


def test_train_mode_gives_finite_losses_and_gradients(initial_model):
    model = initial_model.train()
    images = [torch.rand(3, SIZE, SIZE), torch.rand(3, 96, 112)]  # any size: SSD resizes to 128
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 40.0, 42.0], [70.0, 60.0, 110.0, 100.0]]),
                "labels": torch.tensor([1, 1])},
               {"boxes": torch.tensor([[5.0, 5.0, 30.0, 33.0]]), "labels": torch.tensor([1])}]
    losses = model(images, targets)
    assert set(losses) == {"bbox_regression", "classification"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad()


def test_eval_mode_returns_boxes(initial_model):
    model = initial_model.eval()
    with torch.no_grad():
        outputs = model([torch.rand(3, SIZE, SIZE), torch.rand(3, SIZE, SIZE)])
    assert len(outputs) == 2
    for out in outputs:
        assert set(out) == {"boxes", "scores", "labels"}
        assert out["boxes"].shape[1] == 4 and 0 < len(out["boxes"]) <= 50
        assert (out["labels"] == 1).all()
        assert (out["boxes"] >= 0).all() and (out["boxes"] <= SIZE).all()


def test_priors_are_blazeface_896_at_128_px(initial_model):
    model = initial_model.eval()
    from torchvision.models.detection.image_list import ImageList

    images = ImageList(torch.zeros(1, 3, SIZE, SIZE), [(SIZE, SIZE)])
    features = list(model.backbone(images.tensors).values())
    priors = model.anchor_generator(images, features)[0]
    assert priors.shape == (16 * 16 * 2 + 8 * 8 * 6, 4)
    # First cell of the stride-8 map: centre (4, 4), sides 16 and 24.
    assert torch.allclose(priors[:2], torch.tensor([[-4.0, -4.0, 12.0, 12.0], [-8.0, -8.0, 16.0, 16.0]]))
    # First cell of the stride-16 map: centre (8, 8), sides 32 ... 128.
    sides = priors[512:518, 2] - priors[512:518, 0]
    assert sides.tolist() == [32.0, 48.0, 64.0, 80.0, 96.0, 128.0]


def test_macs_follow_the_tokens():
    def macs(tokens):
        model = build_from_tokens(tokens)
        return count_macs_params(model, [torch.zeros(3, SIZE, SIZE)])

    base_macs, base_params = macs(INIT_TOKENS)
    wider = list(INIT_TOKENS)
    wider[3] = 11  # last double blocks 72 -> 96 channels
    narrower = list(INIT_TOKENS)
    narrower[0] = 0  # first blocks 12 -> 4 channels
    assert macs(wider)[0] > base_macs and macs(wider)[1] > base_params
    assert macs(narrower)[0] < base_macs
    assert macs([0] * 9)[0] < base_macs < macs([6, 8, 11, 11, 5, 5, 5, 5, 1])[0]


def test_registry_round_trip(initial_model):
    desc = {"type": "BlazeFace", **initial_model.arch}
    assert desc == {"type": "BlazeFace", "tokens": list(INIT_TOKENS), "num_classes": 2, "image_size": SIZE}
    rebuilt = build_from_desc(desc)
    rebuilt.load_state_dict(initial_model.state_dict())
    assert rebuilt.filters == filters_of(INIT_TOKENS)
    with pytest.raises(InputError) as err:
        build_from_desc({"type": "BlazeFace", "num_classes": 2})
    assert err.value.field == "desc.tokens"


# --- structure text and op list ---------------------------------------------------------------

def test_describe_has_the_seed_markers_and_lists():
    text = describe(INIT_TOKENS)
    lines = text.splitlines()
    assert "BlazeFace-NAS structure start" in lines[0]
    assert "BlazeFace-NAS structure end" in lines[-1]
    body = dict(line.strip().split(": ", 1) for line in lines[2:-1])
    assert body["blaze_filters"] == "[[12, 12], [12, 12, 2], [12, 12]]"
    assert body["double_blaze_filters"] == "[[12, 16, 24, 2], [24, 12, 24], [24, 16, 72, 2], [72, 12, 72]]"
    assert body["use_5x5kernel"] == "True"
    assert "use_5x5kernel: False" in describe([0] * 9)


def test_ops_list_is_what_the_network_runs(initial_model):
    ops = ops_of_model(initial_model)
    for op in ops:
        assert set(OP_FIELDS[op["op"]]) <= set(op)
    first = ops[0]
    assert op_key(first) == "conv,0,0,1,3,128,128,12,1,3,1,2,1"  # conv1: 3x3/2, no bias
    assert first["module"] == "backbone.conv1.0" and first["part"] == "backbone"
    kinds = [op["op"] for op in ops]
    assert kinds.count("eltwise") == 7 and kinds.count("pooling") == 3  # 7 blocks, 3 with stride 2
    assert kinds[-1] == "softmax" and op_key(ops[-1]) == "softmax,2,1,896,2,1"
    head = [op_key(op) for op in ops if op["part"] == "head"]
    assert sorted(head) == sorted([
        "conv,1,0,1,24,16,16,8,1,3,1,1,1", "conv,1,0,1,72,8,8,24,1,3,1,1,1",   # boxes: 2 / 6 priors
        "conv,1,0,1,24,16,16,4,1,3,1,1,1", "conv,1,0,1,72,8,8,12,1,3,1,1,1"])  # scores: x 2 classes
    # The convs in the list account for every multiply-accumulate torch counts.
    conv_macs = sum(op["k"] ** 2 * op["c_in"] // op["groups"] * op["c_out"]
                    * (op["h"] // op["stride"]) * (op["w"] // op["stride"]) * op["n"]
                    for op in ops if op["op"] == "conv")
    assert conv_macs == count_macs_params(initial_model, [torch.zeros(3, SIZE, SIZE)])[0]


def test_ops_for_the_latency_table_at_another_size_and_batch():
    ops = ops_of_tokens(init_tokens(latency_mode=True), image_size=640, batch_size=2, latency_mode=True)
    keys = [op_key(op) for op in ops]
    # Keys in the seed table's form (640 px there): conv1, then blaze_0's pair of 3x3 depthwise convs.
    assert "conv,0,0,2,3,640,640,12,1,3,1,2,1" in keys
    assert keys.count("conv,0,0,2,12,320,320,12,12,3,1,1,1") >= 2
    assert all(op["k"] == 3 or op["k"] == 1 for op in ops if op["op"] == "conv")
    assert ops[-1]["c_in"] == 80 * 80 * 2 + 40 * 40 * 6


def test_part_by_part_ops_are_the_network_s_ops():
    # latency.measure.space_ops enumerates the space part by part (stem_ops, block_ops,
    # head_ops, softmax_op); put together for one network they must be ops_of_model's list.
    import random

    from nas_models.blazeface import (FEATURE_STRIDES, block_ops, filters_of, head_ops, range_table,
                                      softmax_op, stem_ops)

    rng = random.Random(3)
    for size, n in ((128, 1), (64, 2)):
        tokens = [rng.randrange(r) for r in range_table()]
        f = filters_of(tokens)
        use_5x5 = f["use_5x5kernel"]
        parts = stem_ops(f["blaze_filters"][0][0], size, n)
        h = size // 2
        specs = [(c_dw, c_out, None, *s) for c_dw, c_out, *s in f["blaze_filters"]]
        specs += [(c_dw, mid, c_out, *s) for c_dw, mid, c_out, *s in f["double_blaze_filters"]]
        for c_dw, c_out, double_out, *s in specs:
            stride = s[0] if s else 1
            parts += block_ops(c_dw, c_out, double_out, stride, use_5x5, h, n)
            h = -(-h // stride)
        heads = [head_ops(f["double_blaze_filters"][i][2], level, size, n) for level, i in ((0, 1), (1, 3))]
        assert len(heads) == len(FEATURE_STRIDES)
        # torchvision's SSDHead runs every box conv, then every class conv
        parts += [heads[0][0], heads[1][0], heads[0][1], heads[1][1], softmax_op(size, n)]
        whole = ops_of_tokens(tokens, image_size=size, batch_size=n)
        assert [op_key(op) for op in parts] == [op_key(op) for op in whole]
