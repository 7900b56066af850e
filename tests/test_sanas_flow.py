"""Real, small end-to-end runs of sanas/full in both modes: the found tokens satisfy the
constraint, the structure printout is logged and kept, the latency table and the predictor's
held-out accuracy exist, and the export compares measured with predicted latency."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.orchestration.tables import read_table

pytestmark = pytest.mark.slow

TINY = {"data": {"num_train_images": 24, "num_val_images": 12},
        "search": {"search_steps": 3, "candidate_steps": 2}, "train": {"steps": 3, "batch_size": 4},
        "latency": {"fit_architectures": 12, "holdout_architectures": 100}}


@pytest.mark.parametrize("ctype", ["flops", "latency"])
def test_sanas_end_to_end(ctype, prefect_api, tmp_path: Path) -> None:
    from flows.sanas import sanas
    from latency.measure import tokens_cost

    summary = sanas(params_file="params/sanas.yaml",
                    overrides={**TINY, "constraint": {"ctype": ctype}, "output_root": str(tmp_path)})
    run = Path(summary["run_dir"])
    report = json.loads((run / "latency_table/latency_report.json").read_text())
    limit = report["constraint"]["max"]
    table = read_table(run / "search/output.csv")
    assert 1 <= len(table) <= 3 and set(table["status"]) == {"ok"}
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
    for f in ("model.onnx", "model.pt2", "model.yml", "anchors.npy"):
        assert (run / "export/found/inference_model" / f).is_file()
