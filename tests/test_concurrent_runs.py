"""Two flow runs of different deployments at the same time through the real worker (limit 2) on
the default SQLite stack: both complete in separate run folders, every MLflow run is FINISHED,
and no log (the servers', the worker's, the flow runs') says "database is locked"."""
from __future__ import annotations

import json
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from spnas import stack
from spnas.stack import StackConfig
from spnas.supervise import http_request

pytestmark = pytest.mark.slow

LOCKED = "database is locked"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# The two cheapest pipelines at tiny budgets, one torch thread each (two runs share 2 cores).
RUNS = {
    "lcnet/full": ("params/lcnet.yaml",
                   {"train": {"epochs": 1}, "model": {"scale": 0.25}, "predict": {"count": 2, "repeats": 1},
                    "num_threads": 1}),
    "spos/full": ("params/spos.yaml",
                  {"supernet": {"steps": 10, "batch_size": 32},
                   "search": {"population": 2, "topk": 1, "mutation_count": 1, "crossover_count": 0,
                              "generations": 1, "recalib_batches": 0},
                   "rank_check": {"count": 0}, "retrain": {"epochs": 1, "baselines": False},
                   "num_threads": 1}),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _api(cfg: StackConfig, path: str, body: dict[str, Any]) -> Any:
    code, raw = http_request("POST", f"{cfg.prefect_api_url}{path}", body, timeout=30, creds=cfg.credentials)
    assert code in (200, 201), (path, code, raw[:500])
    return json.loads(raw)


def _flow_run_logs(cfg: StackConfig, ids: list[str]) -> list[str]:
    messages: list[str] = []
    while True:
        page = _api(cfg, "/logs/filter", {"logs": {"flow_run_id": {"any_": ids}}, "limit": 200,
                                          "offset": len(messages)})
        messages += [entry["message"] for entry in page]
        if len(page) < 200:
            return messages


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@pytest.mark.timeout(400)
def test_two_deployments_run_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("SPNAS_DATABASE_URL", raising=False)
    cfg = StackConfig(state=tmp_path / "state", prefect_port=_free_port(), mlflow_port=_free_port(),
                      postgres_port=_free_port(), worker_limit=2, db="sqlite")
    out = tmp_path / "out"
    t0 = time.monotonic()
    try:
        info = stack.up(cfg)
        assert "2 flow run at a time" in info.describe() and "SQLite" in info.describe()
        assert stack.deploy_all(cfg) == 0
        for name, (params_file, overrides) in RUNS.items():
            # Without --watch the CLI returns once the run is scheduled: both are queued at once.
            assert stack.run_deployment(cfg, name, {"params_file": params_file,
                                                    "overrides": {**overrides, "output_root": str(out)}},
                                        watch=False) == 0
        print(f"up + deploy + 2 runs queued: {time.monotonic() - t0:.0f} s")
        deadline = time.monotonic() + 300
        deployed = {"flow_runs": {"deployment_id": {"is_null_": False}}}  # not spos's search subflow
        while True:
            runs = _api(cfg, "/flow_runs/filter", deployed)
            assert len(runs) == 2
            if all(r["state_type"] in TERMINAL for r in runs) or time.monotonic() > deadline:
                break
            time.sleep(2)
        print(f"both terminal: {time.monotonic() - t0:.0f} s;",
              {r["name"]: f"{r['total_run_time']:.0f} s" for r in runs})
        states = {r["name"]: r["state_type"] for r in runs}
        logs = _flow_run_logs(cfg, [r["id"] for r in _api(cfg, "/flow_runs/filter", {})])
        assert all(s == "COMPLETED" for s in states.values()), (states, logs[-30:])
        # They really ran side by side: each started before the other ended.
        assert max(_when(r["start_time"]) for r in runs) < min(_when(r["end_time"]) for r in runs)

        folders = sorted(d.name for d in out.iterdir() if d.is_dir())
        assert folders == sorted(states) and len(folders) == 2
        for folder in folders:
            assert (out / folder / "summary.json").is_file()
            assert (out / folder / "export").is_dir()

        client = MlflowClient(cfg.mlflow_url)
        experiments = [e.experiment_id for e in client.search_experiments()]
        found = client.search_runs(experiments, max_results=1000)
        parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
        assert sorted(r.data.tags["prefect.flow_run_name"] for r in parents) == folders
        assert len(found) > 2 * 5  # children per stage under both parents
        assert {r.info.status for r in found} == {"FINISHED"}

        assert logs and not [m for m in logs if LOCKED in m]
        service_logs = sorted(cfg.logs_dir.glob("*.log"))
        assert {p.stem for p in service_logs} >= set(stack.SERVICES)
        for log in service_logs:
            assert LOCKED not in log.read_text(errors="replace"), log
    finally:
        stack.down(cfg)
    assert not any(s["alive"] for s in stack.status(cfg).values())
