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
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from spnas import auth
from core.errors import InputError
from core.paths import REPO_ROOT, state_dir
from core.procs import pid_alive as _alive
from core.procs import proc_stat as _proc_stat
from core.procs import read_proc as _read_proc

PREFECT = "prefect"
MLFLOW = "mlflow"
WORKER = "worker"
SERVICES = (PREFECT, MLFLOW, WORKER)
# Stopped in this order: a worker shutting down still talks to its server, and hangs in
# retries if the server is already gone.
_STOP_ORDER = (WORKER, MLFLOW, PREFECT)
WORKER_NAME = "spnas-local"

# Bypass any HTTP proxy from the environment: every address we talk to is loopback.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StackError(RuntimeError):
    """The stack cannot be brought into the requested state; the message says why."""


def _env_port(var: str, default: int) -> int:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise InputError(var, f"must be a TCP port number 1-65535, got {raw!r}") from None
    if not 1 <= port <= 65535:
        raise InputError(var, f"must be a TCP port number 1-65535, got {port}")
    return port


def _env_count(var: str, default: int) -> int:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise InputError(var, f"must be a whole number >= 1, got {raw!r}")
    return int(raw)


def _env_flag(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class StackConfig:
    # Bind address (SPNAS_HOST); anything but loopback needs credentials (spnas/auth.py).
    host: str = field(default_factory=auth.bind_host_from_env)
    # What URLs shown to others say (SPNAS_PUBLIC_HOST; "" = derived, see `public`).
    public_host: str = field(default_factory=auth.public_host_from_env)
    credentials: auth.Credentials | None = field(default_factory=auth.credentials_from_env,
                                                 repr=False)
    prefect_port: int = field(default_factory=lambda: _env_port("SPNAS_PREFECT_PORT", 4200))
    mlflow_port: int = field(default_factory=lambda: _env_port("SPNAS_MLFLOW_PORT", 5000))
    pool: str = "local"
    # One flow run at a time: on 2 cores two trainings only fight over the same CPUs.
    worker_limit: int = field(default_factory=lambda: _env_count("SPNAS_WORKER_LIMIT", 1))
    # "sqlite" or "postgres" (spnas/postgres.py); None: what this state folder last ran with.
    db: str | None = None
    postgres_port: int = field(default_factory=lambda: _env_port("SPNAS_POSTGRES_PORT", 5433))
    # One uvicorn worker (threads inside) is plenty for one user; each extra costs ~250 MB.
    mlflow_workers: int = 1
    # MLflow's job runner (GenAI scorers) spawns ~8 huey processes (~700 MB) and leaves a
    # temp folder in /dev/shm per start; nothing here uses it. SPNAS_MLFLOW_JOBS=1 enables.
    mlflow_jobs: bool = field(default_factory=lambda: _env_flag("SPNAS_MLFLOW_JOBS"))
    start_timeout: float = 120.0
    stop_timeout: float = 20.0
    # Resolved when the config is made, so a test's SPNAS_HOME is captured once.
    state: Path = field(default_factory=state_dir)

    def __post_init__(self) -> None:
        auth.check_exposure(self.host, self.credentials)
        if self.prefect_port == self.mlflow_port:
            raise InputError(
                "SPNAS_MLFLOW_PORT",
                f"must differ from SPNAS_PREFECT_PORT (both are {self.prefect_port})",
            )
        from spnas import postgres

        postgres.check_config(self)

    @property
    def public(self) -> str:
        return auth.public_host(self.host, self.public_host)

    def _url(self, port: int, public: bool = False) -> str:
        host = self.public if public else auth.connect_host(self.host)
        return f"http://{auth.url_host(host)}:{port}"

    @property
    def prefect_ui_url(self) -> str:
        return self._url(self.prefect_port)

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_ui_url}/api"

    @property
    def mlflow_url(self) -> str:
        return self._url(self.mlflow_port)

    def mlflow_runs_url(self, experiment_id: str | int) -> str:
        # MLflow 3.17 opens an experiment on a GenAI overview; the runs table is this route.
        return f"{self._url(self.mlflow_port, public=True)}/#/experiments/{experiment_id}/runs"

    @property
    def prefect_home(self) -> Path:
        return self.state / "prefect"

    @property
    def logs_dir(self) -> Path:
        return self.state / "logs"

    @property
    def pids_dir(self) -> Path:
        return self.state / "pids"

    def log_file(self, service: str) -> Path:
        return self.logs_dir / f"{service}.log"

    def pid_file(self, service: str) -> Path:
        return self.pids_dir / f"{service}.pid"

    def service_url(self, service: str) -> str:
        """The address shown to people (SPNAS_PUBLIC_HOST when set)."""
        if service == MLFLOW:
            return self._url(self.mlflow_port, public=True)
        ui = self._url(self.prefect_port, public=True)
        return ui if service == PREFECT else f"{ui}/work-pools/work-pool/{self.pool}"


def stack_env(cfg: StackConfig) -> dict[str, str]:
    """The variables every process of ours runs with (servers, worker, CLI calls, flows)."""
    home = cfg.prefect_home
    public_api = f"{cfg.service_url(PREFECT)}/api"
    loopback = ",".join(dict.fromkeys((auth.connect_host(cfg.host), cfg.public, "localhost")))
    no_proxy = ",".join(p for p in (os.environ.get("NO_PROXY", ""), loopback) if p)
    return {
        "SPNAS_HOME": str(cfg.state),
        # prefect.yaml's pull step runs each flow from this checkout.
        "SPNAS_REPO": str(REPO_ROOT),
        "SPNAS_PREFECT_PORT": str(cfg.prefect_port),
        "SPNAS_MLFLOW_PORT": str(cfg.mlflow_port),
        # Prefect home, profiles and DB inside the state folder: ~/.prefect is never read.
        "PREFECT_HOME": str(home),
        "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        "PREFECT_API_URL": cfg.prefect_api_url,
        # The UI is told its API address by the server; without this a non-4200 port serves
        # a UI that calls 4200 ("Can't connect to Server API") while health checks pass.
        # ... and it must be an address the browser (maybe on another machine) can reach.
        "PREFECT_UI_API_URL": public_api,
        "PREFECT_UI_URL": cfg.service_url(PREFECT),
        "PREFECT_SERVER_API_HOST": cfg.host,
        "PREFECT_SERVER_API_PORT": str(cfg.prefect_port),
        # Offline machines: telemetry only produces errors in the logs.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        # Persisted task results are what lets a crashed flow run resume from cache.
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "MLFLOW_TRACKING_URI": cfg.mlflow_url,
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
        # With credentials: PREFECT_API_AUTH_STRING, MLFLOW_TRACKING_USERNAME/PASSWORD.
        **auth.client_env(cfg.credentials),
    }


def process_env(cfg: StackConfig) -> dict[str, str]:
    """os.environ with the stack's variables on top.

    Inherited PREFECT_* variables are dropped: they configure the user's other Prefect
    setups (a Cloud key, a profile, a database URL) and would leak into this one.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(stack_env(cfg))
    return env


# --------------------------------------------------------------------------- processes


def _bin(name: str) -> str:
    # The venv's own entry points, so the stack runs the pinned prefect/mlflow.
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise StackError(f"{name} is not installed next to {sys.executable}; "
                         "install the project (pip install -e .) into this environment.")
    return str(path)


def _argv(cfg: StackConfig, service: str) -> list[str]:
    from spnas import postgres, prefect_server

    if service == PREFECT:
        return [*prefect_server.prefect_command(cfg), "server", "start", "--host", cfg.host,
                "--port", str(cfg.prefect_port), "--analytics-off"]
    if service == MLFLOW:
        return [_bin("mlflow"), "server", "--host", cfg.host, "--port", str(cfg.mlflow_port),
                "--workers", str(cfg.mlflow_workers),
                *postgres.mlflow_store_args(cfg),
                # Proxied artifacts: clients upload over HTTP, files land in the state folder.
                "--serve-artifacts", "--artifacts-destination", str(cfg.state / "mlartifacts"),
                *(["--app-name", "basic-auth"] if cfg.credentials else [])]
    return [_bin("prefect"), "worker", "start", "--pool", cfg.pool, "--type", "process",
            "--name", WORKER_NAME, "--limit", str(cfg.worker_limit)]


def _cmdline(pid: int) -> list[str] | None:
    raw = _read_proc(pid, "cmdline")
    return None if raw is None else [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _is_ours(pid: int, cfg: StackConfig) -> bool:
    """True if the process carries this state folder's SPNAS_HOME (we set it on everything).

    Guards against a pidfile whose pid was reused by an unrelated process."""
    raw = _read_proc(pid, "environ")
    if raw is None:
        # No procfs to check against: trust a live pid from our own pidfile.
        return not Path("/proc/self").exists() and _alive(pid)
    return f"SPNAS_HOME={cfg.state}".encode() in raw.split(b"\0")


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _owned_tree(pgid: int, cfg: StackConfig) -> list[int]:
    """Live processes of ours in group `pgid`, plus their descendants in other groups.

    A process group id cannot be reissued while any member lives, so members of the
    recorded group are the processes we started. Descendants matter because the process
    worker runs each flow in a new session; those carry our SPNAS_HOME too.
    """
    if not Path("/proc/self").exists():
        return [pgid] if _alive(pgid) else []
    stats = {pid: s for pid in _all_pids() if (s := _proc_stat(pid)) and s[0] not in "ZX"}
    tree = {pid for pid, (_, _, pgrp) in stats.items() if pgrp == pgid}
    grew = True
    while grew:
        children = {pid for pid, (_, ppid, _) in stats.items() if ppid in tree} - tree
        tree |= children
        grew = bool(children)
    return sorted(pid for pid in tree if _is_ours(pid, cfg))


def _read_pid(cfg: StackConfig, service: str) -> int | None:
    try:
        return int(cfg.pid_file(service).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _recorded_pid(cfg: StackConfig, service: str) -> int | None:
    """The pidfile's pid if it names a live process of ours, else None (stale file removed)."""
    pid = _read_pid(cfg, service)
    if pid is None:
        cfg.pid_file(service).unlink(missing_ok=True)
        return None
    if _alive(pid) and _is_ours(pid, cfg):
        return pid
    # Leader gone: stop any members it left behind (e.g. uvicorn workers still holding the
    # port) before the service is started again; this also removes the pidfile.
    _stop_group(cfg, service, pid)
    return None


# Popen objects of services started by this process, so they are reaped (no zombies,
# no ResourceWarning) when `down` runs in the same process.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _start(cfg: StackConfig, service: str) -> subprocess.Popen[bytes]:
    cfg.logs_dir.mkdir(parents=True, exist_ok=True)
    cfg.pids_dir.mkdir(parents=True, exist_ok=True)
    argv = _argv(cfg, service)
    env = process_env(cfg)
    if service == MLFLOW and not cfg.mlflow_jobs:
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    auth.apply_server_env(cfg, service, env)
    from spnas import postgres

    env.update(postgres.service_env(cfg, service))  # database URLs; SQLite WAL
    with open(cfg.log_file(service), "ab") as log:
        stamp = datetime.now().isoformat(timespec="seconds")
        log.write(f"\n=== {stamp} spnas starting: {' '.join(argv)}\n".encode())
        log.flush()
        # Own session = own process group: `down` signals exactly this tree.
        proc = subprocess.Popen(argv, cwd=cfg.state, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    cfg.pid_file(service).write_text(f"{proc.pid}\n")
    return proc


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _reap(pid: int, wait: float = 0.0) -> None:
    proc = _CHILDREN.get(pid)
    if proc is None:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=wait) if wait else proc.poll()
    if proc.returncode is not None:
        del _CHILDREN[pid]


def _stop_group(cfg: StackConfig, service: str, pgid: int) -> bool:
    """SIGTERM the service's tree, SIGKILL what is left after the timeout. True if it ran."""
    seen = set(_owned_tree(pgid, cfg))

    def left() -> list[int]:
        # Remember every pid seen: a flow run whose worker died is reparented to init and
        # would drop out of the tree, but must still get the SIGKILL.
        seen.update(_owned_tree(pgid, cfg))
        _reap(pgid)
        return [pid for pid in seen if _alive(pid) and _is_ours(pid, cfg)]

    if seen:
        _signal_all(sorted(seen), signal.SIGTERM)
        deadline = time.monotonic() + cfg.stop_timeout
        while (remaining := left()) and time.monotonic() < deadline:
            time.sleep(0.2)
        if remaining:
            _signal_all(remaining, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while left() and time.monotonic() < deadline:
                time.sleep(0.1)
    _reap(pgid, wait=1.0)
    cfg.pid_file(service).unlink(missing_ok=True)
    return bool(seen)


# --------------------------------------------------------------------------- health


def _http(method: str, url: str, body: Mapping[str, Any] | None = None,
          timeout: float = 2.0, creds: auth.Credentials | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if creds is not None:
        headers["Authorization"] = creds.basic_header
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _HTTP.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, ValueError):  # refused, reset, timed out, garbled
        return 0, b""


def _prefect_healthy(cfg: StackConfig) -> bool:
    code, body = _http("GET", f"{cfg.prefect_api_url}/health", creds=cfg.credentials)
    return code == 200 and body.strip() == b"true"


def _mlflow_healthy(cfg: StackConfig) -> bool:
    code, body = _http("GET", f"{cfg.mlflow_url}/health", creds=cfg.credentials)
    return code == 200 and body.strip() == b"OK"


def _worker_heartbeat(cfg: StackConfig) -> datetime | None:
    """Last heartbeat of our worker if the server lists it ONLINE in the pool."""
    code, body = _http("POST", f"{cfg.prefect_api_url}/work_pools/{cfg.pool}/workers/filter", {},
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


def _port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: TIME_WAIT leftovers of a stopped server do not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _port_error(cfg: StackConfig, service: str) -> StackError:
    port, var = ((cfg.prefect_port, "SPNAS_PREFECT_PORT") if service == PREFECT
                 else (cfg.mlflow_port, "SPNAS_MLFLOW_PORT"))
    hint = ""
    if _HEALTH[service](cfg):
        label = "Prefect" if service == PREFECT else "MLflow"
        hint = f" (it answers like a {label} server, started outside {cfg.state})"
    return StackError(f"Port {port} on {cfg.host} is already in use by a process this stack "
                      f"did not start{hint}; stop it or set {var} to a free port.")


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join("    " + line for line in tail)


def _await(cfg: StackConfig, check: Callable[[], bool], pid: int) -> bool:
    deadline = time.monotonic() + cfg.start_timeout
    while time.monotonic() < deadline and _alive(pid):
        if check():
            return True
        time.sleep(0.25)
    return False


def _wait_started(cfg: StackConfig, service: str, proc: subprocess.Popen[bytes],
                  check: Callable[[], bool]) -> None:
    """Wait for a service we just started; on failure stop it and point at its log."""
    deadline = time.monotonic() + cfg.start_timeout
    log = cfg.log_file(service)
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            _stop_group(cfg, service, proc.pid)
            raise StackError(f"The {service} service exited with code {proc.returncode} while "
                             f"starting; see {log}:\n{_log_tail(log)}")
        time.sleep(0.25)
    _stop_group(cfg, service, proc.pid)
    raise StackError(f"The {service} service did not become healthy within "
                     f"{cfg.start_timeout:.0f} s and was stopped; see {log}:\n{_log_tail(log)}")


# --------------------------------------------------------------------------- public API


@dataclass
class ServiceInfo:
    name: str
    pid: int
    url: str
    log: Path
    reused: bool
    seconds: float  # time to healthy (0 when reused)


@dataclass
class StackInfo:
    config: StackConfig
    services: dict[str, ServiceInfo]

    def describe(self) -> str:
        from spnas import postgres

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
    pid = _recorded_pid(cfg, service)
    if pid is None:
        return None
    want = _argv(cfg, service)[1:]
    have = _cmdline(pid)
    if have is not None and have[-len(want):] != want:
        raise StackError(f"The {service} service of {cfg.state} is already running with other "
                         f"settings (pid {pid}: {' '.join(have[1:])}); run down first.")
    if not auth.same_credentials(_read_proc(pid, "environ"), cfg.credentials):
        raise StackError(f"The {service} service of {cfg.state} is already running with other "
                         f"credentials than {auth.AUTH_VAR}/{auth.AUTH_FILE_VAR} give now "
                         f"(pid {pid}); run down first.")
    return pid


def _ensure_pool(cfg: StackConfig) -> None:
    code, body = _http("GET", f"{cfg.prefect_api_url}/work_pools/{cfg.pool}", timeout=10,
                       creds=cfg.credentials)
    if code == 200:
        kind = json.loads(body).get("type")
        if kind != "process":
            raise StackError(f"Work pool {cfg.pool!r} exists with type {kind!r}; "
                             "the stack needs a 'process' pool.")
        return
    done = subprocess.run([_bin("prefect"), "--no-prompt", "work-pool", "create", cfg.pool,
                           "--type", "process"], env=process_env(cfg), cwd=cfg.state,
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise StackError(f"Could not create work pool {cfg.pool!r}: "
                         f"{(done.stderr or done.stdout).strip()[-2000:]}")


def up(cfg: StackConfig | None = None) -> StackInfo:
    """Start (or reuse) the Prefect server, the MLflow server and the worker."""
    cfg = cfg or StackConfig()
    with _locked(cfg):
        from spnas import postgres

        postgres.check_switch(cfg)  # before _reusable's vaguer "running with other settings"
        running = {svc: _reusable(cfg, svc) for svc in SERVICES}
        # Ours but not (yet) healthy, e.g. a server mid-boot from another `up`: wait for it,
        # and replace it if it never answers.
        for svc in (PREFECT, MLFLOW):
            pid = running[svc]
            if pid is not None and not _await(cfg, lambda s=svc: _HEALTH[s](cfg), pid):
                _stop_group(cfg, svc, pid)
                running[svc] = None
        # Check both ports before starting anything, so a conflict leaves nothing half-up.
        for svc, port in ((PREFECT, cfg.prefect_port), (MLFLOW, cfg.mlflow_port)):
            if running[svc] is None and _port_in_use(cfg.host, port):
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
                _wait_started(cfg, svc, proc, check)
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
            _stop_group(cfg, WORKER, running[WORKER])
            running[WORKER] = None
        if running[WORKER] is None:
            since = datetime.now(timezone.utc)
            started[WORKER] = (_start(cfg, WORKER), time.monotonic())
        else:
            since = None
        finish(WORKER, lambda: _worker_healthy(cfg, since))
        finish(MLFLOW, lambda: _mlflow_healthy(cfg))
        if (why := auth.sync_mlflow_admin(cfg)) is not None:  # SPNAS_AUTH changed since
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
            pid = _read_pid(cfg, svc)
            if pid is None:
                cfg.pid_file(svc).unlink(missing_ok=True)
                stopped[svc] = None
                continue
            stopped[svc] = pid if _stop_group(cfg, svc, pid) else None
        # PostgreSQL last: the servers above write to it until they stop.
        from spnas import postgres

        pg_pid = postgres.stop_local(cfg)
        if pg_pid is not None or postgres.uses_local(cfg):
            stopped[postgres.SERVICE] = pg_pid
    return stopped


def status(cfg: StackConfig | None = None) -> dict[str, dict[str, Any]]:
    """Per service: pid (from its pidfile), alive, healthy, url, log."""
    cfg = cfg or StackConfig()
    report: dict[str, dict[str, Any]] = {}
    for svc in SERVICES:
        pid = _read_pid(cfg, svc)
        alive = pid is not None and _alive(pid) and _is_ours(pid, cfg)
        report[svc] = {"pid": pid, "alive": alive, "healthy": alive and _HEALTH[svc](cfg),
                       "url": cfg.service_url(svc), "log": str(cfg.log_file(svc))}
    from spnas import postgres

    if (pg := postgres.status(cfg)) is not None:
        report[postgres.SERVICE] = pg
    return report


def deploy_all(cfg: StackConfig | None = None, root: Path = REPO_ROOT,
               check: bool = True) -> int:
    """`prefect --no-prompt deploy --all` in `root` (the repo, where prefect.yaml lives)."""
    cfg = cfg or StackConfig()
    if not (root / "prefect.yaml").exists():
        raise StackError(f"No prefect.yaml in {root}; nothing to deploy.")
    code = subprocess.run([_bin("prefect"), "--no-prompt", "deploy", "--all"], cwd=root,
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
    argv = [_bin("prefect"), "--no-prompt", "deployment", "run", name]
    for key, value in (params or {}).items():
        argv += ["--param", f"{key}={json.dumps(value)}"]
    if watch:
        argv.append("--watch")
    return subprocess.run(argv, cwd=REPO_ROOT, env=process_env(cfg)).returncode
