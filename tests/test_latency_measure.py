"""Table building (ORT and eager torch, cached), end-to-end timing, the latency predictor, and
the BlazeFace space's op enumeration. Timings use tiny settings: these tests check wiring and
bookkeeping, the benchmark reports figures."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import latency.measure as measure
import latency.predictor as predictor_mod
from latency.measure import (TimingConfig, build_table, cached_table_path, measure_network_ms,
                             op_module, space_ops, ssd_core, time_op)
from latency.predictor import (LatencyPredictor, Sample, fit_and_evaluate, group_of,
                               predictor_path)
from core.errors import InputError
from latency.table import LatencyTable, key_of
from nas_models import blazeface as bf

FAST = TimingConfig(warmup=1, rounds=2, number=2, passes=1)


def small_ops() -> list[dict]:
    shape = {"n": 1, "c_in": 4, "h": 8, "w": 8}
    return [
        {"op": "conv", "flag_bias": 0, "flag_relu": 0, **shape, "c_out": 8, "groups": 1, "k": 3,
         "pad": 1, "stride": 2, "dilation": 1},
        {"op": "conv", "flag_bias": 1, "flag_relu": 1, **shape, "c_out": 4, "groups": 4, "k": 5,
         "pad": 2, "stride": 1, "dilation": 1},
        {"op": "batch_norm", "active_type": "none", **shape},
        {"op": "batch_norm", "active_type": "relu", **shape},
        {"op": "activation", "act": "relu", **shape},
        {"op": "hardswish", **shape},
        {"op": "eltwise", "elt_type": "add", **shape},
        {"op": "pooling", "flag_global_pooling": 0, **shape, "k": 2, "pad": 0, "stride": 2,
         "ceil_mode": 1, "pool_type": "max"},
        {"op": "pooling", "flag_global_pooling": 1, **shape, "k": 1, "pad": 0, "stride": 1,
         "ceil_mode": 0, "pool_type": 2},
        {"op": "softmax", "axis": 2, "n": 1, "c_in": 6, "h": 2, "w": 1},
    ]


def test_op_modules_do_their_op() -> None:
    expected = [(1, 8, 4, 4), (1, 4, 8, 8), (1, 4, 8, 8), (1, 4, 8, 8), (1, 4, 8, 8), (1, 4, 8, 8),
                (1, 4, 8, 8), (1, 4, 4, 4), (1, 4, 1, 1), (1, 6, 2, 1)]
    for op, shape in zip(small_ops(), expected):
        module, x = op_module(op)
        with torch.no_grad():
            y = module(x)
        assert tuple(y.shape) == shape, key_of(op)
    module, x = op_module(small_ops()[-1])
    assert torch.allclose(module(x).sum(dim=2), torch.ones(1, 6, 1))
    with pytest.raises(InputError, match="groups 3 must divide c_in 4"):
        op_module({**small_ops()[0], "groups": 3})


def test_build_table_times_each_op_once_then_reuses_cache(tmp_path: Path, monkeypatch) -> None:
    ops = small_ops() * 2  # duplicates are timed once
    table = build_table(ops, tmp_path, "unit-space", threads=1, timing=FAST, progress=False)
    keys = [key_of(op) for op in small_ops()]
    assert list(table) == keys and all(table.lookup(k) > 0 for k in keys)
    path = cached_table_path(tmp_path, "unit-space", "onnxruntime", 1)
    assert table.path == path and LatencyTable.read(path) == table
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["fingerprint"]["threads"] == 1 and meta["timed_now"] == len(keys)

    calls: list[list[str]] = []

    def spy(todo, *args, **kwargs):
        calls.append(list(todo))
        return {k: 0.5 for k in todo}

    monkeypatch.setattr(measure, "time_ops", spy)
    again = build_table(ops, tmp_path, "unit-space", threads=1, timing=FAST, progress=False)
    assert again == table and calls == []  # second build: nothing timed
    extra = {**small_ops()[4], "c_in": 5}
    grown = build_table([*ops, extra], tmp_path, "unit-space", threads=1, timing=FAST, progress=False)
    assert calls == [[key_of(extra)]] and len(grown) == len(keys) + 1
    # Another thread count or backend is another table.
    assert cached_table_path(tmp_path, "unit-space", "onnxruntime", 2) != path
    assert cached_table_path(tmp_path, "unit-space", "torch", 1) != path
    with pytest.raises(InputError, match="space_id"):
        cached_table_path(tmp_path, "../escape", "onnxruntime", 1)


def test_torch_backend_and_bad_arguments() -> None:
    assert time_op(small_ops()[0], "torch", 1, FAST) > 0
    with pytest.raises(InputError, match="backend"):
        time_op(small_ops()[0], "tensorrt", 1, FAST)
    with pytest.raises(InputError, match="threads"):
        time_op(small_ops()[0], "torch", 0, FAST)
    with pytest.raises(InputError, match="timing.rounds"):
        TimingConfig(rounds=0)


def test_measure_network_both_backends_restores_modes() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).train()
    x = torch.randn(1, 3, 16, 16)
    for backend in ("onnxruntime", "torch"):
        assert measure_network_ms(model, x, backend, 1, FAST) > 0
    assert all(m.training for m in model.modules())
    with pytest.raises(InputError, match="example"):
        measure_network_ms(model, [x], "torch", 1, FAST)


# --- predictor ----------------------------------------------------------------------------

def synthetic(seed: int = 0, n_arch: int = 160) -> tuple[LatencyTable, list[Sample]]:
    """A table of random op latencies and architectures whose 'measured' latency is what a
    real runtime does to the sum: per-type discounts, a fixed cost, 1 % noise."""
    rng = random.Random(seed)
    pool = []
    for c in (4, 8, 12, 16, 24):
        for h in (8, 16, 32):
            shape = {"n": 1, "c_in": c, "h": h, "w": h}
            pool += [
                {"op": "conv", "flag_bias": 0, "flag_relu": 0, **shape, "c_out": c, "groups": c,
                 "k": 3, "pad": 1, "stride": 1, "dilation": 1},
                {"op": "conv", "flag_bias": 0, "flag_relu": 0, **shape, "c_out": 2 * c, "groups": 1,
                 "k": 1, "pad": 0, "stride": 1, "dilation": 1},
                {"op": "batch_norm", "active_type": "none", **shape},
                {"op": "activation", "act": "relu", **shape},
            ]
    table = LatencyTable({key_of(op): rng.uniform(0.005, 0.2) for op in pool})
    factor = {"conv_dw": 0.3, "conv_1x1": 0.8, "batch_norm": 0.0, "activation": 0.2}
    samples = []
    for i in range(n_arch):
        ops = rng.sample(pool, rng.randint(10, 40))
        true = 0.05 + sum(factor[group_of(op)] * table.lookup(op) for op in ops)
        samples.append(Sample(f"arch{i}", ops, true * (1 + rng.uniform(-0.01, 0.01))))
    return table, samples


def test_correction_beats_raw_sum_on_held_out_only() -> None:
    table, samples = synthetic()
    fit, holdout = samples[:40], samples[40:]
    pred = fit_and_evaluate(table, fit, holdout)
    acc = pred.accuracy
    assert acc["holdout_ids"] == [s.id for s in holdout] and acc["n_holdout"] == 120
    assert pred.fit_ids == [s.id for s in fit] and not set(pred.fit_ids) & set(acc["holdout_ids"])
    assert acc["within_10pct"] >= 0.95 > acc["raw_table_sum"]["within_10pct"]
    assert acc["rmse_ms"] < acc["raw_table_sum"]["rmse_ms"] / 5
    linear = fit_and_evaluate(table, fit, holdout, kind="linear")
    assert linear.accuracy["rmse_ms"] < acc["raw_table_sum"]["rmse_ms"]
    with pytest.raises(InputError, match="in both the fitting and the held-out set"):
        fit_and_evaluate(table, fit, holdout + fit[:1])
    with pytest.raises(InputError, match="at least 100 held-out"):
        fit_and_evaluate(table, fit, holdout[:99])
    with pytest.raises(InputError, match="was used for fitting"):
        pred.evaluate(fit[:3])


def test_predictor_json_round_trip(tmp_path: Path) -> None:
    table, samples = synthetic(1)
    table.save(tmp_path / "space.txt")
    pred = fit_and_evaluate(table, samples[:40], samples[40:])
    path = pred.save()
    assert path == predictor_path(tmp_path / "space.txt") == tmp_path / "space.predictor.json"
    data = json.loads(path.read_text())  # plain JSON, nothing pickled
    assert data["table_file"] == "space.txt" and data["accuracy"]["n_holdout"] == 120
    loaded = LatencyPredictor.load(path)  # finds its table beside it
    assert loaded.coef == pred.coef and loaded.accuracy == pred.accuracy
    for s in samples[:5]:
        assert loaded.predict(s.ops) == pytest.approx(pred.predict(s.ops), rel=1e-12)
    changed = LatencyTable({**table.entries, next(iter(table)): 9.0})
    with pytest.raises(InputError, match="differs"):
        LatencyPredictor.load(path, changed)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not a JSON latency predictor"):
        LatencyPredictor.load(tmp_path / "bad.json")


# --- BlazeFace ----------------------------------------------------------------------------

def test_space_ops_cover_random_architectures() -> None:
    keys = {key_of(op) for op in space_ops()}
    assert len(keys) == len(space_ops())
    rng = random.Random(7)
    token_lists = [bf.init_tokens(), bf.init_tokens(latency_mode=True)]
    token_lists += [[rng.randrange(r) for r in bf.range_table()] for _ in range(14)]
    for tokens in token_lists:
        missing = {key_of(op) for op in bf.ops_of_tokens(tokens)} - keys
        assert not missing, (tokens, sorted(missing)[:3])
    with pytest.raises(InputError, match="image_size"):
        space_ops(image_size=100)


def test_ssd_core_is_what_the_ops_describe() -> None:
    model = bf.build_from_tokens(bf.init_tokens()).eval()
    core = ssd_core(model)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        boxes, scores = core(x)
    softmax = [op for op in bf.ops_of_model(model) if op["op"] == "softmax"][0]
    assert tuple(scores.shape) == (1, softmax["c_in"], softmax["h"])  # 896 priors x 2 classes
    assert boxes.shape == (1, softmax["c_in"], 4)
    assert torch.allclose(scores.sum(-1), torch.ones(1, softmax["c_in"]))
    assert measure_network_ms(core, x, "onnxruntime", 1, FAST) > 0


def test_fit_predictor_wiring(tmp_path: Path, monkeypatch) -> None:
    # Real ops of real architectures; fake clocks (a known linear law) so this runs in seconds.
    def fake_table(ops, cache_dir, space_id, *args, **kwargs):
        table = LatencyTable({key_of(op): 0.001 + 1e-6 * (hash(key_of(op)) % 997) for op in ops})
        table.save(Path(cache_dir) / f"{space_id}.txt")
        return table

    def fake_networks(models, *args, **kwargs):
        return {name: 0.1 + 0.001 * len(name) for name in models}

    monkeypatch.setattr(predictor_mod, "build_table", fake_table)
    monkeypatch.setattr(predictor_mod, "measure_networks_ms", fake_networks)
    pred = predictor_mod.fit_predictor(tmp_path, n_fit=12, n_holdout=6, min_holdout=6,
                                       progress=False)
    acc = pred.accuracy
    assert acc["n_fit"] == 12 and acc["n_holdout"] == 6
    assert not set(pred.fit_ids) & set(acc["holdout_ids"])
    assert (tmp_path / "blazeface-128px.predictor.json").is_file()
    assert all(len(h["tokens"]) == 9 for h in pred.holdout)
    assert np.isfinite(acc["rmse_ms"])


def test_fit_predictor_retest_measures_the_holdout_twice(tmp_path: Path, monkeypatch) -> None:
    calls: list[int] = []

    def fake_table(ops, cache_dir, space_id, *args, **kwargs):
        table = LatencyTable({key_of(op): 0.001 + 1e-6 * (hash(key_of(op)) % 997) for op in ops})
        table.save(Path(cache_dir) / f"{space_id}.txt")
        return table

    def fake_networks(models, *args, **kwargs):
        calls.append(len(models))
        slow = 1.3 if len(calls) > 1 else 1.0  # the second session runs 30 % slower: a noisy machine
        return {name: slow * (0.1 + 0.001 * len(name)) for name in models}

    monkeypatch.setattr(predictor_mod, "build_table", fake_table)
    monkeypatch.setattr(predictor_mod, "measure_networks_ms", fake_networks)
    pred = predictor_mod.fit_predictor(tmp_path, n_fit=12, n_holdout=6, min_holdout=6, progress=False,
                                       retest=True)
    assert calls == [18, 6]  # everything once, then the held-out networks only
    retest = pred.accuracy["retest"]
    assert retest["n"] == 6 and retest["test_retest"]["within_10pct"] == 0.0
    assert retest["verdict"].startswith("not judged")
    assert all(h["retest_ms"] > h["measured_ms"] for h in pred.holdout)


def test_retest_and_verdict() -> None:
    first = {f"n{i}": 1.0 + i / 10 for i in range(10)}
    second = {k: v * (1.05 if i % 2 else 0.97) for i, (k, v) in enumerate(first.items())}
    predicted = {k: v * (1.2 if i < 3 else 1.0) for i, (k, v) in enumerate(first.items())}  # 3 misses
    check = predictor_mod.retest_of(first, second, predicted)
    assert check["test_retest"]["within_10pct"] == 1.0
    assert check["predictor_vs_first"]["within_10pct"] == pytest.approx(0.7)
    assert check["median_abs_rel_change"] == pytest.approx(0.04)
    assert predictor_mod.verdict_of(check).startswith("30 points below the ceiling")
    level = predictor_mod.retest_of(first, second, first)
    assert predictor_mod.verdict_of(level).startswith("at the ceiling")
    noisy = predictor_mod.retest_of(first, {k: 1.5 * v for k, v in first.items()}, first)
    assert predictor_mod.verdict_of(noisy).startswith("not judged")
    with pytest.raises(InputError, match="retest"):
        predictor_mod.retest_of(first, {"other": 1.0})
