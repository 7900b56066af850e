"""The local stack: a Prefect server, an MLflow server and one process worker on 127.0.0.1.
One module per service says how it starts and when it is healthy (prefect_server, mlflow_server,
worker, postgres); this one starts, reuses and stops them together.

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
from typing import Any, Callable, Protocol

from core import procs
from core.errors import StackError
from core.paths import REPO_ROOT
from spnas import auth, mlflow_server, postgres, prefect_server, server_auth, worker
from spnas.config import (MLFLOW, PREFECT, SERVICES, WORKER, WORKER_NAME, StackConfig, process_env,
                          stack_env)
from spnas.supervise import (ServiceInfo, await_healthy, bin_path, live_pid, port_in_use, read_pid,
                             recorded_pid, spawn, stop_group, wait_started)

# Stopped in this order: a worker shutting down still talks to its server, and hangs in
# retries if the server is already gone.
_STOP_ORDER = (WORKER, MLFLOW, PREFECT)

__all__ = ["MLFLOW", "PREFECT", "REPO_ROOT", "SERVICES", "WORKER", "WORKER_NAME", "ServiceInfo",
           "StackConfig", "StackError", "StackInfo", "deploy_all", "down", "process_env",
           "run_deployment", "stack_env", "status", "up"]


# --------------------------------------------------------------------------- services


class _Service(Protocol):
    """What stack.py needs of a service module (prefect_server, mlflow_server, worker)."""

    def argv(self, cfg: StackConfig) -> list[str]: ...
    def env(self, cfg: StackConfig) -> dict[str, str]: ...
    def healthy(self, cfg: StackConfig) -> bool: ...


_MODULES: dict[str, _Service] = {PREFECT: prefect_server, MLFLOW: mlflow_server, WORKER: worker}


def _argv(cfg: StackConfig, service: str) -> list[str]:
    return _MODULES[service].argv(cfg)


def _healthy(cfg: StackConfig, service: str) -> bool:
    return _MODULES[service].healthy(cfg)


def _start(cfg: StackConfig, service: str) -> subprocess.Popen[bytes]:
    env = process_env(cfg)
    env.update(_MODULES[service].env(cfg))
    server_auth.apply_server_env(cfg, service, env)
    env.update(postgres.service_env(cfg, service))  # database URLs; SQLite WAL
    return spawn(cfg, service, _argv(cfg, service), env, cfg.state)


def _port_error(cfg: StackConfig, service: str) -> StackError:
    port, var = ((cfg.prefect_port, "SPNAS_PREFECT_PORT") if service == PREFECT
                 else (cfg.mlflow_port, "SPNAS_MLFLOW_PORT"))
    hint = ""
    if _healthy(cfg, service):
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
            if pid is not None and not await_healthy(cfg, lambda s=svc: _healthy(cfg, s), pid):
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

        finish(PREFECT, lambda: prefect_server.healthy(cfg))
        worker.ensure_pool(cfg)
        if running[WORKER] is not None and not worker.healthy(cfg):
            # Alive but not checking in (e.g. wedged while the server was away): replace it.
            stop_group(cfg, WORKER, running[WORKER])
            running[WORKER] = None
        if running[WORKER] is None:
            since = datetime.now(timezone.utc)
            started[WORKER] = (_start(cfg, WORKER), time.monotonic())
        else:
            since = None
        finish(WORKER, lambda: worker.healthy(cfg, since))
        finish(MLFLOW, lambda: mlflow_server.healthy(cfg))
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
        report[svc] = {"pid": pid, "alive": alive, "healthy": alive and _healthy(cfg, svc),
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
