"""Real, small end-to-end runs of spnas/full: every stage's files, the candidate tables and the
MLflow run tree; then stage-scoped resume: changing a late setting reuses every earlier stage,
changing a search setting recomputes that search and what follows."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from export_checks import assert_detector_parity
from tasks.orchestration.tables import read_table

pytestmark = pytest.mark.slow

TINY = {
    "data": {"num_train_images": 40, "num_val_images": 12},
    "optimizer": {"eval_max_images": 4},
    "fine_tune": {"epochs": 1}, "fully_train": {"epochs": 1},
    "serial": {"max_sample": 4, "batch": 2, "candidate_steps": 2, "add_stage_ratio": 0.4, "max_stages": 5},
    "reignite": {"epochs": 1, "detector_steps": 1, "input_size": 32},
    # A latency limit no neck reaches: every proposal is timed, none skipped (the gate's wiring);
    # the front weighs mAP against that measured latency.
    "parallel": {"max_sample": 1, "candidate_steps": 2, "max_latency_ms": 10_000.0, "objective": "latency"},
    "export": {"num_images": 2},
}


def _task_states(flow_run_id) -> dict[str, list[str]]:
    """Task-run states of a flow run and its subflows, by task name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
            subflows = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
            for sub in subflows:
                runs += await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [sub.id]}))
            return runs

    states: dict[str, list[str]] = {}
    for run in asyncio.run(read()):
        if run.name.startswith(("serial-search", "parallel-search")):
            continue  # the task run Prefect keeps for a subflow call
        # Candidate task runs are named <stage>-<id>-<code>, fully_train's fully_train-<role>.
        name = "candidate" if run.name.startswith(("serial-", "parallel-")) else run.name.split("-")[0]
        states.setdefault(name, []).append(run.state.name)
    return states


def test_spnas_flow_end_to_end_and_stage_scoped_resume(prefect_api, tmp_path: Path) -> None:
    from flows.sp_nas import spnas
    from tracking import tracker

    overrides = {**TINY, "output_root": str(tmp_path)}
    state = spnas(params_file="params/spnas.yaml", overrides=overrides, return_state=True)
    summary = state.result()
    run = Path(summary["run_dir"])

    serial = read_table(run / "serial/output.csv")
    assert len(serial) == 4 and set(serial["status"]) == {"ok"}
    assert serial["pareto"].sum() >= 1 and serial["chosen"].sum() == 1
    assert (run / "serial/output.parquet").is_file()
    for _, r in serial.iterrows():
        cid = r["id"]
        for name in (f"desc_{cid}.json", f"model_{cid}.pth", f"performance_{cid}.json"):
            assert (run / "serial" / name).is_file(), name
        assert json.loads((run / "serial" / f"desc_{cid}.json").read_text())["backbone_code"] == r["code"]
    children = serial[serial["parent_id"].notna()]
    assert len(children) and (children["inherited_ratio"] > 0).all()
    # The winner respects the default limit: no more parameters than the starting network.
    start_params = json.loads((run / "fine_tune/performance_0.json").read_text())["params"]
    chosen = serial[serial["chosen"]].iloc[0]
    assert chosen["params"] <= start_params
    assert chosen["mAP"] == serial[serial["params"] <= start_params]["mAP"].max()

    parallel = read_table(run / "parallel/output.csv")
    state = json.loads((run / "parallel/search_state.json").read_text())["strategy"]
    assert state["settings"]["objective_keys"] == ["mAP", "latency_ms"]
    # The plain neck, then one sampled neck -- unless the serial search kept the start, whose size
    # every extra sub-network exceeds (the default limit "start"): then all were refused untrained.
    assert parallel.iloc[0]["neck_code"] == "[0, 0, 0, 0]"
    assert len(parallel) == (1 if state["stalled"] and state["refused"] else 2)
    assert (parallel["latency_ms"] > 0).all() and (parallel["latency_ms"] <= 10_000).all()
    report = json.loads((run / "export/export_report.json").read_text())
    # the chosen neck's search figure
    assert min(abs(parallel["latency_ms"] - report["backbone_predicted_ms"])) < 1e-6
    assert report["backbone_measured_ms"] > 0
    assert summary["latency_flags"] == report["backbone_prediction_flag"]
    for rel in ["data/sources.json", "split/search_val.json", "fine_tune/model_0.pth", "reignite/model_0.pth",
                "fully_train/model_final.pth", "fully_train/model_baseline.pth", "fully_train/output.csv",
                "fully_train/output.parquet", "export/inference_model/model.onnx", "export/inference_model/model.yml",
                "serial/search_state.json", "summary.json"]:
        assert (run / rel).is_file(), rel
    assert not list(run.rglob("checkpoint*.pth"))  # checkpoints stay in the work folders
    compared = read_table(run / "fully_train/output.csv")
    assert list(compared["role"]) == ["final", "baseline"]
    assert compared.iloc[0]["params"] <= compared.iloc[1]["params"] and compared.iloc[0]["within_limit"]
    assert summary["baseline_params"] == compared.iloc[1]["params"]
    assert_detector_parity(json.loads((run / "export/export_report.json").read_text()))

    stages = {r.info.run_name: r for r in tracker.child_runs(summary["mlflow_run_id"])}
    assert {"data", "split", "fine_tune", "serial_search", "reignite", "parallel_search", "fully_train-final",
            "fully_train-baseline", "export"} <= set(stages)
    grandchildren = tracker.child_runs(stages["serial_search"].info.run_id)
    assert sorted(g.info.run_name for g in grandchildren) == ["serial-0", "serial-1", "serial-2", "serial-3"]
    assert all(g.data.metrics["mAP"] == pytest.approx(float(serial.set_index("id").loc[int(g.info.run_name[7:]), "mAP"]))
               for g in grandchildren)

    # 1. Only fully_train's epochs change: everything before it is reused, and the new run
    #    folder still holds every stage's files.
    again = spnas(params_file="params/spnas.yaml", overrides={**overrides, "fully_train": {"epochs": 2}},
                  return_state=True)
    summary2 = again.result()
    states = _task_states(again.state_details.flow_run_id)
    for name in ("data", "split", "fine_tune", "reignite"):
        assert states[name] == ["Cached"], (name, states)
    assert "candidate" not in states, states  # both searches resumed from their saved state: nothing retrained
    assert set(states["fully_train"]) == {"Completed"}
    run2 = Path(summary2["run_dir"])
    assert (run2 / "serial/model_0.pth").samefile(run / "serial/model_0.pth")
    assert (run2 / "fine_tune/model_0.pth").is_file() and (run2 / "export/inference_model/model.onnx").is_file()
    assert summary2["serial_candidates"] == 4 and summary2["final_code"] == summary["final_code"]
    reused = {r.info.run_name: r for r in tracker.child_runs(summary2["mlflow_run_id"])}
    assert reused["fine_tune"].data.tags.get("spnas.reused") == "true"

    # 2. A serial search setting changes: the serial search and everything after it recompute.
    third = spnas(params_file="params/spnas.yaml",
                  overrides={**overrides, "serial": {**TINY["serial"], "candidate_steps": 3}}, return_state=True)
    run3 = Path(third.result()["run_dir"])
    states = _task_states(third.state_details.flow_run_id)
    for name in ("data", "split", "fine_tune"):
        assert states[name] == ["Cached"], (name, states)
    assert "Cached" not in set(states["reignite"]) | set(states["export"])
    # Every candidate trained again: 4 serial, and the parallel ones — how many necks fit the size
    # limit depends on the reignited backbone the new serial search chose (over-limit necks are
    # skipped untrained).
    parallel3 = read_table(run3 / "parallel/output.csv")
    assert len(states["candidate"]) == 4 + len(parallel3) and "Cached" not in states["candidate"]


def test_spnas_rejects_bad_code_before_work(prefect_api, tmp_path: Path) -> None:
    from flows.sp_nas import spnas
    from core.errors import InputError

    with pytest.raises(InputError, match="backbone_code"):
        spnas(params_file="params/spnas.yaml", overrides={"model.backbone_code": "11-x1", "output_root": str(tmp_path)})
    with pytest.raises(InputError, match="refresh_from"):
        spnas(params_file="params/spnas.yaml", overrides={"output_root": str(tmp_path)}, refresh_from="nope")
    assert not any(tmp_path.iterdir())
