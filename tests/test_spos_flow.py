"""A real, small end-to-end run of spos/full: the winner respects the MACs limit, the tables and
architecture_final.json exist and agree, the rank check reports Kendall tau both ways, and the
exported winner is a BGR model when asked to be."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from export_checks import assert_files_agree, assert_reported_parity
from tasks.orchestration.tables import read_table

pytestmark = pytest.mark.slow

TINY = {"supernet": {"steps": 30, "macs_range": [3_400_000, 5_200_000], "bins": 3,
                     "warm_start": {"reference_steps": 4, "align_steps": 3}},
        "search": {"population": 4, "topk": 2, "mutation_count": 2, "crossover_count": 2, "generations": 2,
                   "macs_limit": 4_300_000, "recalib_batches": 2, "control": "random"},
        "rank_check": {"count": 3, "steps": 5}, "retrain": {"epochs": 1},
        "model": {"input_convention": "bgr255"}}


def test_spos_end_to_end(prefect_api, tmp_path: Path) -> None:
    from flows.spos import spos
    from latency.flops import count_macs_params
    from latency.predictor import LatencyPredictor
    from latency.trace import ops_of_network
    from latency_fixtures import spos_predictor
    from nas_models.spos_shufflenet import build_subnet

    # Latency from "another device": a made-up predictor, under a limit every path meets.
    predictor_file = spos_predictor(tmp_path)
    search = {**TINY["search"], "max_latency_ms": 1e5, "latency_predictor": str(predictor_file)}
    summary = spos(params_file="params/spos.yaml", overrides={**TINY, "search": search, "output_root": str(tmp_path)})
    run = Path(summary["run_dir"])
    final = json.loads((run / "search/architecture_final.json").read_text())
    assert final["macs"] <= 4_300_000 == final["macs_limit"]
    macs, params = count_macs_params(build_subnet(final["choices"], "small", num_classes=10), (1, 3, 32, 32))
    assert (macs, params) == (final["macs"], final["params"])  # the table's figures are the built network's

    everything = read_table(run / "search/output.csv")
    control = everything[everything["origin"] == "control"]
    table = everything[everything["origin"] != "control"]
    assert len(table) == 4 + 4 and set(table["status"]) == {"ok"}
    assert (table["macs"] <= 4_300_000).all()
    assert table.loc[table["acc"].idxmax(), "id"] == final["candidate_id"]
    # Every row's latency is the predictor's figure for its path, not a measurement here.
    winner = build_subnet(final["choices"], "small", num_classes=10)
    predicted = LatencyPredictor.load(predictor_file).predict(ops_of_network(winner, torch.rand(1, 3, 32, 32)).ops)
    assert table.loc[table["id"] == final["candidate_id"], "latency_ms"].item() == pytest.approx(predicted)
    assert everything["latency_ms"].notna().all()
    # The random control: as many paths, same limit, never chosen; summary = the table's figures.
    assert len(control) == 8 and (control["macs"] <= 4_300_000).all() and not control["chosen"].any()
    assert set(table["origin"]) <= {"random", "mutation", "crossover"}
    assert summary["control_best_search"] == pytest.approx(table["acc"].max())
    assert summary["control_best_control"] == pytest.approx(control["acc"].max())
    assert "control_hv_ratio" not in summary and (run / "search/control/output.csv").exists()  # one objective
    topk = read_table(run / "search/topk.csv")
    assert set(topk["generation"]) == {0, 1} and (topk.groupby("generation").size() == 2).all()

    bins = read_table(run / "supernet/sampled_bins.csv")
    assert bins["paths"].sum() == 30 and len(bins) == 3
    rank = read_table(run / "rank_check/rank_check.csv")
    assert len(rank) == 3 and rank["macs"].is_monotonic_increasing
    report = json.loads((run / "rank_check/rank_check.json").read_text())
    assert report["recalib_batches"] == 2 and report["paths"] == 3
    # Kendall tau from the table itself (None when a column is constant: tau is undefined then),
    # over every held-out image (~146 val + 300 test of the embedded digits).
    from scipy.stats import kendalltau

    for name, column in (("recalib", "supernet_recalib_acc"), ("no_recalib", "supernet_no_recalib_acc")):
        agreement = report[name]
        assert agreement["images"] > 400 and agreement["n"] == 3
        assert agreement["verdict"] in ("ranks", "does not rank", "inconclusive")
        tau = kendalltau(rank["standalone_acc"], rank[column]).statistic
        assert (agreement["tau"] is None) == (tau != tau)
        if tau == tau:
            assert agreement["tau"] == pytest.approx(tau) and summary[f"kendall_tau_{name}"] == pytest.approx(tau)
            assert agreement["ci_low"] <= agreement["ci_high"]
            assert agreement["verdict"] != "ranks"  # 3 paths: not even tau 1 is significant (p 0.33)
    assert summary["supernet_path_acc_mean"] == pytest.approx(rank["supernet_recalib_acc"].mean())
    assert summary["standalone_path_acc_mean"] == pytest.approx(rank["standalone_acc"].mean())
    assert summary["supernet_warm_start"] is True and summary["supernet_final_loss"] > 0

    comparison = read_table(run / "export/comparison.csv")
    assert list(comparison["model"]) == ["winner", "random_similar", "all_3x3"]
    assert_reported_parity(comparison.to_dict("records"), tol=1e-3)
    for name in comparison["model"]:
        assert_files_agree(run / "export" / name / "inference_model", tol=1e-3)
    meta = yaml.safe_load((run / "export/winner/inference_model/model.yml").read_text())
    assert meta["input"]["channel_order"] == "BGR" and meta["transforms"]["std"][0] == pytest.approx(1 / 255)
