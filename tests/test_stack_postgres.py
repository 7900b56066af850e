"""The stack on PostgreSQL: `up` with db=postgres starts a server under the state folder (Debian's
binaries, 127.0.0.1 only), Prefect and MLflow keep everything in its databases, lcnet/full runs
through the real worker, and `down` stops the server last and leaves none of its processes."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from core.procs import cmdline, pid_alive
from spnas import postgres, stack
from spnas.stack import StackConfig, StackError

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def state_root():
    """A folder the `postgres` user can walk into: as root the server runs as that user, and
    pytest's tmp_path sits under a 0700 folder of root's."""
    root = Path(tempfile.mkdtemp(prefix="spnas-pg-test-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _count(server: postgres.Server, database: str, query: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(host=server.host, port=server.port, user=server.user,
                         password=server.password, dbname=database) as con:
        return con.execute(query).fetchall()


@pytest.mark.timeout(400)
def test_lcnet_runs_on_the_postgres_stack(state_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("SPNAS_DATABASE_URL", raising=False)
    ports = {"prefect_port": _free_port(), "mlflow_port": _free_port(), "postgres_port": _free_port()}
    cfg = StackConfig(state=state_root / "state", db="postgres", **ports)
    out = state_root / "out"
    pg_pid = None
    try:
        info = stack.up(cfg)
        print(info.describe())
        pg_pid = info.services["postgres"].pid
        assert f"PostgreSQL spnas@127.0.0.1:{cfg.postgres_port}" in info.describe()
        assert json.loads((cfg.state / "database.json").read_text()) == {
            "db": "postgres", "server": "local", "address": f"spnas@127.0.0.1:{cfg.postgres_port}"}
        # The password is the running user's alone, and stays off the process list.
        assert (cfg.state / "postgres/password").stat().st_mode & 0o077 == 0
        password = (cfg.state / "postgres/password").read_text().strip()
        for svc in info.services.values():
            assert password not in " ".join(cmdline(svc.pid) or [])

        # `up` again without --db: the state folder remembers PostgreSQL and reuses everything;
        # asking for SQLite while it runs is refused.
        again = stack.up(StackConfig(state=cfg.state, **ports))
        assert {n: s.pid for n, s in again.services.items()} == {n: s.pid for n, s in info.services.items()}
        with pytest.raises(StackError, match="running on PostgreSQL.*spnas down"):
            stack.up(StackConfig(state=cfg.state, db="sqlite", **ports))

        assert stack.deploy_all(cfg) == 0
        overrides = {"train": {"epochs": 1}, "model": {"scale": 0.25}, "predict": {"count": 2, "repeats": 1},
                     "num_threads": 1, "output_root": str(out)}
        code = stack.run_deployment(cfg, "lcnet/full", {"params_file": "params/lcnet.yaml", "overrides": overrides})
        assert code == 0
        runs = [d for d in out.iterdir() if d.is_dir()]
        assert len(runs) == 1 and (runs[0] / "summary.json").is_file()

        client = MlflowClient(cfg.mlflow_url)
        exp = client.get_experiment_by_name("lcnet")
        found = client.search_runs([exp.experiment_id])
        assert len(found) == 7 and {r.info.status for r in found} == {"FINISHED"}

        # Both servers keep their records in PostgreSQL, and nothing went to SQLite files.
        server = postgres.resolve(cfg).server
        assert server is not None
        in_pg = _count(server, "mlflow", "SELECT run_uuid, status FROM runs")
        assert sorted(in_pg) == sorted((r.info.run_id, "FINISHED") for r in found)
        flow_runs = _count(server, "prefect", "SELECT name, state_type FROM flow_run")
        assert (runs[0].name, "COMPLETED") in [(n, str(s).rsplit(".", 1)[-1]) for n, s in flow_runs]
        assert not (cfg.state / "mlflow.db").exists()
        assert not (cfg.prefect_home / "prefect.db").exists()
        report = stack.status(cfg)
        assert report["postgres"]["alive"] and report["postgres"]["healthy"]
    finally:
        stopped = stack.down(cfg)
    assert pg_pid is not None and stopped["postgres"] == pg_pid
    assert not postgres.local_healthy(cfg)
    ready = subprocess.run([str(postgres.bin_dir() / "pg_isready"), "-h", "127.0.0.1",
                            "-p", str(cfg.postgres_port)], capture_output=True)
    assert ready.returncode != 0
    assert not pid_alive(pg_pid) and not postgres.group_members(pg_pid)
    assert not any(s["alive"] for s in stack.status(cfg).values())
    assert not (cfg.state / "postgres/data/postmaster.pid").exists()
    if os.geteuid() == 0:  # the data folder belongs to the account that ran the server
        assert (cfg.state / "postgres/data").stat().st_uid == postgres._run_as().pw_uid
