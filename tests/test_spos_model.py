"""SPOS ShuffleNetV2 space: presets, choice validation, supernet ↔ subnet weight sharing (same
function, only the path's tensors train), descs, and the per-op MACs table against whole-model
counts (small preset, and the released architecture on the paper preset)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import latency.macs_table as macs_table_mod
from latency.flops import count_macs_params
from latency.macs_table import MacsTable, build_macs_table, build_or_load
from nas_models.registry import build_from_desc
from nas_models.spos_shufflenet import (
    PRESETS,
    Preset,
    SposSubnet,
    build_subnet,
    build_supernet,
    get_preset,
    path_parameters,
    subnet_from_supernet,
    supernet_key,
    validate_choices,
)
from core.errors import InputError
from strategies.path_sampler import FlopsBinSampler

# Released SPOS architecture (Megvii SinglePathOneShot README and NNI's
# examples/nas/oneshot/spos/architecture_final.json): 323M FLOPs (MACs), 3.5M params.
RELEASED = [2, 1, 0, 1, 2, 0, 2, 0, 2, 0, 2, 3, 0, 0, 0, 0, 3, 2, 3, 3]
SMALL_INPUT = (1, 3, 32, 32)


def _paths(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4) for _ in range(20)] for _ in range(n)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batches here are a few 32 px images: a second OpenMP worker only adds wake-up stalls
    on a busy 2-core machine (up to ~0.2 s per op, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_table() -> MacsTable:
    return build_macs_table("small", num_classes=10)


@pytest.fixture(scope="module")
def trained_like_supernet() -> torch.nn.Module:
    """Supernet whose BN running statistics have moved off their initial values."""
    torch.manual_seed(0)
    net = build_supernet("small").train()
    with torch.no_grad():
        for path in _paths(6, 1):
            net(torch.randn(8, 3, 32, 32) * 2 + 0.5, path)
    return net.eval()


# --- presets and choices ------------------------------------------------------------------


def test_presets() -> None:
    paper, small = PRESETS["paper"], PRESETS["small"]
    assert (paper.stem_channels, paper.stem_stride, paper.stage_blocks, paper.stage_channels,
            paper.last_channels, paper.input_size) == (16, 2, (4, 4, 8, 4), (64, 160, 320, 640),
                                                       1024, 224)
    assert small.input_size == 32 and sum(small.stage_blocks) == 20
    assert get_preset("small") is small and get_preset(small) is small
    with pytest.raises(InputError) as err:
        get_preset("large")
    assert err.value.field == "preset" and "paper" in str(err.value) and "small" in str(err.value)


@pytest.mark.parametrize(("change", "field"), [
    ({"stage_blocks": (4, 4, 8, 3)}, "preset.stage_blocks"),
    ({"stage_channels": (32, 64, 96)}, "preset.stage_channels"),
    ({"stage_channels": (32, 63, 96, 128)}, "preset.stage_channels"),
    ({"stage_channels": (32, 32, 96, 128)}, "preset.stage_channels"),
    ({"stem_stride": 3}, "preset.stem_stride"),
    ({"last_channels": 0}, "preset.last_channels"),
])
def test_bad_preset_fields(change: dict, field: str) -> None:
    fields = PRESETS["small"].__dict__ | {"name": "custom"} | change
    with pytest.raises(InputError) as err:
        Preset(**fields)
    assert err.value.field == field


@pytest.mark.parametrize("choices", [
    [0] * 19, [0] * 21, [0] * 19 + [4], [0] * 19 + [-1], [0] * 19 + [True], [0] * 19 + [1.0],
    "0" * 20, None, 3, np.zeros((4, 5), dtype=int), {"a": 1},
])
def test_bad_choices(choices: object) -> None:
    with pytest.raises(InputError) as err:
        validate_choices(choices)
    assert err.value.field == "choices"
    assert "20 integers in 0..3 (0 shufflenet 3x3, 1 5x5, 2 7x7, 3 xception)" in str(err.value)


def test_bad_choices_at_every_entry_point() -> None:
    net = build_supernet("small")
    for call in (lambda: build_subnet([0] * 19), lambda: net(torch.zeros(1, 3, 32, 32), [5] * 20),
                 lambda: subnet_from_supernet(net, [0] * 21), lambda: path_parameters(net, [9] * 20)):
        with pytest.raises(InputError) as err:
            call()
        assert err.value.field == "choices"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=20, max_size=20))
def test_valid_choices_round_trip(choices: list[int]) -> None:
    assert validate_choices(choices) == choices
    assert validate_choices(np.array(choices)) == choices


# --- supernet and subnets -----------------------------------------------------------------


def test_shapes_and_bn_affine() -> None:
    net = build_supernet("small", num_classes=7).eval()
    sub = build_subnet(RELEASED, "small", num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert net(x, RELEASED).shape == (2, 7)
        assert sub(x).shape == (2, 7)
    assert len(net.blocks) == 20 and all(len(b.choices) == 4 for b in net.blocks)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.affine for m in bns)  # the paper's supernet BN
    assert all(m.affine for m in sub.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # Stride-2 first block per stage, split/concat elsewhere.
    assert [b.choices[0].stride for b in net.blocks] == [2, 1, 1, 1, 2, 1, 1, 1,
                                                         2, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]


def test_subnet_from_supernet_is_the_same_function(trained_like_supernet: torch.nn.Module) -> None:
    net = trained_like_supernet
    x = torch.randn(4, 3, 32, 32)
    for path in _paths(5, 2) + [RELEASED]:
        sub = subnet_from_supernet(net, path)
        assert isinstance(sub, SposSubnet) and sub.choices == path and not sub.training
        with torch.no_grad():
            want, got = net(x, path), sub(x)
        # Same kernels on the same tensors: equal to float32 rounding (bitwise in practice).
        assert torch.allclose(want, got, rtol=1e-6, atol=1e-7)
        # Every subnet tensor is a supernet tensor under the mapped name.
        state = net.state_dict()
        for key, tensor in sub.state_dict().items():
            assert torch.equal(state[supernet_key(key, path)], tensor)


def test_channels_last_computes_the_same(trained_like_supernet: torch.nn.Module) -> None:
    # The split takes strided channel views, so it is layout-agnostic; channels_last makes
    # depthwise backward much faster on CPU (benchmarks/spos_step.py --channels-last).
    net, path = trained_like_supernet, RELEASED
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = net(x, path)
        net_cl = build_supernet("small")
        net_cl.load_state_dict(net.state_dict())
        net_cl = net_cl.to(memory_format=torch.channels_last).eval()
        got = net_cl(x.contiguous(memory_format=torch.channels_last), path)
    assert torch.allclose(want, got, rtol=1e-4, atol=1e-5)


def test_one_sgd_step_changes_exactly_the_path() -> None:
    torch.manual_seed(0)
    net = build_supernet("small").train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=4e-5)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    path_a = _paths(1, 3)[0]
    path_b = [(c + 1) % 4 for c in path_a]  # shares no block op with path_a
    for path in (path_a, path_b):  # the second step: path_a's momentum must not leak
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        buffers = {n: b.clone() for n, b in net.named_buffers() if "running" in n}
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x, path), y).backward()
        opt.step()
        changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
        assert changed == path_parameters(net, path)
        moved = {n.rsplit(".", 1)[0] for n, b in net.named_buffers()
                 if "running" in n and not torch.equal(b, buffers[n])}
        off_path = [m for m in moved if m.startswith("blocks.")
                    and not any(m.startswith(f"blocks.{i}.choices.{c}.") for i, c in enumerate(path))]
        assert moved and not off_path  # BN statistics move only on the path too
    assert path_parameters(net, path_a).isdisjoint(
        {n for n in path_parameters(net, path_b) if n.startswith("blocks.")})


def test_desc_round_trip() -> None:
    torch.manual_seed(1)
    sub = build_subnet(RELEASED, "small", num_classes=10).eval()
    desc = json.loads(json.dumps(sub.desc))
    assert desc["type"] == "SposSubnet" and desc["choices"] == RELEASED and desc["preset"] == "small"
    again = build_from_desc(desc).eval()
    again.load_state_dict(sub.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(sub(x), again(x))
    minimal = build_from_desc({"type": "SposSubnet", "choices": RELEASED, "preset": "small",
                               "num_classes": 10})
    assert minimal.arch == sub.arch
    custom = Preset("tiny", 32, 8, 1, False, (4, 4, 8, 4), (16, 24, 32, 48), 64)
    rebuilt = build_from_desc(json.loads(json.dumps(build_subnet(RELEASED, custom).desc)))
    assert rebuilt.preset == custom


@pytest.mark.parametrize(("desc", "field"), [
    ({"type": "SposSubnet", "preset": "small"}, "desc.choices"),
    ({"type": "SposSubnet", "choices": [0] * 19}, "desc.choices"),
    ({"type": "SposSubnet", "choices": [0] * 20, "preset": "huge"}, "preset"),
    ({"type": "SposSubnet", "choices": [0] * 20, "num_classes": 0}, "desc.num_classes"),
    ({"type": "SposSubnet", "choices": [0] * 20, "width": 2}, "desc"),
])
def test_bad_desc(desc: dict, field: str) -> None:
    with pytest.raises(InputError) as err:
        build_from_desc(desc)
    assert err.value.field == field


# --- MACs table ---------------------------------------------------------------------------


def test_table_sums_equal_whole_model_counts(small_table: MacsTable) -> None:
    for path in _paths(10, 4) + [small_table.min_path(), small_table.max_path()]:
        macs, params = count_macs_params(build_subnet(path, "small"), SMALL_INPUT)
        assert (small_table.macs(path), small_table.params(path)) == (macs, params)
    assert small_table.min_macs() == small_table.macs(small_table.min_path())
    assert small_table.max_macs() == small_table.macs(small_table.max_path())
    assert small_table.min_macs() < small_table.max_macs()
    assert len(small_table.per_block) == 20 and all(len(r) == 4 for r in small_table.per_block)


def test_table_feeds_the_bin_sampler(small_table: MacsTable) -> None:
    low, high = small_table.min_macs(), small_table.max_macs()
    sampler = FlopsBinSampler(small_table.per_block, small_table.fixed_macs, low, high, bins=5)
    rng = random.Random(0)
    for _ in range(50):
        path = sampler.sample(rng)
        assert sampler.cost(path) == small_table.macs(path)
        assert low <= small_table.macs(path) <= high


def test_table_save_load_and_staleness(small_table: MacsTable, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = small_table.save(tmp_path / "macs.json")
    assert MacsTable.load(path) == small_table
    assert MacsTable.load(path, "small", 10) == small_table
    with pytest.raises(InputError) as err:
        MacsTable.load(path, "paper", 1000)
    assert err.value.field == "macs_table" and "'small'" in str(err.value)
    with pytest.raises(InputError):
        MacsTable.load(path, "small", 100)

    def no_build(*args: object, **kwargs: object) -> MacsTable:
        raise AssertionError("a matching table must be reused")

    monkeypatch.setattr(macs_table_mod, "build_macs_table", no_build)
    assert build_or_load(path, "small", 10) == small_table
    monkeypatch.undo()
    rebuilt = build_or_load(path, "small", 5)  # stale: other class count → rebuilt and saved
    assert rebuilt.num_classes == 5 and MacsTable.load(path).num_classes == 5

    bad = tmp_path / "bad.json"
    for text in ("not json", json.dumps({"format": "something else"}),
                 json.dumps(small_table.to_dict() | {"per_block_macs": [[1, 2, 3, 4]]})):
        bad.write_text(text)
        with pytest.raises(InputError) as err:
            build_or_load(bad, "small", 10)
        assert err.value.field == "macs_table"
    with pytest.raises(InputError):
        MacsTable.load(tmp_path / "missing.json")


def test_released_architecture_on_the_paper_preset() -> None:
    # Megvii's table: 323M FLOPs (= MACs), 3.5M params at 224 px with 1000 classes.
    macs, params = count_macs_params(build_subnet(RELEASED, "paper", num_classes=1000),
                                     (1, 3, 224, 224))
    assert macs == pytest.approx(323e6, rel=0.02)
    assert params == pytest.approx(3.5e6, rel=0.03)
    table = build_macs_table("paper", num_classes=1000)
    assert (table.macs(RELEASED), table.params(RELEASED)) == (macs, params)
