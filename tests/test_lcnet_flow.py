"""One real end-to-end run of lcnet/full (real Prefect API, real MLflow store, real training,
real ONNX Runtime), then a second run that must reuse every finished stage."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from export_checks import assert_files_agree, assert_reported_parity

pytestmark = pytest.mark.slow

OVERRIDES = {"model": {"scale": 0.5}, "train": {"epochs": 5, "batch_size": 32}, "predict": {"count": 4, "repeats": 2}}


def _task_states(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}

    return asyncio.run(read())


def test_lcnet_flow_end_to_end_and_resume(prefect_api, tmp_path: Path) -> None:
    from flows.lcnet import lcnet
    from tracking import tracker

    overrides = {**OVERRIDES, "output_root": str(tmp_path / "out")}
    state = lcnet(params_file="params/lcnet.yaml", overrides=overrides, return_state=True)
    summary = state.result()
    run_dir = Path(summary["run_dir"])
    for rel in ["split/train_list.txt", "split/labels.txt", "train/desc_0.json", "train/model_0.pth",
                "train/performance_0.json", "train/output.csv", "evaluate/performance.json",
                "export/inference_model/model.onnx", "export/inference_model/model.pt2", "train/output.parquet",
                "export/inference_model/model.yml", "predict/predictions.json", "predict/time_info.txt"]:
        assert (run_dir / rel).is_file(), rel
    assert summary["test_top1"] > 0.8  # 5 short epochs; the default 12 epochs reach ≥ 0.95
    assert summary["onnx_max_abs_diff"] < 1e-4
    assert_reported_parity([json.loads((run_dir / "export/export_report.json").read_text())])
    assert_files_agree(run_dir / "export/inference_model")
    assert "Inference Time Info" in (run_dir / "predict/time_info.txt").read_text()

    children = tracker.child_runs(summary["mlflow_run_id"])
    assert {r.info.run_name for r in children} == {"data", "split", "train", "evaluate", "export", "predict"}
    train = next(r for r in children if r.info.run_name == "train")
    assert train.data.metrics["val_top1"] == pytest.approx(json.loads((run_dir / "train/performance_0.json").read_text())["val_top1"])
    artifacts = {a.path for a in tracker.client().list_artifacts(train.info.run_id, "train")}
    assert "train/model_0.pth" in artifacts and "train/curve.png" in artifacts

    # Same parameters again: every stage comes back Cached, the first run's files are untouched,
    # and the new run folder is complete (linked, not copied).
    model_file = run_dir / "train/model_0.pth"
    before = model_file.stat().st_mtime_ns
    state2 = lcnet(params_file="params/lcnet.yaml", overrides=overrides, return_state=True)
    summary2 = state2.result()
    states = _task_states(state2.state_details.flow_run_id)
    assert set(states.values()) == {"Cached"}, states
    assert model_file.stat().st_mtime_ns == before
    assert summary2["test_top1"] == summary["test_top1"]
    run_dir2 = Path(summary2["run_dir"])
    assert run_dir2 != run_dir  # each flow run has its own folder
    assert (run_dir2 / "train/model_0.pth").samefile(model_file)
    assert (run_dir2 / "export/inference_model/model.onnx").is_file()

    # Only the predict stage's settings change: only predict runs again.
    state3 = lcnet(params_file="params/lcnet.yaml",
                   overrides={**overrides, "predict": {**OVERRIDES["predict"], "count": 3}}, return_state=True)
    summary3 = state3.result()
    states = _task_states(state3.state_details.flow_run_id)
    assert states.pop("predict") == "Completed" and set(states.values()) == {"Cached"}, states
    assert len(json.loads((Path(summary3["run_dir"]) / "predict/predictions.json").read_text())["predictions"]) == 3

    # --refresh-from train: train and everything after it recompute.
    state4 = lcnet(params_file="params/lcnet.yaml", overrides=overrides, refresh_from="train", return_state=True)
    state4.result()
    states = _task_states(state4.state_details.flow_run_id)
    assert (states["data"], states["split"]) == ("Cached", "Cached")
    assert {states[s] for s in ("train", "evaluate", "export", "predict")} == {"Completed"}, states


def test_bad_params_fail_before_any_work(prefect_api, tmp_path: Path) -> None:
    from flows.lcnet import lcnet
    from core.errors import InputError

    with pytest.raises(InputError, match="scale"):
        lcnet(params_file="params/lcnet.yaml", overrides={"model.scale": 0.3, "output_root": str(tmp_path)})
    assert not any(tmp_path.iterdir())
