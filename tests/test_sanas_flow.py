"""Real, small end-to-end runs of sanas/full in both modes: the found tokens satisfy the
constraint, the structure printout is logged and kept, the latency table and the predictor's
held-out accuracy exist, and the export compares measured with predicted latency. And the
latency_table stage's cache key does not move with the constraint (its table is reused)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from params.loader import load_params
from params.models import SanasParams
from tasks.orchestration.caching import stage_key
from export_checks import assert_files_agree, assert_reported_parity
from tasks.orchestration.tables import read_table

TINY = {"data": {"num_train_images": 24, "num_val_images": 12},
        "search": {"search_steps": 4, "random_starts": 1, "candidate_steps": 2}, "train": {"steps": 3, "batch_size": 4},
        "latency": {"fit_architectures": 12, "holdout_architectures": 100}}


@pytest.mark.slow
@pytest.mark.parametrize("ctype", ["flops", "latency"])
def test_sanas_end_to_end(ctype, prefect_api, tmp_path: Path) -> None:
    from flows.sanas import sanas
    from latency.measure import tokens_cost

    overrides = {**TINY, "constraint": {"ctype": ctype}, "output_root": str(tmp_path)}
    if ctype == "latency":  # the same budget screened in rungs: 1 step each, the best half to 2
        overrides["search"] = {**TINY["search"], "fidelity": {"min_steps": 1, "max_steps": 2, "eta": 2}}
    summary = sanas(params_file="params/sanas.yaml", overrides=overrides)
    run = Path(summary["run_dir"])
    report = json.loads((run / "latency_table/latency_report.json").read_text())
    window = json.loads((run / "search/constraint.json").read_text())
    assert window["ctype"] == ctype and summary["constraint_max"] == window["max"]
    limit = window["max"]
    table = read_table(run / "search/output.csv")
    assert 1 <= len(table) <= 4 and set(table["status"]) == {"ok"}
    if ctype == "latency":
        # ASHA, replayed: after each candidate's first rung the best half so far go up (a later
        # candidate that outranks an earlier promotion goes up too); rung-0 AP50 from `rungs`
        first = {int(i): float(r.split()[0].split(":")[1]) for i, r in zip(table["id"], table["rungs"])}
        ids, promoted = sorted(first), set()
        for n in range(1, len(ids) + 1):
            promoted |= set(sorted(ids[:n], key=lambda i: (-first[i], i))[:n // 2])
        assert set(table.loc[table["rung"] == 1, "id"]) == promoted
        assert (table["rung"] == 0).any() and set(table["rung"]) <= {0, 1}
        assert (table["train_steps"] == table["rung"] + 1).all()
        chosen = table[table["chosen"]].iloc[0]
        assert chosen["rung"] == table["rung"].max()  # only the top rung's scores are compared
        assert not list((run / "search").glob("ckpt_*.pth"))  # rung checkpoints go when the search ends
    # reduce_rate null: the seed's cooling stretched over the 4 steps (ends where the seed's 300 end)
    trace = read_table(run / "search/sa_trace.csv")
    assert trace["temperature"].tolist() == pytest.approx([10.24 * 0.85 ** (75 * k) for k in trace["step"]])
    # one random start, then the walk
    assert trace["proposal"].tolist()[:2] == ["init", "random start"]
    assert set(trace["proposal"].tolist()[2:]) <= {"neighbour"}
    key = "macs" if ctype == "flops" else "predicted_ms"
    assert (table[key] <= limit + 1e-9).all()  # every trained candidate was inside the window
    found = [int(c) for c in summary["found_tokens"]]
    if ctype == "flops":
        assert tokens_cost(found)["macs"] <= limit
    structure = (run / "search/best_structure.txt").read_text()
    assert "BlazeFace-NAS structure start" in structure and "double_blaze_filters" in structure
    acc = report["accuracy"]
    assert acc["n_holdout"] == 100 and not set(acc["holdout_ids"]) & set(json.loads(
        (run / "latency_table/latency_table.predictor.json").read_text())["fit_ids"])
    comparison = read_table(run / "export/comparison.csv")
    assert list(comparison["model"]) == ["found", "initial"]
    assert (comparison["measured_ms"] > 0).all() and (comparison["onnx_max_abs_diff"] < 1e-3).all()
    assert_reported_parity(comparison.to_dict("records"), tol=1e-3)
    for name in comparison["model"]:
        for f in ("model.onnx", "model.pt2", "model.yml", "anchors.npy"):
            assert (run / "export" / name / "inference_model" / f).is_file()
        assert_files_agree(run / "export" / name / "inference_model", tol=1e-3)


def test_latency_table_stage_key_ignores_the_constraint() -> None:
    from tasks.sanas.latency_table import latency_table_task

    def key(constraint: dict) -> str:
        p = load_params(SanasParams, "params/sanas.yaml", {"constraint": constraint})
        return stage_key(latency_table_task.fn, {"latency": p.latency, "image_size": p.image_size, "seed": p.seed})

    base = key({"ctype": "flops"})
    assert key({"ctype": "latency"}) == base
    assert key({"ctype": "flops", "min": 1_000_000, "max": 40_000_000}) == base
    assert key({"ctype": "latency", "min": 0.01, "max": 5.0}) == base
    # and the stage takes no constraint at all, so a new one cannot reach it through the flow
    assert "constraint" not in latency_table_task.fn.__code__.co_varnames
