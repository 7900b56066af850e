"""Converting torchvision checkpoints: renaming only, so features come out identical."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from core.errors import InputError
from nas_models.convert import convert_checkpoint, convert_torchvision_resnet, load_weights_file
from nas_models.detector import build_detector
from nas_models.serial_backbone import SerialBackbone

R18 = "11-21-21-21"
R50 = "111-2111-211111-211"


@pytest.fixture(scope="module")
def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def _tv_features(net: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    out = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        y = layer(y)
        out.append(y)
    return out


def _randomize_bn_stats(net: torch.nn.Module) -> None:
    # Non-trivial running stats, so a mis-mapped BN would show in the features.
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize(
    "name, code, block", [("resnet18", R18, "BasicBlock"), ("resnet50", R50, "Bottleneck")]
)
def test_resnet_features_identical(name: str, code: str, block: str) -> None:
    torch.manual_seed(0)
    tv = getattr(torchvision.models, name)(weights=None)
    _randomize_bn_stats(tv)
    tv.eval()
    conv = convert_checkpoint(tv.state_dict(), code, block)
    assert conv.source_format == "resnet"
    assert set(conv.dropped) == {"fc.weight", "fc.bias"}
    ours = SerialBackbone(code, block).eval()
    ours.load_state_dict(conv.state_dict, strict=True)
    # Same tensors, renamed.
    renamed = conv.state_dict["stages.1.0.conv1.weight"]
    assert renamed.data_ptr() == tv.layer2[0].conv1.weight.data_ptr()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = _tv_features(tv, x)
        got = list(ours(x).values())
    assert len(got) == 4
    for a, b in zip(ref, got):
        assert (a - b).abs().max().item() < 1e-6


def test_frozen_bn_checkpoint_without_counters(resnet18: torch.nn.Module) -> None:
    sd = {k: v for k, v in resnet18.state_dict().items() if not k.endswith("num_batches_tracked")}
    out = convert_torchvision_resnet(sd, R18, "BasicBlock")
    missing, unexpected = SerialBackbone(R18).load_state_dict(out, strict=False)
    assert unexpected == [] and all(k.endswith("num_batches_tracked") for k in missing)


def test_resnet_into_detector_target(resnet18: torch.nn.Module) -> None:
    det = build_detector(R18)
    conv = convert_checkpoint(resnet18.state_dict(), R18, "BasicBlock", target=det)
    assert all(k.startswith("backbone.body.") for k in conv.state_dict)
    assert len(conv.state_dict) == len(det.backbone.body.state_dict())


def test_fasterrcnn_into_detector() -> None:
    torch.manual_seed(0)
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=11).eval()
    ours = build_detector(R50, "Bottleneck", num_classes=11, fpn_channels=256).eval()
    conv = convert_checkpoint(tv.state_dict(), R50, "Bottleneck", target=ours)
    assert conv.source_format == "fasterrcnn"
    assert conv.dropped == {}
    ours.load_state_dict(conv.state_dict, strict=True)  # every key, every head shape matches
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref, got = tv.backbone(x), ours.backbone(x)
    assert list(ref) == list(got) == ["0", "1", "2", "3", "pool"]
    for k in ref:
        assert (ref[k] - got[k]).abs().max().item() < 1e-5


def test_fasterrcnn_other_heads_reported() -> None:
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    ours = build_detector(R50, "Bottleneck", num_classes=11, fpn_channels=256)
    conv = convert_checkpoint(tv.state_dict(), R50, "Bottleneck", target=ours)
    assert set(conv.dropped) == {
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.bbox_pred.bias",
    }
    # A bare backbone target keeps only the body.
    body = SerialBackbone(R50, "Bottleneck")
    bare = convert_checkpoint(tv.state_dict(), R50, "Bottleneck", target=body)
    SerialBackbone(R50, "Bottleneck").load_state_dict(bare.state_dict, strict=True)


@pytest.mark.parametrize(
    "code, block, field",
    [
        ("111-21-21-21", "BasicBlock", "backbone_code"),  # 3 blocks in stage 0
        ("11-21-21", "BasicBlock", "backbone_code"),  # 3 stages
        ("12-21-21-21", "BasicBlock", "backbone_code"),  # downsample where the checkpoint has none
        (R18, "Bottleneck", "block"),
        ("11-21-2x-21", "BasicBlock", "backbone_code"),
    ],
)
def test_structure_mismatch(resnet18: torch.nn.Module, code: str, block: str, field: str) -> None:
    with pytest.raises(InputError) as err:
        convert_torchvision_resnet(resnet18.state_dict(), code, block)
    assert err.value.field == field


def test_unknown_formats(resnet18: torch.nn.Module) -> None:
    with pytest.raises(InputError, match="neither"):
        convert_torchvision_resnet({"foo.weight": torch.zeros(1)}, R18, "BasicBlock")
    with pytest.raises(InputError, match="spnas names"):
        convert_torchvision_resnet(SerialBackbone(R18).state_dict(), R18, "BasicBlock")
    # DataParallel prefixes are tolerated.
    wrapped = {"module." + k: v for k, v in resnet18.state_dict().items()}
    assert "stem.conv.weight" in convert_torchvision_resnet(wrapped, R18, "BasicBlock")


def test_load_weights_file(tmp_path: Path, resnet18: torch.nn.Module) -> None:
    sd = resnet18.state_dict()
    for i, obj in enumerate([sd, {"model": sd, "epoch": 3}, {"state_dict": sd}]):
        p = tmp_path / f"w{i}.pth"
        torch.save(obj, p)
        loaded = load_weights_file(p)
        assert set(loaded) == set(sd) and torch.equal(loaded["conv1.weight"], sd["conv1.weight"])
    with pytest.raises(InputError) as err:
        load_weights_file(tmp_path / "missing.pth")
    assert err.value.field == "pretrained_weights"
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable"):
        load_weights_file(junk)
    notsd = tmp_path / "list.pth"
    torch.save([1, 2, 3], notsd)
    with pytest.raises(InputError, match="no state_dict"):
        load_weights_file(notsd)
