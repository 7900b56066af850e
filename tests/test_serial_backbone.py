"""SerialBackbone: the code grammar, and that known codes rebuild the torchvision ResNets."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from nas_models.serial_backbone import (
    SerialBackbone,
    encode_code,
    stage_channels,
    stage_strides,
    validate_block,
    validate_code,
)
from core.errors import InputError


def _n_params(model: torch.nn.Module, skip_prefix: str = "fc.") -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(skip_prefix))


@pytest.mark.parametrize(
    "code, expected",
    [
        ("1", [[1]]),
        ("2", [[2]]),
        ("11-21-21-21", [[1, 1], [2, 1], [2, 1], [2, 1]]),
        ("111-2111-211111-211", [[1, 1, 1], [2, 1, 1, 1], [2, 1, 1, 1, 1, 1], [2, 1, 1]]),
        ("1-1-1-1-1-1", [[1]] * 6),
        ("12-1", [[1, 2], [1]]),
    ],
)
def test_validate_code_accepts(code: str, expected: list[list[int]]) -> None:
    assert validate_code(code) == expected
    assert encode_code(expected) == code


@pytest.mark.parametrize(
    "code",
    ["", "-", "11--21", "-11-21", "11-21-", "113-21", "11 21", "a", "11_21", "1-1-1-1-1-1-1",
     "1" * 61, 1121, None],
)
def test_validate_code_rejects(code: object) -> None:
    with pytest.raises(InputError) as err:
        validate_code(code)  # type: ignore[arg-type]
    assert err.value.field == "backbone_code"


def test_validate_code_limits() -> None:
    assert len(validate_code("1" * 60)) == 1
    assert len(validate_code("1-1-1-1-1-1-1", max_stages=7)) == 7
    with pytest.raises(InputError, match="at most 3"):
        validate_code("1-1-1-1", max_stages=3)


def test_block_names() -> None:
    assert validate_block("bottleneck") == "Bottleneck"
    assert validate_block("ResNeXt") == "ResNeXt"
    with pytest.raises(InputError) as err:
        SerialBackbone("11", block="Mobile")
    assert err.value.field == "block"
    with pytest.raises(InputError) as err:
        SerialBackbone("11", base_width=0)
    assert err.value.field == "base_width"


def test_resnet18_layout() -> None:
    net = SerialBackbone("11-21-21-21", "BasicBlock")
    assert net.out_channels == [64, 128, 256, 512]
    assert net.strides == [4, 8, 16, 32] == stage_strides("11-21-21-21")
    assert stage_channels("11-21-21-21") == net.out_channels
    assert _n_params(net) == _n_params(torchvision.models.resnet18(weights=None))
    names = set(net.state_dict())
    assert {
        "stem.conv.weight",
        "stem.bn.running_mean",
        "stages.0.1.conv2.weight",
        "stages.1.0.downsample.0.weight",
    } <= names
    assert "stages.0.0.downsample.0.weight" not in names  # 64 -> 64, stride 1: identity shortcut


def test_resnet50_and_resnext50_layout() -> None:
    code = "111-2111-211111-211"
    net = SerialBackbone(code, "Bottleneck")
    assert net.out_channels == [256, 512, 1024, 2048]
    assert _n_params(net) == _n_params(torchvision.models.resnet50(weights=None))
    assert "stages.0.0.downsample.0.weight" in net.state_dict()  # 64 -> 256 channels
    nxt = SerialBackbone(code, "ResNeXt")
    assert nxt.out_channels == [256, 512, 1024, 2048]
    assert _n_params(nxt) == _n_params(torchvision.models.resnext50_32x4d(weights=None))


def test_frozen_stem() -> None:
    net = SerialBackbone("11-21", frozen_stem=True)
    assert not any(p.requires_grad for p in net.stem.parameters())
    assert all(p.requires_grad for p in net.stages.parameters())


codes = st.lists(st.lists(st.sampled_from([1, 2]), min_size=1, max_size=3), min_size=1, max_size=6)


@settings(max_examples=15, deadline=None)
@given(layout=codes, block=st.sampled_from(["BasicBlock", "Bottleneck", "ResNeXt"]))
def test_random_codes_build_and_run(layout: list[list[int]], block: str) -> None:
    code = encode_code(layout)
    assert validate_code(code) == layout
    net = SerialBackbone(code, block, base_width=4).eval()
    size = 32
    with torch.no_grad():
        feats = net(torch.zeros(1, 3, size, size))
    assert list(feats) == [str(s) for s in range(len(layout))]
    expansion = 1 if block == "BasicBlock" else 4
    hw, stride = 8, 4  # after the stride-4 stem
    for s, stage in enumerate(layout):
        for b in stage:
            stride *= b
            hw = math.ceil(hw / b)
        f = feats[str(s)]
        assert f.shape == (1, 4 * 2**s * expansion, hw, hw)
        assert net.out_channels[s] == f.shape[1]
        assert net.strides[s] == stride
