"""One real, small end-to-end run of spnas/full: every stage's files, the candidate tables and
the MLflow run tree (parent → stage → candidate)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TINY = {
    "num_train_images": 40, "num_val_images": 12, "fine_tune_epochs": 1, "fully_train_epochs": 1,
    "serial": {"max_sample": 4, "batch": 2, "candidate_steps": 2, "add_stage_ratio": 0.4, "max_stages": 5},
    "reignite": {"epochs": 1, "detector_steps": 1, "input_size": 32},
    "parallel": {"max_sample": 1, "candidate_steps": 2},
    "eval_max_images": 4,
}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_spnas_flow_end_to_end(prefect_api, tmp_path: Path) -> None:
    from flows.sp_nas import spnas
    from tracking import tracker

    summary = spnas(params_file="params/spnas.yaml", overrides={**TINY, "output_root": str(tmp_path)})
    run = Path(summary["run_dir"])

    serial = _rows(run / "serial/output.csv")
    assert len(serial) == 4
    assert {r["status"] for r in serial} == {"ok"}
    assert sum(r["pareto"] == "True" for r in serial) >= 1 and sum(r["chosen"] == "True" for r in serial) == 1
    for r in serial:
        cid = r["id"]
        for name in (f"desc_{cid}.json", f"model_{cid}.pth", f"performance_{cid}.json"):
            assert (run / "serial" / name).is_file(), name
        assert json.loads((run / "serial" / f"desc_{cid}.json").read_text())["backbone_code"] == r["code"]
        assert float(r["params"]) > 1e6 and float(r["macs"]) > 1e6
    children = [r for r in serial if r["parent_id"]]
    assert children and all(float(r["inherited_ratio"]) > 0 for r in children)

    parallel = _rows(run / "parallel/output.csv")
    assert parallel[0]["neck_code"] == "[0, 0, 0, 0]" or parallel[0]["neck_code"].startswith("[0")
    assert len(parallel) == 2
    for rel in ["fine_tune/model_0.pth", "reignite/model_0.pth", "fully_train/model_final.pth",
                "fully_train/model_baseline.pth", "fully_train/output.csv", "export/inference_model/model.onnx",
                "export/inference_model/model.ts", "export/inference_model/model.yml", "summary.json"]:
        assert (run / rel).is_file(), rel
    roles = {r["role"] for r in _rows(run / "fully_train/output.csv")}
    assert roles == {"final", "baseline"}
    assert 0.0 <= summary["final_mAP50"] <= 1.0 and "baseline_mAP50" in summary

    stages = {r.info.run_name: r for r in tracker.child_runs(summary["mlflow_run_id"])}
    assert {"split", "fine_tune", "serial_search", "reignite", "parallel_search", "fully_train-final",
            "fully_train-baseline", "export"} <= set(stages)
    grandchildren = tracker.child_runs(stages["serial_search"].info.run_id)
    assert len(grandchildren) == 4
    assert all("mAP" in g.data.metrics and "params" in g.data.metrics for g in grandchildren)


def test_spnas_rejects_bad_code_before_work(prefect_api, tmp_path: Path) -> None:
    from flows.sp_nas import spnas
    from spnas.errors import InputError

    with pytest.raises(InputError, match="backbone_code"):
        spnas(params_file="params/spnas.yaml", overrides={"backbone_code": "11-x1", "output_root": str(tmp_path)})
    assert not any(tmp_path.iterdir())
