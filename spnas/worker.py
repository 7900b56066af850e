"""The stack's Prefect process worker: its work pool, its command line and its health (a recent
heartbeat of ours in the pool, as the Prefect server lists it)."""
from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone

from core.errors import StackError
from spnas.config import WORKER_NAME, StackConfig, process_env
from spnas.supervise import bin_path, http_request

# A worker whose last heartbeat is older than this is wedged (it beats every ~30 s).
STALE_AFTER_S = 120


def argv(cfg: StackConfig) -> list[str]:
    return [bin_path("prefect"), "worker", "start", "--pool", cfg.pool, "--type", "process",
            "--name", WORKER_NAME, "--limit", str(cfg.worker_limit)]


def env(cfg: StackConfig) -> dict[str, str]:
    return {}


def heartbeat(cfg: StackConfig) -> datetime | None:
    """Last heartbeat of our worker if the server lists it ONLINE in the pool."""
    code, body = http_request("POST", f"{cfg.prefect_api_url}/work_pools/{cfg.pool}/workers/filter",
                              {}, creds=cfg.credentials)
    if code != 200:
        return None
    for worker in json.loads(body):
        if worker.get("name") == WORKER_NAME and worker.get("status") == "ONLINE":
            beat = worker.get("last_heartbeat_time")
            return datetime.fromisoformat(beat.replace("Z", "+00:00")) if beat else None
    return None


def healthy(cfg: StackConfig, since: datetime | None = None) -> bool:
    beat = heartbeat(cfg)
    if beat is None:
        return False
    if since is not None:  # a fresh start must have checked in itself, not a predecessor
        return beat >= since
    return (datetime.now(timezone.utc) - beat).total_seconds() < STALE_AFTER_S


def ensure_pool(cfg: StackConfig) -> None:
    """Create the process work pool the worker serves, or check the one that exists."""
    code, body = http_request("GET", f"{cfg.prefect_api_url}/work_pools/{cfg.pool}", timeout=10,
                              creds=cfg.credentials)
    if code == 200:
        kind = json.loads(body).get("type")
        if kind != "process":
            raise StackError(f"Work pool {cfg.pool!r} exists with type {kind!r}; "
                             "the stack needs a 'process' pool.")
        return
    done = subprocess.run([bin_path("prefect"), "--no-prompt", "work-pool", "create", cfg.pool,
                           "--type", "process"], env=process_env(cfg), cwd=cfg.state,
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise StackError(f"Could not create work pool {cfg.pool!r}: "
                         f"{(done.stderr or done.stdout).strip()[-2000:]}")
