"""The stack's Prefect server: its command line and health check. On PostgreSQL it is the plain
`prefect` CLI; on SQLite `python -m spnas.prefect_server server start ...`, the same CLI with one
transaction of Prefect 3.8.8 made to wait for the write lock instead of failing (see
_immediate_heartbeats)."""
from __future__ import annotations

from typing import Any

from spnas import postgres
from spnas.config import StackConfig
from spnas.supervise import bin_path, http_request


def prefect_command(cfg: StackConfig) -> list[str]:
    """How the Prefect server is started: the plain CLI on PostgreSQL; on SQLite through this
    module, which fixes one transaction of Prefect's first (see _immediate_heartbeats)."""
    if postgres.resolve(cfg).kind == postgres.SQLITE:
        return [bin_path("python"), "-m", "spnas.prefect_server"]
    return [bin_path("prefect")]


def argv(cfg: StackConfig) -> list[str]:
    return [*prefect_command(cfg), "server", "start", "--host", cfg.host,
            "--port", str(cfg.prefect_port), "--analytics-off"]


def env(cfg: StackConfig) -> dict[str, str]:
    return {}


def healthy(cfg: StackConfig) -> bool:
    code, body = http_request("GET", f"{cfg.prefect_api_url}/health", creds=cfg.credentials)
    return code == 200 and body.strip() == b"true"


def _immediate_heartbeats() -> None:
    """Prefect 3.8.8 stores a worker's heartbeat in a DEFERRED SQLite transaction that first
    reads the work pool, then upserts the worker row. When another writer (two flow runs
    logging at once) commits in between, SQLite cannot upgrade that read to a write: it fails
    at once with "database is locked" (no busy timeout applies), the server logs a traceback
    and drops the worker's channel. Started IMMEDIATE, the transaction takes the write lock
    first and waits its turn (busy timeout 60 s), as Prefect's orchestration writes already do."""
    import functools

    from prefect.server.database.configurations import SQLITE_BEGIN_MODE
    from prefect.server.utilities import worker_channel

    original = getattr(worker_channel, "_persist_worker_channel_heartbeat", None)
    if original is None:  # another Prefect: nothing to fix here
        return

    @functools.wraps(original)
    async def persist(*args: Any, **kwargs: Any) -> Any:
        # Read by the session's BEGIN, which runs lazily at the first statement inside.
        token = SQLITE_BEGIN_MODE.set("IMMEDIATE")
        try:
            return await original(*args, **kwargs)
        finally:
            SQLITE_BEGIN_MODE.reset(token)

    worker_channel._persist_worker_channel_heartbeat = persist


def _prefect_main() -> int:
    """`python -m spnas.prefect_server server start ...`: the `prefect` CLI, heartbeats fixed. The
    server runs in this process (one uvicorn worker), so the patched module is the one used."""
    import sys

    _immediate_heartbeats()
    from prefect.cli import app

    sys.argv = ["prefect", *sys.argv[1:]]
    return int(app() or 0)


if __name__ == "__main__":
    raise SystemExit(_prefect_main())
