"""The real path a user takes: stack up (Prefect server, process worker, MLflow server),
`prefect deploy --all` from prefect.yaml, a deployment run picked up by the worker, results in
the MLflow server, stack down."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from spnas import stack
from spnas.stack import StackConfig

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_lcnet_deployment_runs_on_the_worker(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    cfg = StackConfig(state=tmp_path / "state", prefect_port=_free_port(), mlflow_port=_free_port())
    out = tmp_path / "out"
    try:
        stack.up(cfg)
        assert stack.deploy_all(cfg) == 0
        overrides = {"train": {"epochs": 1}, "model": {"scale": 0.25}, "predict": {"count": 2, "repeats": 1},
                     "output_root": str(out)}
        code = stack.run_deployment(cfg, "lcnet/full", {"params_file": "params/lcnet.yaml", "overrides": overrides})
        assert code == 0
        runs = [d for d in out.iterdir() if d.is_dir()]
        assert len(runs) == 1
        assert (runs[0] / "export/inference_model/model.onnx").is_file()
        assert (runs[0] / "summary.json").is_file()

        client = MlflowClient(cfg.mlflow_url)
        exp = client.get_experiment_by_name("lcnet")
        found = client.search_runs([exp.experiment_id])
        parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert parents[0].data.tags["prefect.flow_run_name"] == runs[0].name
        assert len(found) == 7  # parent + data, split, train, evaluate, export, predict
        # Artifacts went through the MLflow server into the state folder.
        assert any((cfg.state / "mlartifacts").rglob("model.onnx"))
    finally:
        stack.down(cfg)
    assert not any(s["alive"] for s in stack.status(cfg).values())
