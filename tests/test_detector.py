"""Detector building, the parallel level, weight inheritance and the training/eval loops."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.detection import evaluate, load_checkpoint, save_checkpoint, train_one_epoch
from latency.flops import count_macs_params
from nas_models.detector import (
    BackboneClassifier,
    anchor_sizes,
    build_detector,
    serial_body,
)
from core.errors import InputError
from latency.branch_costs import extra_macs_per_stage
from nas_models.inherit import inherit_weights
from nas_models.parallel_fpn import ParallelBackbone, validate_neck_code
from nas_models.serial_backbone import SerialBackbone

R18 = "11-21-21-21"


def _batch(n: int = 2, size: int = 96, seed: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    targets = []
    for i in range(n):
        xy = torch.randint(0, size - 40, (2, 2), generator=g).float()
        wh = torch.randint(16, 40, (2, 2), generator=g).float()
        targets.append(
            {
                "boxes": torch.cat([xy, xy + wh], 1),
                "labels": torch.randint(1, 11, (2,), generator=g),
                "image_id": torch.tensor(100 + i),
            }
        )
    return images, targets


@pytest.mark.parametrize(
    "code, block, neck",
    [
        (R18, "BasicBlock", None),
        ("1-21", "Bottleneck", [1, 0]),
        ("11-21-21-21-21", "BasicBlock", [0, 1, 0, 2, 1]),  # 5 stages + pool = 6 FPN levels
    ],
)
def test_build_and_train_step(code: str, block: str, neck: list[int] | None) -> None:
    torch.manual_seed(0)
    # Narrow widths keep the deep/Bottleneck cases fast; the layout logic is the same.
    det = build_detector(code, block, neck_code=neck, base_width=64 if code == R18 else 16)
    n_stages = len(code.split("-"))
    assert len(det.rpn.anchor_generator.sizes) == n_stages + 1
    assert det.roi_heads.box_roi_pool.featmap_names == [str(s) for s in range(n_stages)]
    assert det.arch["backbone_code"] == code and det.arch["neck_code"] == (neck or [0] * n_stages)
    opt = torch.optim.SGD([p for p in det.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    seen: list[int] = []
    losses = train_one_epoch(det, opt, [_batch()], on_step=lambda step, d: seen.append(step))
    assert seen == [0] and losses["steps"] == 1
    names = {"loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert names <= set(losses)
    assert all(math.isfinite(v) for v in losses.values())


def test_evaluate_output_format() -> None:
    det = build_detector(R18, box_detections_per_img=5)
    results = evaluate(det, [_batch(2), _batch(1, seed=1)])
    assert not det.training
    assert [r["image_id"] for r in results] == [100, 101, 100]
    for r in results:
        assert set(r) == {"image_id", "boxes", "labels", "scores"}
        assert isinstance(r["boxes"], np.ndarray) and r["boxes"].shape[1:] == (4,)
        assert len(r["boxes"]) == len(r["labels"]) == len(r["scores"]) <= 5


def test_anchor_sizes() -> None:
    det = build_detector(R18)
    assert det.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,), (256,))
    assert det.rpn.anchor_generator.num_anchors_per_location() == [3] * 5
    # Stages that keep the resolution still get growing anchors; big images scale up.
    assert anchor_sizes([4, 4, 8, 8], 96) == ((16,), (32,), (64,), (128,))
    assert anchor_sizes([4, 8, 16, 32, 64], 800)[0][0] == 32


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"backbone_code": "11--21"}, "backbone_code"),
        ({"backbone_code": R18, "block": "Dense"}, "block"),
        ({"backbone_code": R18, "neck_code": [0, 1]}, "neck_code"),
        ({"backbone_code": R18, "neck_code": [0, -1, 0, 0]}, "neck_code"),
        ({"backbone_code": R18, "neck_code": "0,1,0,0"}, "neck_code"),
        ({"backbone_code": R18, "num_classes": 1}, "num_classes"),
        ({"backbone_code": R18, "image_size": 8}, "image_size"),
        ({"backbone_code": R18, "fpn_channels": 0}, "fpn_channels"),
    ],
)
def test_bad_input(kwargs: dict, field: str) -> None:
    with pytest.raises(InputError) as err:
        build_detector(**kwargs)
    assert err.value.field == field


def test_validate_neck_code() -> None:
    assert validate_neck_code(None, 3) == [0, 0, 0]
    assert validate_neck_code((0, 1, 3), 3) == [0, 1, 3]
    for bad in ([True, 0, 0], [0, 1.0, 0], [0, 0, 99]):
        with pytest.raises(InputError):
            validate_neck_code(bad, 3)


def test_new_branches_start_as_identity() -> None:
    torch.manual_seed(0)
    serial = SerialBackbone(R18).eval()
    plain = ParallelBackbone(serial, [0, 0, 0, 0]).eval()
    branched = ParallelBackbone(serial, [1, 0, 2, 0]).eval()
    branched.fpn.load_state_dict(plain.fpn.state_dict())
    assert "branches.2.1.conv2.weight" in branched.state_dict()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        a, b = plain(x), branched(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_extra_macs_per_stage() -> None:
    macs = extra_macs_per_stage(R18, "BasicBlock", 96)
    assert len(macs) == 4 and all(m > 0 for m in macs)
    # Two 3x3 convs at C channels on HxW: 2 * 9 * C^2 * H * W; ResNet-18 keeps C^2*H*W constant.
    expected = [2 * 9 * c * c * hw * hw for c, hw in [(64, 24), (128, 12), (256, 6), (512, 3)]]
    assert macs == pytest.approx(expected)
    # A stage that doubles channels without halving resolution costs 4x more per branch.
    grow = extra_macs_per_stage("11-11-21", "BasicBlock", 96)
    assert grow[1] == pytest.approx(4 * grow[0]) and grow[2] == pytest.approx(grow[1])
    # Consistent with the whole neck measured with and without one extra branch at stage 1.
    serial = SerialBackbone(R18)
    base, _ = count_macs_params(ParallelBackbone(serial, [0, 0, 0, 0]), (1, 3, 96, 96))
    plus, _ = count_macs_params(ParallelBackbone(serial, [0, 1, 0, 0]), (1, 3, 96, 96))
    assert plus - base == pytest.approx(macs[1])


def test_inherit_after_expand_and_freeze() -> None:
    torch.manual_seed(0)
    parent = build_detector(R18)
    child = build_detector("111-21-21-21")
    parent_state = parent.state_dict()
    report = inherit_weights(child, parent_state, freeze_inherited_blocks=True)
    child_state = child.state_dict()
    new = {k for k in child_state if k.startswith("backbone.body.stages.0.2.")}
    assert report.total == len(child_state)
    assert report.matched == report.total - len(new)
    assert set(report.matched_names) == set(child_state) - new
    for name in ("backbone.body.stages.3.1.conv2.weight", "roi_heads.box_head.fc6.weight"):
        assert torch.equal(child_state[name], parent_state[name])
    assert "backbone.body.stages.0.2" not in report.frozen_blocks
    assert len(report.frozen_blocks) == 8  # every other backbone block
    params = dict(child.named_parameters())
    assert not params["backbone.body.stages.0.0.conv1.weight"].requires_grad
    assert params["backbone.body.stages.0.2.conv1.weight"].requires_grad
    assert params["backbone.body.stem.conv.weight"].requires_grad  # only blocks are frozen
    assert params["rpn.head.cls_logits.weight"].requires_grad


def test_inherit_after_swap_freezes_only_fully_inherited_blocks() -> None:
    # Swap '11-21-21' -> '1-121-21': stages.1.1 now has stride 2 and gains a downsample the
    # parent's block lacked, so it is only partly inherited and must stay trainable.
    parent = SerialBackbone("11-21-21")
    child = SerialBackbone("1-121-21")
    report = inherit_weights(child, parent.state_dict(), freeze_inherited_blocks=True)
    assert 0 < report.matched < report.total
    assert "stages.1.1.conv1.weight" in report.matched_names
    assert "stages.1.1.downsample.0.weight" not in report.matched_names
    assert report.frozen_blocks == ["stages.0.0", "stages.1.0", "stages.2.0", "stages.2.1"]
    assert child.stages[1][1].conv1.weight.requires_grad


def test_backbone_classifier_trains_the_wrapped_backbone() -> None:
    torch.manual_seed(0)
    det = build_detector(R18)
    clf = BackboneClassifier(serial_body(det), num_classes=10)
    assert clf(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert clf.backbone is serial_body(det)  # the same module, so reignite needs no copy back
    with pytest.raises(InputError) as err:
        serial_body(nn.Linear(2, 2))
    assert err.value.field == "model"


class _NanModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, images: list, targets: list) -> dict[str, torch.Tensor]:
        return {"loss_a": self.w * float("nan")}


def test_non_finite_loss_raises() -> None:
    model = _NanModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match="step 0"):
        train_one_epoch(model, opt, [([torch.zeros(3, 8, 8)], [{}])])
    assert model.w.item() == 1.0


def test_checkpoint_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    det = build_detector("1-21")
    opt = torch.optim.SGD([p for p in det.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train_one_epoch(det, opt, [_batch()])
    sched.step()
    config = {"code": "1-21", "lr": 0.01, "neck": [0, 1]}
    path = save_checkpoint(tmp_path / "ck" / "last.pth", det, opt, sched, epoch=1, config=config)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pth"]  # no temp file left

    det2 = build_detector("1-21")
    opt2 = torch.optim.SGD([p for p in det2.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    ckpt = load_checkpoint(path, det2, opt2, sched2)
    assert ckpt["epoch"] == 1 and ckpt["config"]["neck"] == [0, 1]
    pairs = zip(det.state_dict().values(), det2.state_dict().values())
    assert all(torch.equal(a, b) for a, b in pairs)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.005)
    assert len(opt2.state) == len(opt.state)

    with pytest.raises(InputError) as err:
        save_checkpoint(tmp_path / "bad.pth", det, opt, None, 0, {"model": det})
    assert err.value.field == "config"
    with pytest.raises(InputError):
        load_checkpoint(tmp_path / "nope.pth", det2)
