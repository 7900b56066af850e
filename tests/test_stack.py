"""The local stack: config/env unit tests, and one slow test against real servers."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from core.errors import InputError
from core.procs import pid_alive
from spnas import mlflow_server, prefect_server, stack, supervise, worker
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
            owned += supervise.owned_tree(pid, cfg)
        # mlflow's server runs uvicorn as a child: the group holds more than the leaders.
        assert len(owned) > len(pids)
    finally:
        stopped = stack.down(cfg)
    assert stopped == pids
    assert not list(cfg.pids_dir.glob("*.pid"))
    left = [pid for pid in owned if pid_alive(pid)]
    assert not left, f"processes left after down: {left}"
    assert not any(r["alive"] for r in stack.status(cfg).values())


# --------------------------------------------------------------------------- database choice


def _cfg(tmp_path: Path, **kw) -> StackConfig:
    return StackConfig(state=tmp_path, prefect_port=_free_port(), mlflow_port=_free_port(),
                       postgres_port=_free_port(), **kw)


def test_database_url_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    from spnas import postgres

    server = postgres.parse_database_url("postgresql://ml%40ops:p%2Fw%3Ard@db.example:6543")
    assert server == postgres.Server("ml@ops", "p/w:rd", "db.example", 6543)
    assert server.url("asyncpg", "prefect") == "postgresql+asyncpg://ml%40ops:p%2Fw%3Ard@db.example:6543/prefect"
    assert server.url("psycopg", "mlflow") == "postgresql+psycopg://ml%40ops:p%2Fw%3Ard@db.example:6543/mlflow"
    assert server.address == "ml@ops@db.example:6543"  # shown and remembered without the password
    assert postgres.parse_database_url("postgres://me@localhost/").port == 5432
    assert postgres.parse_database_url("postgres://me@[::1]:7000").url("psycopg", "mlflow") == \
        "postgresql+psycopg://me@[::1]:7000/mlflow"
    for bad, why in [("mysql://u:p@h:3306", "postgresql://"), ("postgresql://u:p@:5432", "no host"),
                     ("postgresql://h:5432", "no user"), ("postgresql://u@h:port", "cannot be parsed"),
                     ("postgresql://u@h:99999", "cannot be parsed"), ("postgresql://u@h:5432/mydb", "database"),
                     ("postgresql://u@h?sslmode=require", "options"), ("db.example:5432", "postgresql://")]:
        with pytest.raises(InputError, match=rf"^SPNAS_DATABASE_URL: .*{why}") as err:
            postgres.parse_database_url(bad)
        assert "\n" not in str(err.value)


def test_database_config_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spnas import postgres

    monkeypatch.delenv("SPNAS_DATABASE_URL", raising=False)
    monkeypatch.delenv("SPNAS_WORKER_LIMIT", raising=False)
    monkeypatch.delenv("SPNAS_POSTGRES_PORT", raising=False)
    cfg = StackConfig(state=tmp_path, prefect_port=_free_port(), mlflow_port=_free_port())
    assert (cfg.db, cfg.postgres_port, cfg.worker_limit) == (None, 5433, 1)  # one training at a time
    assert postgres.resolve(cfg).kind == "sqlite"

    monkeypatch.setenv("SPNAS_WORKER_LIMIT", "2")
    cfg = _cfg(tmp_path)
    assert cfg.worker_limit == 2 and worker.argv(cfg)[-2:] == ["--limit", "2"]
    for bad in ("0", "two", "-1", "1.5"):
        monkeypatch.setenv("SPNAS_WORKER_LIMIT", bad)
        with pytest.raises(InputError, match="^SPNAS_WORKER_LIMIT: "):
            _cfg(tmp_path)
    monkeypatch.delenv("SPNAS_WORKER_LIMIT")

    monkeypatch.setenv("SPNAS_POSTGRES_PORT", "pg")
    with pytest.raises(InputError, match="^SPNAS_POSTGRES_PORT: "):
        StackConfig(state=tmp_path, prefect_port=_free_port(), mlflow_port=_free_port())
    monkeypatch.delenv("SPNAS_POSTGRES_PORT")
    with pytest.raises(InputError, match="^SPNAS_POSTGRES_PORT: must differ"):
        StackConfig(state=tmp_path, prefect_port=15433, mlflow_port=_free_port(), postgres_port=15433)
    with pytest.raises(InputError, match="^--db: must be one of sqlite, postgres"):
        _cfg(tmp_path, db="mongo")

    monkeypatch.setenv("SPNAS_DATABASE_URL", "postgresql://me:secret@db.example:6543")
    with pytest.raises(InputError, match="^SPNAS_DATABASE_URL: is set.*--db sqlite"):
        _cfg(tmp_path, db="sqlite")
    monkeypatch.setenv("SPNAS_DATABASE_URL", "http://db.example")
    with pytest.raises(InputError, match="^SPNAS_DATABASE_URL: must start with postgresql://"):
        _cfg(tmp_path)


def test_database_choice_and_server_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from spnas import postgres

    monkeypatch.delenv("SPNAS_DATABASE_URL", raising=False)
    state = str(tmp_path.resolve())
    # SQLite: MLflow's file on the command line, switched to WAL before the server opens it.
    cfg = _cfg(tmp_path, db="sqlite")
    argv = mlflow_server.argv(cfg)
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{state}/mlflow.db"
    assert postgres.service_env(cfg, stack.PREFECT) == {}
    assert postgres.service_env(cfg, stack.MLFLOW) == {}
    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert postgres.describe(cfg).startswith("SQLite, WAL")

    # A local server: URLs with the state folder's password, none on MLflow's command line.
    cfg = _cfg(tmp_path, db="postgres")
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres/password").write_text("s3cret\n")
    db = postgres.resolve(cfg)
    assert (db.kind, db.local) == ("postgres", True)
    assert db.record() == {"db": "postgres", "server": "local", "address": f"spnas@127.0.0.1:{cfg.postgres_port}"}
    env = postgres.service_env(cfg, stack.PREFECT)
    assert env == {"PREFECT_API_DATABASE_CONNECTION_URL":
                   f"postgresql+asyncpg://spnas:s3cret@127.0.0.1:{cfg.postgres_port}/prefect"}
    assert postgres.service_env(cfg, stack.MLFLOW) == {
        "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg://spnas:s3cret@127.0.0.1:{cfg.postgres_port}/mlflow"}
    assert postgres.service_env(cfg, stack.WORKER) == {}
    mlflow_argv = mlflow_server.argv(cfg)
    assert "--backend-store-uri" not in mlflow_argv and "s3cret" not in " ".join(mlflow_argv)
    assert "s3cret" not in postgres.describe(cfg)
    argv = postgres._argv(cfg)
    assert "listen_addresses=127.0.0.1" in argv and f"port={cfg.postgres_port}" in argv
    assert f"unix_socket_directories={state}/postgres/socket" in argv

    # An existing server: SPNAS_DATABASE_URL alone means PostgreSQL there.
    monkeypatch.setenv("SPNAS_DATABASE_URL", "postgresql://me:pw@db.example:6543")
    cfg = _cfg(tmp_path)
    db = postgres.resolve(cfg)
    assert (db.kind, db.local, db.address) == ("postgres", False, "me@db.example:6543")
    assert postgres.service_env(cfg, stack.MLFLOW) == {
        "MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg://me:pw@db.example:6543/mlflow"}
    assert "SPNAS_DATABASE_URL" in postgres.describe(cfg)


def test_database_choice_is_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spnas import postgres

    monkeypatch.delenv("SPNAS_DATABASE_URL", raising=False)
    record = tmp_path / "database.json"
    record.write_text('{"db": "postgres", "server": "local", "address": "spnas@127.0.0.1:5433"}')
    assert postgres.resolve(_cfg(tmp_path)).local  # `up`/`down`/`status` without --db agree
    assert postgres.resolve(_cfg(tmp_path, db="sqlite")).kind == "sqlite"  # nothing runs: may switch

    # Remembered external server, URL no longer in the environment: status works, up says what to set.
    record.write_text('{"db": "postgres", "server": "external", "address": "me@db.example:6543"}')
    cfg = _cfg(tmp_path)
    db = postgres.resolve(cfg)
    assert (db.kind, db.local, db.server, db.address) == ("postgres", False, None, "me@db.example:6543")
    assert "postgres" not in stack.status(cfg)
    with pytest.raises(InputError, match="^SPNAS_DATABASE_URL: .*me@db.example:6543.*set SPNAS_DATABASE_URL"):
        stack.up(cfg)
    assert not list(cfg.pids_dir.glob("*.pid"))

    # A running stack (a process of ours in a pidfile) is not moved to another database.
    record.write_text('{"db": "sqlite"}')
    ours = subprocess.Popen(["sleep", "60"], env={"SPNAS_HOME": str(cfg.state), "PATH": "/usr/bin:/bin"})
    try:
        cfg.pids_dir.mkdir(exist_ok=True)
        cfg.pid_file(stack.WORKER).write_text(f"{ours.pid}\n")
        postgres.check_switch(_cfg(tmp_path, db="sqlite"))  # same choice: fine
        with pytest.raises(StackError, match=r"running on SQLite; run `spnas down` first to switch it to "
                                             r"PostgreSQL spnas@127.0.0.1:\d+ \(a local server\)"):
            postgres.check_switch(_cfg(tmp_path, db="postgres"))
    finally:
        ours.kill()
        ours.wait()
        cfg.pid_file(stack.WORKER).unlink()
    postgres.check_switch(_cfg(tmp_path, db="postgres"))  # stopped: switching is allowed


def test_postgres_port_taken_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spnas import postgres

    monkeypatch.delenv("SPNAS_DATABASE_URL", raising=False)
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        cfg = StackConfig(state=tmp_path, prefect_port=_free_port(), mlflow_port=_free_port(),
                          postgres_port=port, db="postgres")
        with pytest.raises(StackError, match=rf"Port {port} on 127.0.0.1 .*SPNAS_POSTGRES_PORT"):
            postgres.up(cfg)
    assert not (tmp_path / "database.json").exists() and not list(tmp_path.glob("pids/*.pid"))


def test_prefect_on_sqlite_starts_heartbeats_immediate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prefect's worker heartbeat reads, then writes, in one SQLite transaction: started
    DEFERRED it fails with "database is locked" when another write lands in between."""
    import asyncio

    from prefect.server.database.configurations import SQLITE_BEGIN_MODE
    from prefect.server.utilities import worker_channel

    monkeypatch.delenv("SPNAS_DATABASE_URL", raising=False)
    argv = prefect_server.argv(_cfg(tmp_path, db="sqlite"))
    assert argv[1:5] == ["-m", "spnas.prefect_server", "server", "start"]
    assert prefect_server.argv(_cfg(tmp_path, db="postgres"))[0].endswith("/prefect")

    seen: list[str | None] = []

    async def persist(*args, **kwargs):  # what the real one's first statement would BEGIN with
        seen.append(SQLITE_BEGIN_MODE.get())
        return "updated"

    monkeypatch.setattr(worker_channel, "_persist_worker_channel_heartbeat", persist)
    prefect_server._immediate_heartbeats()

    async def heartbeat() -> tuple[str, str | None]:
        SQLITE_BEGIN_MODE.set("DEFERRED")  # what session_context(begin_transaction=True) sets
        result = await worker_channel._persist_worker_channel_heartbeat(None, "local", None)
        return result, SQLITE_BEGIN_MODE.get()

    assert asyncio.run(heartbeat()) == ("updated", "DEFERRED")  # restored afterwards
    assert seen == ["IMMEDIATE"]
