"""The local stack: config/env unit tests, and one slow test against real servers."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from spnas import stack
from spnas.errors import InputError
from spnas.stack import StackConfig, StackError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_config_urls_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPNAS_HOME", str(tmp_path))
    monkeypatch.setenv("SPNAS_PREFECT_PORT", "14321")
    monkeypatch.setenv("SPNAS_MLFLOW_PORT", "15321")
    monkeypatch.setenv("PREFECT_API_KEY", "someone-elses-cloud-key")
    cfg = StackConfig()
    assert cfg.state == tmp_path.resolve()
    assert cfg.prefect_api_url == "http://127.0.0.1:14321/api"
    assert cfg.prefect_ui_url == "http://127.0.0.1:14321"
    assert cfg.mlflow_url == "http://127.0.0.1:15321"
    assert cfg.mlflow_runs_url("7") == "http://127.0.0.1:15321/#/experiments/7/runs"

    env = stack.stack_env(cfg)
    state = str(cfg.state)
    assert env["PREFECT_HOME"] == f"{state}/prefect"
    assert env["PREFECT_API_URL"] == env["PREFECT_UI_API_URL"] == cfg.prefect_api_url
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "1"
    assert env["PREFECT_LOCAL_STORAGE_PATH"] == f"{state}/prefect/storage"
    assert env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
    assert env["PREFECT_LOGGING_LEVEL"] == "INFO"
    assert env["MLFLOW_TRACKING_URI"] == cfg.mlflow_url
    assert env["SPNAS_HOME"] == state
    # Nothing may point at the user's global ~/.prefect.
    assert env["SPNAS_REPO"] == str(stack.REPO_ROOT)
    for key, value in env.items():
        if value.startswith("/") and key != "SPNAS_REPO":
            assert value.startswith(state), key

    full = stack.process_env(cfg)
    assert "PREFECT_API_KEY" not in full
    assert full["PREFECT_API_URL"] == cfg.prefect_api_url


def test_config_defaults_and_bad_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPNAS_HOME", str(tmp_path))
    monkeypatch.delenv("SPNAS_PREFECT_PORT", raising=False)
    monkeypatch.delenv("SPNAS_MLFLOW_PORT", raising=False)
    cfg = StackConfig()
    assert (cfg.host, cfg.prefect_port, cfg.mlflow_port, cfg.pool) == ("127.0.0.1", 4200, 5000,
                                                                      "local")
    monkeypatch.setenv("SPNAS_PREFECT_PORT", "http")
    with pytest.raises(InputError, match="SPNAS_PREFECT_PORT"):
        StackConfig()
    monkeypatch.setenv("SPNAS_PREFECT_PORT", "70000")
    with pytest.raises(InputError, match="SPNAS_PREFECT_PORT"):
        StackConfig()
    monkeypatch.setenv("SPNAS_PREFECT_PORT", "5000")
    with pytest.raises(InputError, match="SPNAS_MLFLOW_PORT"):
        StackConfig()


def test_status_without_stack(tmp_path: Path) -> None:
    cfg = StackConfig(state=tmp_path, prefect_port=_free_port(), mlflow_port=_free_port())
    report = stack.status(cfg)
    assert set(report) == set(stack.SERVICES)
    assert not any(r["alive"] or r["healthy"] for r in report.values())
    assert stack.down(cfg) == {name: None for name in stack.SERVICES}


def test_down_never_signals_a_process_it_did_not_start(tmp_path: Path) -> None:
    # A stale pidfile whose pid now names someone else's process group leader.
    cfg = StackConfig(state=tmp_path, prefect_port=_free_port(), mlflow_port=_free_port())
    foreign = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        cfg.pids_dir.mkdir()
        cfg.pid_file(stack.PREFECT).write_text(f"{foreign.pid}\n")
        assert stack.status(cfg)[stack.PREFECT]["alive"] is False
        assert stack.down(cfg)[stack.PREFECT] is None
        assert foreign.poll() is None
        assert not cfg.pid_file(stack.PREFECT).exists()
    finally:
        foreign.kill()
        foreign.wait()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_up_reuse_log_conflict_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    state.mkdir()
    cfg = StackConfig(state=state, prefect_port=_free_port(), mlflow_port=_free_port())
    owned: list[int] = []
    try:
        info = stack.up(cfg)
        print(info.describe())
        pids = {name: svc.pid for name, svc in info.services.items()}
        assert not any(svc.reused for svc in info.services.values())
        assert str(cfg.logs_dir) in info.describe() and cfg.prefect_ui_url in info.describe()
        report = stack.status(cfg)
        assert all(r["alive"] and r["healthy"] for r in report.values()), report

        again = stack.up(cfg)
        assert {name: svc.pid for name, svc in again.services.items()} == pids
        assert all(svc.reused for svc in again.services.values())

        # A client logs a param and an artifact through the server (proxied artifacts).
        monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.mlflow_url)
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=cfg.mlflow_url)
        exp_id = client.create_experiment("stack-test")
        run = client.create_run(exp_id)
        client.log_param(run.info.run_id, "lr", "0.02")
        note = tmp_path / "note.txt"
        note.write_text("hello stack")
        client.log_artifact(run.info.run_id, str(note))
        client.set_terminated(run.info.run_id)
        assert client.get_run(run.info.run_id).data.params == {"lr": "0.02"}
        assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["note.txt"]
        stored = list((state / "mlartifacts").rglob("note.txt"))
        assert len(stored) == 1 and stored[0].read_text() == "hello stack"

        # A port held by someone else: a clear error, fast, and nothing started.
        with socket.socket() as foreign:
            foreign.bind(("127.0.0.1", 0))
            foreign.listen()
            port = foreign.getsockname()[1]
            other = StackConfig(state=tmp_path / "other", prefect_port=port,
                                mlflow_port=_free_port())
            other.state.mkdir()
            t0 = time.monotonic()
            with pytest.raises(StackError, match=rf"Port {port}.*SPNAS_PREFECT_PORT"):
                stack.up(other)
            assert time.monotonic() - t0 < 5
            assert not list(other.pids_dir.glob("*.pid"))

        for pid in pids.values():
            owned += stack._owned_tree(pid, cfg)
        # mlflow's server runs uvicorn as a child: the group holds more than the leaders.
        assert len(owned) > len(pids)
    finally:
        stopped = stack.down(cfg)
    assert stopped == pids
    assert not list(cfg.pids_dir.glob("*.pid"))
    left = [pid for pid in owned if stack._alive(pid)]
    assert not left, f"processes left after down: {left}"
    assert not any(r["alive"] for r in stack.status(cfg).values())
