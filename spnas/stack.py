"""The local stack: a Prefect server, an MLflow server and one process worker on 127.0.0.1.

Everything lives under `state_dir()`: Prefect's home and database, MLflow's SQLite store and
artifacts, one log file and one pidfile per service. `up` is idempotent (running services
of ours are reused), refuses ports held by anything else, and starts each service in its own
session so `down` can stop the whole process tree (uvicorn workers, job runners) it owns,
and nothing else.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from core import procs
from core.errors import StackError
from core.paths import REPO_ROOT
from spnas import auth, postgres, prefect_server, server_auth
from spnas.config import (MLFLOW, PREFECT, SERVICES, WORKER, WORKER_NAME, StackConfig, process_env,
                          stack_env)
from spnas.supervise import (ServiceInfo, await_healthy, bin_path, http_request, live_pid,
                             port_in_use, read_pid, recorded_pid, spawn, stop_group, wait_started)

# Stopped in this order: a worker shutting down still talks to its server, and hangs in
# retries if the server is already gone.
_STOP_ORDER = (WORKER, MLFLOW, PREFECT)

_http = http_request  # the name tests/test_concurrent_runs.py calls

__all__ = ["MLFLOW", "PREFECT", "REPO_ROOT", "SERVICES", "WORKER", "WORKER_NAME", "ServiceInfo",
           "StackConfig", "StackError", "StackInfo", "deploy_all", "down", "process_env",
           "run_deployment", "stack_env", "status", "up"]


# --------------------------------------------------------------------------- processes


def _argv(cfg: StackConfig, service: str) -> list[str]:
    if service == PREFECT:
        return [*prefect_server.prefect_command(cfg), "server", "start", "--host", cfg.host,
                "--port", str(cfg.prefect_port), "--analytics-off"]
    if service == MLFLOW:
        return [bin_path("mlflow"), "server", "--host", cfg.host, "--port", str(cfg.mlflow_port),
                "--workers", str(cfg.mlflow_workers),
                *postgres.mlflow_store_args(cfg),
                # Proxied artifacts: clients upload over HTTP, files land in the state folder.
                "--serve-artifacts", "--artifacts-destination", str(cfg.state / "mlartifacts"),
                *(["--app-name", "basic-auth"] if cfg.credentials else [])]
    return [bin_path("prefect"), "worker", "start", "--pool", cfg.pool, "--type", "process",
            "--name", WORKER_NAME, "--limit", str(cfg.worker_limit)]


def _start(cfg: StackConfig, service: str) -> subprocess.Popen[bytes]:
    env = process_env(cfg)
    if service == MLFLOW and not cfg.mlflow_jobs:
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    server_auth.apply_server_env(cfg, service, env)
    env.update(postgres.service_env(cfg, service))  # database URLs; SQLite WAL
    return spawn(cfg, service, _argv(cfg, service), env, cfg.state)


# --------------------------------------------------------------------------- health


def _prefect_healthy(cfg: StackConfig) -> bool:
    code, body = http_request("GET", f"{cfg.prefect_api_url}/health", creds=cfg.credentials)
    return code == 200 and body.strip() == b"true"


def _mlflow_healthy(cfg: StackConfig) -> bool:
    code, body = http_request("GET", f"{cfg.mlflow_url}/health", creds=cfg.credentials)
    return code == 200 and body.strip() == b"OK"


def _worker_heartbeat(cfg: StackConfig) -> datetime | None:
    """Last heartbeat of our worker if the server lists it ONLINE in the pool."""
    code, body = http_request("POST", f"{cfg.prefect_api_url}/work_pools/{cfg.pool}/workers/filter", {},
                       creds=cfg.credentials)
    if code != 200:
        return None
    for worker in json.loads(body):
        if worker.get("name") == WORKER_NAME and worker.get("status") == "ONLINE":
            beat = worker.get("last_heartbeat_time")
            return datetime.fromisoformat(beat.replace("Z", "+00:00")) if beat else None
    return None


def _worker_healthy(cfg: StackConfig, since: datetime | None = None) -> bool:
    beat = _worker_heartbeat(cfg)
    if beat is None:
        return False
    if since is not None:  # a fresh start must have checked in itself, not a predecessor
        return beat >= since
    return (datetime.now(timezone.utc) - beat).total_seconds() < 120


_HEALTH: dict[str, Callable[[StackConfig], bool]] = {
    PREFECT: _prefect_healthy, MLFLOW: _mlflow_healthy, WORKER: _worker_healthy}


def _port_error(cfg: StackConfig, service: str) -> StackError:
    port, var = ((cfg.prefect_port, "SPNAS_PREFECT_PORT") if service == PREFECT
                 else (cfg.mlflow_port, "SPNAS_MLFLOW_PORT"))
    hint = ""
    if _HEALTH[service](cfg):
        label = "Prefect" if service == PREFECT else "MLflow"
        hint = f" (it answers like a {label} server, started outside {cfg.state})"
    return StackError(f"Port {port} on {cfg.host} is already in use by a process this stack "
                      f"did not start{hint}; stop it or set {var} to a free port.")


# --------------------------------------------------------------------------- public API


@dataclass
class StackInfo:
    config: StackConfig
    services: dict[str, ServiceInfo]

    def describe(self) -> str:
        cfg = self.config
        prefect_ui = cfg.service_url(PREFECT)
        rows = [
            ("Prefect UI", f"{prefect_ui}  (API {prefect_ui}/api)"),
            ("MLflow UI", cfg.service_url(MLFLOW)),
            ("Serving", f"bound to {cfg.host}; auth {auth.describe(cfg.credentials)}"),
            ("Work pool", f"{cfg.pool} (process worker, {cfg.worker_limit} flow run at a time)"),
            ("Database", postgres.describe(cfg)),
        ]
        for svc in self.services.values():
            how = "reused" if svc.reused else f"started in {svc.seconds:.1f} s"
            rows.append((f"  {svc.name}", f"pid {svc.pid}, {how}"))
        rows += [("Logs", str(cfg.logs_dir)), ("State", str(cfg.state))]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


@contextlib.contextmanager
def _locked(cfg: StackConfig) -> Iterator[None]:
    """Serialise up/down on one state folder (two terminals running `up` at once)."""
    cfg.state.mkdir(parents=True, exist_ok=True)
    with open(cfg.state / "stack.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _reusable(cfg: StackConfig, service: str) -> int | None:
    """Pid of a running instance of ours with the wanted command line, else None.

    One of ours started with other settings (another port) is an error, not a silent
    restart: the user may have flows running against it."""
    pid = recorded_pid(cfg, service)
    if pid is None:
        return None
    want = _argv(cfg, service)[1:]
    have = procs.cmdline(pid)
    if have is not None and have[-len(want):] != want:
        raise StackError(f"The {service} service of {cfg.state} is already running with other "
                         f"settings (pid {pid}: {' '.join(have[1:])}); run down first.")
    proc = procs.find(pid)
    environ = procs.environ(proc) if proc is not None else None
    if not auth.same_credentials(environ, cfg.credentials):
        raise StackError(f"The {service} service of {cfg.state} is already running with other "
                         f"credentials than {auth.AUTH_VAR}/{auth.AUTH_FILE_VAR} give now "
                         f"(pid {pid}); run down first.")
    return pid


def _ensure_pool(cfg: StackConfig) -> None:
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


def up(cfg: StackConfig | None = None) -> StackInfo:
    """Start (or reuse) the Prefect server, the MLflow server and the worker."""
    cfg = cfg or StackConfig()
    with _locked(cfg):
        postgres.check_switch(cfg)  # before _reusable's vaguer "running with other settings"
        running = {svc: _reusable(cfg, svc) for svc in SERVICES}
        # Ours but not (yet) healthy, e.g. a server mid-boot from another `up`: wait for it,
        # and replace it if it never answers.
        for svc in (PREFECT, MLFLOW):
            pid = running[svc]
            if pid is not None and not await_healthy(cfg, lambda s=svc: _HEALTH[s](cfg), pid):
                stop_group(cfg, svc, pid)
                running[svc] = None
        # Check both ports before starting anything, so a conflict leaves nothing half-up.
        for svc, port in ((PREFECT, cfg.prefect_port), (MLFLOW, cfg.mlflow_port)):
            if running[svc] is None and port_in_use(cfg.host, port):
                raise _port_error(cfg, svc)
        # The database is ready before the servers (they migrate it when they boot).
        pg_info = postgres.up(cfg)

        infos: dict[str, ServiceInfo] = {}
        started: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
        # Both servers boot concurrently (each takes 10-30 s on 2 cores, mostly imports).
        for svc in (PREFECT, MLFLOW):
            if running[svc] is None:
                started[svc] = (_start(cfg, svc), time.monotonic())

        def finish(svc: str, check: Callable[[], bool]) -> None:
            if svc in started:
                proc, t0 = started[svc]
                wait_started(cfg, svc, proc, check)
                infos[svc] = ServiceInfo(svc, proc.pid, cfg.service_url(svc),
                                         cfg.log_file(svc), False, time.monotonic() - t0)
            else:
                pid = running[svc]
                assert pid is not None
                infos[svc] = ServiceInfo(svc, pid, cfg.service_url(svc), cfg.log_file(svc),
                                         True, 0.0)

        finish(PREFECT, lambda: _prefect_healthy(cfg))
        _ensure_pool(cfg)
        if running[WORKER] is not None and not _worker_healthy(cfg):
            # Alive but not checking in (e.g. wedged while the server was away): replace it.
            stop_group(cfg, WORKER, running[WORKER])
            running[WORKER] = None
        if running[WORKER] is None:
            since = datetime.now(timezone.utc)
            started[WORKER] = (_start(cfg, WORKER), time.monotonic())
        else:
            since = None
        finish(WORKER, lambda: _worker_healthy(cfg, since))
        finish(MLFLOW, lambda: _mlflow_healthy(cfg))
        if (why := server_auth.sync_mlflow_admin(cfg)) is not None:  # SPNAS_AUTH changed since
            raise StackError(why)
        if pg_info is not None:
            infos[pg_info.name] = pg_info
        return StackInfo(cfg, {svc: infos[svc] for svc in (*SERVICES, "postgres") if svc in infos})


def down(cfg: StackConfig | None = None) -> dict[str, int | None]:
    """Stop the services recorded in pidfiles; returns {service: pid stopped or None}."""
    cfg = cfg or StackConfig()
    stopped: dict[str, int | None] = {}
    with _locked(cfg):
        for svc in _STOP_ORDER:
            pid = read_pid(cfg, svc)
            if pid is None:
                cfg.pid_file(svc).unlink(missing_ok=True)
                stopped[svc] = None
                continue
            stopped[svc] = pid if stop_group(cfg, svc, pid) else None
        # PostgreSQL last: the servers above write to it until they stop.
        pg_pid = postgres.stop_local(cfg)
        if pg_pid is not None or postgres.uses_local(cfg):
            stopped[postgres.SERVICE] = pg_pid
    return stopped


def status(cfg: StackConfig | None = None) -> dict[str, dict[str, Any]]:
    """Per service: pid (from its pidfile), alive, healthy, url, log."""
    cfg = cfg or StackConfig()
    report: dict[str, dict[str, Any]] = {}
    for svc in SERVICES:
        pid = read_pid(cfg, svc)
        alive = live_pid(pid, cfg)
        report[svc] = {"pid": pid, "alive": alive, "healthy": alive and _HEALTH[svc](cfg),
                       "url": cfg.service_url(svc), "log": str(cfg.log_file(svc))}
    if (pg := postgres.status(cfg)) is not None:
        report[postgres.SERVICE] = pg
    return report


def deploy_all(cfg: StackConfig | None = None, root: Path = REPO_ROOT,
               check: bool = True) -> int:
    """`prefect --no-prompt deploy --all` in `root` (the repo, where prefect.yaml lives)."""
    cfg = cfg or StackConfig()
    if not (root / "prefect.yaml").exists():
        raise StackError(f"No prefect.yaml in {root}; nothing to deploy.")
    code = subprocess.run([bin_path("prefect"), "--no-prompt", "deploy", "--all"], cwd=root,
                          env=process_env(cfg)).returncode
    if check and code != 0:
        raise StackError(f"prefect deploy --all failed with exit code {code} (output above).")
    return code


def run_deployment(cfg: StackConfig | None, name: str, params: Mapping[str, Any] | None = None,
                   watch: bool = True) -> int:
    """`prefect deployment run <flow>/<deployment>`; Prefect's own --watch output is shown.

    Values are passed as JSON (Prefect parses each --param value as JSON), so lists, numbers
    and nested dicts arrive typed."""
    cfg = cfg or StackConfig()
    argv = [bin_path("prefect"), "--no-prompt", "deployment", "run", name]
    for key, value in (params or {}).items():
        argv += ["--param", f"{key}={json.dumps(value)}"]
    if watch:
        argv.append("--watch")
    return subprocess.run(argv, cwd=REPO_ROOT, env=process_env(cfg)).returncode
