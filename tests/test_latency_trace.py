"""Ops read off any network's forward pass (latency.trace), the table op types they need, the
search spaces' samplers and the any-space predictor fit. Timings are tiny or faked: the
benchmark (benchmarks/latency_predictor.py --space ...) reports the figures."""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import latency.predictor as predictor_mod
from core.errors import InputError
from latency.measure import TimingConfig, op_module
from latency.predictor import LatencyPredictor, LatencySpace, Sample, fit_space_predictor
from latency.table import LatencyTable, key_of, parse_key
from latency.trace import ops_of_network
from latency_fixtures import spos_predictor

FAST = TimingConfig(warmup=1, rounds=2, number=2, passes=1)


class Mixed(nn.Module):
    """One of each kernel the recorder maps, several of them functional (no module to hook)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(4, 4, 5, padding=2, groups=4)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))                     # 1x8x8x8
        y = y + y * 1.0                                           # same-shape add (the mul is untabled)
        even, odd = y[:, 0::2], y[:, 1::2]                        # two channel slices of 4
        y = torch.cat((even, self.dw(odd)), 1)                    # concat of 2 -> 8 channels
        y = nn.functional.interpolate(self.pool(y), scale_factor=2.0, mode="nearest")
        y = y.index_select(1, torch.tensor([0, 0, 3, 5, 7, 1, 2, 4]))
        return self.fc(y.mean((2, 3)))


def test_trace_maps_module_and_functional_kernels() -> None:
    model = Mixed().train()
    traced = ops_of_network(model, torch.randn(1, 3, 16, 16))
    assert all(m.training for m in model.modules())  # flags restored
    kinds = [op["op"] for op in traced.ops]
    assert kinds == ["conv", "batch_norm", "activation", "eltwise", "slice", "slice", "conv", "concat",
                     "pooling", "resize", "gather", "pooling", "fc"]
    conv, _, act, add, sl, _, dw, cat, pool, up, gather, gap, fc = traced.ops
    assert (conv["c_in"], conv["h"], conv["c_out"], conv["k"], conv["stride"], conv["pad"], conv["flag_bias"]) \
        == (3, 16, 8, 3, 2, 1, 0)
    assert (dw["groups"], dw["c_in"], dw["k"], dw["flag_bias"]) == (4, 4, 5, 1)
    assert act["act"] == "relu" and add["c_in"] == 8 and add["h"] == 8
    assert (sl["c_in"], sl["c_out"], sl["stride"]) == (8, 4, 2)
    assert (cat["c_in"], cat["inputs"], cat["h"]) == (8, 2, 8)
    assert (pool["k"], pool["stride"], pool["pool_type"], pool["flag_global_pooling"]) == (2, 2, "max", 0)
    assert (up["h"], up["scale"]) == (4, 2)
    assert (gather["c_in"], gather["c_out"]) == (8, 8)
    assert (gap["flag_global_pooling"], gap["pool_type"], gap["h"]) == (1, "avg", 8)
    assert (fc["c_in"], fc["c_out"], fc["flag_bias"], fc["n"]) == (8, 5, 1, 1)
    assert traced.untabled == {"mul": 1}


def test_every_traced_op_is_a_table_key_with_a_module_of_its_shape() -> None:
    traced = ops_of_network(Mixed(), torch.randn(1, 3, 16, 16))
    for op in traced.ops:
        key = key_of(op)
        assert key_of(parse_key(key)) == key
        module, x = op_module(key)
        with torch.no_grad():
            y = module(x)
        if op["op"] in ("slice", "gather"):
            assert y.shape[1] == op["c_out"]
        if op["op"] == "resize":
            assert y.shape[2] == op["h"] * op["scale"]
        if op["op"] == "concat":
            assert y.shape == x.shape
    with pytest.raises(InputError, match="does not fit c_in"):
        op_module("slice,1,8,4,4,5,2")
    with pytest.raises(InputError, match="must divide c_in"):
        op_module("concat,1,9,4,4,2")
    with pytest.raises(InputError, match="fc key has 4 fields"):
        parse_key("fc,1,1,8")


class Reductions(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean() + x[1:].sum()  # a full mean, a batch slice: no table op, and no crash


def test_trace_counts_kernels_it_does_not_table() -> None:
    traced = ops_of_network(Reductions(), torch.randn(2, 3, 4, 4))
    assert traced.ops == () and traced.untabled == {"mean": 1, "sum": 1, "add": 1}


def test_trace_refuses_what_a_table_cannot_key() -> None:
    with pytest.raises(InputError, match="not square"):
        ops_of_network(nn.Conv2d(3, 4, (3, 1)), torch.randn(1, 3, 8, 8))
    with pytest.raises(InputError, match="example"):
        ops_of_network(nn.Linear(3, 4), torch.randn(2, 3))


@pytest.mark.parametrize("which", ["prune-ea", "spos", "spnas"])
def test_search_spaces_sample_distinct_networks_their_builders_run(which: str) -> None:
    if which == "prune-ea":
        from tasks.prune_ea.prune_search import latency_space
        space, expect = latency_space(20), {"gather", "fc", "eltwise"}
    elif which == "spos":
        from tasks.spos.search import latency_space
        space, expect = latency_space("small"), {"slice", "concat", "fc", "conv"}
    else:
        from params.models import DetectorModel
        from strategies.serial import check_code
        from tasks.spnas.detectors import latency_space
        space, expect = latency_space(DetectorModel()), {"resize", "eltwise", "pooling"}
    archs = space.sample(6, seed=3)
    assert archs == space.sample(6, seed=3) != space.sample(6, seed=4)
    assert len({space.describe(a) for a in archs}) == 6
    if which == "spnas":
        for code in archs:
            check_code(code)
    torch.manual_seed(0)
    seen: Counter[str] = Counter()
    for arch in archs[:2]:
        traced = ops_of_network(*space.build(arch))
        seen.update(op["op"] for op in traced.ops)
    assert expect <= set(seen)


def test_predictor_fits_only_the_groups_its_networks_run() -> None:
    rng = random.Random(0)
    pool = [{"op": "fc", "flag_bias": 1, "n": 1, "c_in": c, "c_out": 10} for c in (8, 16, 32, 64)]
    pool += [{"op": "concat", "n": 1, "c_in": c, "h": 8, "w": 8, "inputs": 2} for c in (8, 16, 32)]
    table = LatencyTable({key_of(op): rng.uniform(0.01, 0.1) for op in pool})
    samples = [Sample(f"a{i}", ops, 0.02 + 0.5 * sum(table.lookup(o) for o in ops))
               for i, ops in enumerate(rng.sample(pool, rng.randint(2, 6)) for _ in range(30))]
    pred = LatencyPredictor.fit(table, samples[:12])
    assert list(pred.coef) == ["fc", "concat", "n_ops"]
    assert pred.predict(samples[20].ops) == pytest.approx(samples[20].measured_ms, rel=1e-6)
    conv = {"op": "conv", "flag_bias": 0, "flag_relu": 0, "n": 1, "c_in": 8, "h": 8, "w": 8, "c_out": 8,
            "groups": 1, "k": 3, "pad": 1, "stride": 1, "dilation": 1}
    wider = LatencyTable({**table.entries, key_of(conv): 0.05})
    with pytest.raises(InputError, match="without any conv op"):
        LatencyPredictor(wider, pred.coef, pred.intercept).predict([conv])
    with pytest.raises(InputError, match="n_ops included"):
        LatencyPredictor(table, {"fc": 1.0}, 0.0)


def test_fit_space_predictor_wiring(tmp_path: Path, monkeypatch) -> None:
    # A toy space of conv stacks; real traced ops, a real (torch-backend) table of them, and a
    # fake clock for whole networks (a known law) so the fit is exact and the test fast.
    def build(width: int) -> tuple[nn.Module, torch.Tensor]:
        return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                             nn.Conv2d(width, 4, 1)), torch.randn(1, 3, 8, 8)

    built: list[int] = []

    def sample(count: int, seed: int) -> list[int]:
        return random.Random(seed).sample(range(1, 200), count)

    def fake_networks(models, *args, **kwargs):
        out = {}
        for name in models:
            module, _ = models[name]  # built lazily, one at a time
            built.append(module[0].out_channels)
            out[name] = 0.05 + 0.001 * module[0].out_channels
        return out

    monkeypatch.setattr(predictor_mod, "measure_networks_ms", fake_networks)
    space = LatencySpace("toy-8px", build, sample, describe=lambda w: f"w{w}", note="toy conv stacks")
    pred = fit_space_predictor(space, tmp_path, n_fit=12, n_holdout=6, min_holdout=6, backend="torch",
                               table_timing=FAST, progress=False, retest=True)
    acc = pred.accuracy
    assert acc["n_fit"] == 12 and acc["n_holdout"] == 6 and acc["untabled_kernels"] == {}
    assert len(built) == 18 + 6  # every network once, the held-out ones again for the retest
    assert all(h["arch"].startswith("w") for h in pred.holdout)
    assert len(pred.table) == 4 * 18  # conv, bn, relu, 1x1 conv per distinct width
    assert acc["retest"]["test_retest"]["within_10pct"] == 1.0
    assert "toy conv stacks" in pred.note and (tmp_path / f"{Path(pred.table.path).stem}.predictor.json").is_file()
    assert np.isfinite(acc["rmse_ms"])
    dup = LatencySpace("toy-8px", build, sample, describe=lambda w: "same")
    with pytest.raises(InputError, match="distinct ids"):
        fit_space_predictor(dup, tmp_path, n_fit=12, n_holdout=6, min_holdout=6, backend="torch", progress=False)


@pytest.mark.parametrize("which", ["spos", "prune-ea"])
def test_listed_space_ops_cover_every_network_of_the_space(which: str) -> None:
    if which == "spos":
        from tasks.spos.search import latency_space
        space, extremes = latency_space("small"), []
    else:
        from nas_models.prune_resnet import encoding_length
        from tasks.prune_ea.prune_search import latency_space
        space, extremes = latency_space(20), ["0" * encoding_length(20), "1" * encoding_length(20)]
    keys = {key_of(op) for op in space.ops()}
    for arch in [*space.sample(8, seed=2), *extremes]:
        assert {key_of(op) for op in ops_of_network(*space.build(arch)).ops} <= keys, arch


def test_searches_take_a_predictor_from_another_device(tmp_path: Path) -> None:
    from tasks.spos.search import path_latency

    path = spos_predictor(tmp_path)
    latency = path_latency("small", 10, str(path))
    assert latency.source.startswith("predicted for cpu by ")
    predictor = LatencyPredictor.load(path)
    arch = [1, 3] * 10
    module, x = latency.build(arch)
    assert latency(arch) == pytest.approx(predictor.predict(ops_of_network(module, x).ops))
    assert latency.timed == 1 and latency(arch) == latency(arch) and latency.timed == 1
    with pytest.raises(InputError, match="search.latency_predictor: .*lacks op fc,0,1,256,7"):
        path_latency("small", 7, str(path))  # fitted for 10 classes: the 7-class head is not in it


def test_a_predictor_for_another_space_fails_before_the_search(tmp_path: Path) -> None:
    from params.models import CifarData, EvolutionParams
    from tasks.cifar.preflight import check_cifar_data
    from tasks.prune_ea.prune_search import encoding_latency
    from tasks.spos.preflight import check_spos_latency

    path = spos_predictor(tmp_path)
    with pytest.raises(InputError, match="search.latency_predictor: .*lacks op .* of the prune-resnet20-32px-10cls space"):
        encoding_latency(20, 10, str(path))
    with pytest.raises(InputError, match="search.max_latency_ms: 0.001 ms is below .*predicted for cpu"):
        check_spos_latency("small", 0.001, str(path))
    # The data's class count decides the head the predictor must cover (embedded sets: 10).
    check_spos_latency("small", 1e5, str(path), num_classes=check_cifar_data(CifarData()))
    with pytest.raises(InputError, match="search.latency_predictor: .*lacks op fc,0,1,256,3"):
        check_spos_latency("small", 1e5, str(path), num_classes=3)
    with pytest.raises(ValueError, match="latency_predictor"):
        EvolutionParams(latency_predictor=str(tmp_path / "nowhere.json"), max_latency_ms=1.0)
    with pytest.raises(ValueError, match="only used with max_latency_ms"):
        EvolutionParams(latency_predictor=str(path))
    assert EvolutionParams(latency_predictor=str(path), max_latency_ms=1.0).latency_predictor == str(path)
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(InputError, match="search.latency_predictor: .*not a spnas-latency-predictor"):
        encoding_latency(20, 10, str(tmp_path / "junk.json"))


def test_prune_ea_takes_a_predictor_whose_table_lists_its_space(tmp_path: Path) -> None:
    from tasks.prune_ea.prune_search import encoding_latency, latency_space

    space = latency_space(20)
    rng = random.Random(3)
    table = LatencyTable({key_of(op): rng.uniform(0.001, 0.01) for op in space.ops()}, device="edge box")
    table.save(tmp_path / "prune.txt")
    samples = []
    for arch in space.sample(20, seed=1):
        ops = list(ops_of_network(*space.build(arch)).ops)
        samples.append(Sample(space.describe(arch), ops, 0.05 + 0.2 * table.sum(ops)))
    path = LatencyPredictor.fit(table, samples).save(tmp_path / "prune.predictor.json")
    latency = encoding_latency(20, 10, str(path))  # 24 fresh random encodings: all covered
    assert latency.source.startswith("predicted for edge box")
    encoding = space.sample(1, seed=99)[0]
    ops = ops_of_network(*space.build(encoding)).ops
    assert latency(encoding) == pytest.approx(0.05 + 0.2 * table.sum(ops), rel=1e-6)
