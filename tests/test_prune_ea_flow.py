"""Real, small end-to-end runs of prune-ea/full: result.csv has one row per evaluated candidate,
pareto_front.csv is exactly the non-dominated set of result.csv, the networks really are that
small, the fronts per generation exist, and ResNet-56 runs through the same flow."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from export_checks import assert_files_agree, assert_reported_parity
from tasks.orchestration.tables import read_table

pytestmark = pytest.mark.slow

def _dominated(row, others) -> bool:
    return any(o["macs"] <= row["macs"] and o["acc"] >= row["acc"] and (o["macs"] < row["macs"] or o["acc"] > row["acc"])
               for o in others)


def test_prune_ea_end_to_end(prune_ea_d20: dict) -> None:
    """The run: conftest's prune_ea_d20 (2 generations of 4 after 6 random models, 2 retrained)."""
    import torch

    from latency.flops import count_macs_params
    from nas_models.prune_resnet import build_prune_resnet, channel_scores, keep_largest

    summary = prune_ea_d20
    run = Path(summary["run_dir"])
    result = read_table(run / "prune_search/result.csv")
    assert len(result) == 6 + 2 * 4 == summary["candidates"]
    assert set(result["status"]) == {"ok"} and (result["encoding"].str.len() == 464).all()
    assert (run / "prune_search/result.parquet").is_file()
    rows = result.to_dict("records")
    front = read_table(run / "prune_search/pareto_front.csv")
    expected = sorted(r["id"] for r in rows if not _dominated(r, rows))
    assert sorted(front["id"]) == expected
    for g in range(3):
        assert (run / f"prune_search/fronts/generation_{g}.csv").is_file()
    # The table's MACs/params are those of the physically built network.
    for r in rows[:3]:
        macs, params = count_macs_params(build_prune_resnet(20, r["encoding"]), (1, 3, 32, 32))
        assert (macs, params) == (r["macs"], r["params"])
        assert json.loads((run / f"prune_search/desc_{r['id']}.json").read_text())["encoding"] == r["encoding"]
    # search.channels = norm (the default): every candidate keeps its groups' largest-norm filters
    base = torch.load(run / "train_base/model_0.pth", map_location="cpu", weights_only=True)
    scores = channel_scores(base, 20)
    assert all(keep_largest(r["encoding"], 20, scores) == r["encoding"] for r in rows)

    comparison = read_table(run / "export/comparison.csv")
    assert comparison.iloc[0]["model"] == "baseline" and comparison.iloc[0]["r_c"] == 1.0
    assert comparison.iloc[0]["macs"] == 40_813_184
    assert (comparison["r_c"].iloc[1:] < 1).all() and (comparison["onnx_max_abs_diff"] < 1e-4).all()
    assert_reported_parity(comparison.to_dict("records"))
    for name in comparison["model"]:
        for f in ("model.onnx", "model.pt2", "model.yml"):
            assert (run / "export" / name / "inference_model" / f).is_file()
        assert_files_agree(run / "export" / name / "inference_model")
    assert len(list((run / "retrain").glob("model_retrained_*.pth"))) == len(comparison) - 1


def test_prune_ea_depth_56_same_flow(prune_ea_d56: dict) -> None:
    """...with its random control: as many random encodings, never chosen, and each denoting its
    network by the search's own channels rule (largest norm), so the two differ only in search."""
    import torch

    from nas_models.prune_resnet import channel_scores, keep_largest

    summary = prune_ea_d56
    run = Path(summary["run_dir"])
    everything = read_table(run / "prune_search/result.csv")
    result, control = everything[everything["origin"] != "control"], everything[everything["origin"] == "control"]
    assert len(result) == 4 and (result["encoding"].str.len() == 1136).all()
    assert summary["baseline_macs"] == 125_747_840
    assert len(control) == 4 and not control["chosen"].any() and "control_hv_ratio" in summary
    scores = channel_scores(torch.load(run / "train_base/model_0.pth", map_location="cpu", weights_only=True), 56)
    assert all(keep_largest(e, 56, scores) == e for e in everything["encoding"])


def test_prune_ea_latency_limit_end_to_end(prefect_api, tmp_path: Path) -> None:
    """A real run under a measured-latency limit below the base network's own latency, minimising
    latency: no trained candidate is over the limit, and each exported member is re-measured beside
    the figure the search admitted it on."""
    from flows.prune_ea import prune_ea
    from nas_models.prune_resnet import encoding_length
    from tasks.prune_ea.prune_search import encoding_latency

    base_ms = encoding_latency(20, 10)("1" * encoding_length(20))
    limit = round(0.85 * base_ms, 4)
    summary = prune_ea(params_file="params/prune_ea.yaml", overrides={
        "data": {"embedded": "digits"}, "base": {"epochs": 1}, "retrain": {"epochs": 1, "count": 1},
        "output_root": str(tmp_path),
        "search": {"num_generation": 1, "num_individual": 4, "random_models": 6, "finetune_steps": 1,
                   "max_latency_ms": limit, "objective": "latency"}})
    run = Path(summary["run_dir"])
    result = read_table(run / "prune_search/result.csv")
    trained = result[result["status"] == "ok"]
    assert len(trained) > 0 and (trained["latency_ms"] <= limit).all()
    comparison = read_table(run / "export/comparison.csv").to_dict("records")
    member = comparison[1]
    assert member["predicted_ms"] <= limit and member["measured_ms"] > 0
    assert member["prediction_flag"] == int(abs(member["prediction_error_pct"]) > 10)
    assert summary["latency_flags"] == sum(int(r.get("prediction_flag") == 1) for r in comparison)
