"""The promise a user relies on, checked through the real stack (Prefect server, process worker,
MLflow server): a spnas/full flow-run process killed by pid in the middle of the serial search,
run again with the same parameters, reuses what finished and leaves no run RUNNING."""
from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from spnas import stack
from spnas.stack import StackConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

OVERRIDES = {
    "data": {"num_train_images": 40, "num_val_images": 12},
    "optimizer": {"eval_max_images": 4},
    "fine_tune": {"epochs": 1}, "fully_train": {"epochs": 1},
    "serial": {"max_sample": 4, "batch": 1, "candidate_steps": 8, "add_stage_ratio": 0.4, "max_stages": 5},
    "reignite": {"epochs": 1, "detector_steps": 1, "input_size": 32},
    "parallel": {"max_sample": 1, "candidate_steps": 2},
    "export": {"num_images": 2},
}


def _wait(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _top_runs(client) -> list:
    """The deployment's flow runs (not the search subflows), newest first."""
    runs = [r for r in client.read_flow_runs() if r.parent_task_run_id is None]
    return sorted(runs, key=lambda r: r.created, reverse=True)


def _told(state: Path) -> int:
    files = list((state / "work/spnas/serial").glob("*/search_state.json"))
    if not files:
        return 0
    try:
        return len(json.loads(files[0].read_text())["results"])
    except (ValueError, KeyError):  # being replaced this instant
        return 0


def test_killed_flow_run_resumes_where_it_stopped(running_stack: StackConfig, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    cfg = running_stack  # the session's shared stack (tests/conftest.py): no other test runs spnas/full on it
    out = tmp_path / "out"
    params = {"params_file": "params/spnas.yaml", "overrides": {**OVERRIDES, "output_root": str(out)},
              "refresh_from": None}
    assert stack.run_deployment(cfg, "spnas/full", params, watch=False) == 0

    with temporary_settings({PREFECT_API_URL: cfg.prefect_api_url}), get_client(sync_client=True) as client:
        def first_run():
            runs = _top_runs(client)
            return runs[0] if runs and runs[0].infrastructure_pid else None

        run = _wait("the worker to start the flow run", first_run, 180)
        # Two serial candidates told and saved: the search is between candidates (or in the next).
        def two_told() -> bool:
            if _told(cfg.state) >= 2:
                return True
            state = client.read_flow_run(run.id).state
            assert not state.is_final(), f"the flow run ended before two serial candidates: {state}"
            return False

        _wait("two serial candidates", two_told, 900, every=0.2)
        told_before_kill = _told(cfg.state)
        os.kill(int(run.infrastructure_pid), signal.SIGKILL)
        crashed = _wait("the killed run to be marked crashed",
                        lambda: (r := client.read_flow_run(run.id)).state.is_final() and r, 180)
        assert crashed.state.name == "Crashed", crashed.state

    mlflow = MlflowClient(cfg.mlflow_url)
    experiment = mlflow.get_experiment_by_name("spnas").experiment_id

    def killed_runs_closed():
        found = mlflow.search_runs([experiment], max_results=500)
        return found if not any(r.info.status == "RUNNING" for r in found) else None

    # The worker runs the flow's on_crashed hook, which ends the dead run's MLflow runs as KILLED.
    first_runs = _wait("the dead run's MLflow runs to be closed", killed_runs_closed, 180)
    assert any(r.info.status == "KILLED" for r in first_runs)

    # Same parameters again, watched to the end.
    assert stack.run_deployment(cfg, "spnas/full", params, watch=True) == 0

    with temporary_settings({PREFECT_API_URL: cfg.prefect_api_url}), get_client(sync_client=True) as client:
        second = _top_runs(client)[0]
        assert second.id != run.id and second.state.name == "Completed"
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[second.id])))
        states = {t.name.rsplit("-", 1)[0]: t.state.name for t in tasks}
    for stage in ("data", "split", "fine_tune"):
        assert states[stage] == "Cached", states

    found = mlflow.search_runs([experiment], max_results=1000)
    assert not any(r.info.status == "RUNNING" for r in found)
    finished = Counter(r.info.run_name for r in found
                       if r.info.run_name.startswith("serial-") and r.info.status == "FINISHED")
    assert set(finished) == {f"serial-{i}" for i in range(4)}
    assert set(finished.values()) == {1}, finished  # no candidate trained twice to the end
    assert told_before_kill >= 2

    run_dirs = sorted(d for d in out.iterdir() if (d / "summary.json").exists())
    assert len(run_dirs) == 1  # only the second run got to the end
    second_dir = run_dirs[0]
    assert second_dir.name == second.name
    for rel in ("data/sources.json", "split/search_train.json", "fine_tune/model_0.pth", "serial/output.csv",
                "serial/output.parquet", "serial/search_state.json", "reignite/model_0.pth",
                "parallel/output.csv", "fully_train/model_final.pth", "fully_train/output.csv",
                "export/inference_model/model.onnx"):
        assert (second_dir / rel).is_file(), rel
    assert all((second_dir / "serial" / f"model_{i}.pth").is_file() for i in range(4))
