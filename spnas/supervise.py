"""Starting, finding and stopping the stack's processes (every service, PostgreSQL included).

Each service runs in its own session, so its pid is also its process group id, written to
`<state>/pids/<service>.pid`. A process is "ours" when it carries this state folder's
SPNAS_HOME (every process of the stack gets it), which guards against a pidfile whose pid
was reused by an unrelated process. Stopping a service stops what its group started too:
the process worker runs each flow run in a new session.
"""
from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import psutil

from core import procs
from core.errors import StackError
from spnas import auth
from spnas.config import StackConfig

# Bypass any HTTP proxy from the environment: every address we talk to is loopback.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class ServiceInfo:
    name: str
    pid: int
    url: str
    log: Path
    reused: bool
    seconds: float  # time to healthy (0 when reused)


def bin_path(name: str) -> str:
    # The venv's own entry points, so the stack runs the pinned prefect/mlflow.
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise StackError(f"{name} is not installed next to {sys.executable}; "
                         "install the project (pip install -e .) into this environment.")
    return str(path)


# --------------------------------------------------------------------------- finding


def is_ours(proc: psutil.Process, cfg: StackConfig) -> bool:
    env = procs.environ(proc)
    return env is not None and env.get("SPNAS_HOME") == str(cfg.state)


def live_pid(pid: int | None, cfg: StackConfig) -> bool:
    """True if `pid` is a running process of ours."""
    proc = None if pid is None else procs.find(pid)
    return proc is not None and is_ours(proc, cfg)


def owned(pgid: int, cfg: StackConfig) -> list[psutil.Process]:
    """Running processes of ours in group `pgid`, plus their descendants in other groups.

    A process group id cannot be reissued while any member lives, so members of the recorded
    group are the processes we started, even after the leader is gone."""
    return [p for p in procs.with_descendants(procs.group(pgid)) if is_ours(p, cfg)]


def owned_tree(pgid: int, cfg: StackConfig) -> list[int]:
    return sorted(p.pid for p in owned(pgid, cfg))


def read_pid(cfg: StackConfig, service: str) -> int | None:
    try:
        return int(cfg.pid_file(service).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def recorded_pid(cfg: StackConfig, service: str) -> int | None:
    """The pidfile's pid if it names a live process of ours, else None (stale file removed)."""
    pid = read_pid(cfg, service)
    if pid is None:
        cfg.pid_file(service).unlink(missing_ok=True)
        return None
    if live_pid(pid, cfg):
        return pid
    # Leader gone: stop any members it left behind (e.g. uvicorn workers still holding the
    # port) before the service is started again; this also removes the pidfile.
    stop_group(cfg, service, pid)
    return None


# --------------------------------------------------------------------------- starting


# Popen objects of services started by this process, so they are reaped (no zombies,
# no ResourceWarning) when `down` runs in the same process.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn(cfg: StackConfig, service: str, argv: list[str], env: Mapping[str, str],
          cwd: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (own process group: what `down` stops), output appended
    to the service's log, pid in its pidfile."""
    cfg.logs_dir.mkdir(parents=True, exist_ok=True)
    cfg.pids_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.log_file(service), "ab") as log:
        stamp = datetime.now().isoformat(timespec="seconds")
        log.write(f"\n=== {stamp} spnas starting: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                **popen)
    _CHILDREN[proc.pid] = proc
    cfg.pid_file(service).write_text(f"{proc.pid}\n")
    return proc


def reap(pid: int, wait: float = 0.0) -> None:
    proc = _CHILDREN.get(pid)
    if proc is None:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=wait) if wait else proc.poll()
    if proc.returncode is not None:
        del _CHILDREN[pid]


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join("    " + line for line in tail)


def await_healthy(cfg: StackConfig, check: Callable[[], bool], pid: int) -> bool:
    """Wait for an already running service of ours to answer; False if it dies or times out."""
    deadline = time.monotonic() + cfg.start_timeout
    while time.monotonic() < deadline and procs.pid_alive(pid):
        if check():
            return True
        time.sleep(0.25)
    return False


def wait_started(cfg: StackConfig, service: str, proc: subprocess.Popen[bytes],
                 check: Callable[[], bool]) -> None:
    """Wait for a service we just started; on failure stop it and point at its log."""
    deadline = time.monotonic() + cfg.start_timeout
    log = cfg.log_file(service)
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            stop_group(cfg, service, proc.pid)
            raise StackError(f"The {service} service exited with code {proc.returncode} while "
                             f"starting; see {log}:\n{log_tail(log)}")
        time.sleep(0.25)
    stop_group(cfg, service, proc.pid)
    raise StackError(f"The {service} service did not become healthy within "
                     f"{cfg.start_timeout:.0f} s and was stopped; see {log}:\n{log_tail(log)}")


# --------------------------------------------------------------------------- stopping


def stop_group(cfg: StackConfig, service: str, pgid: int) -> bool:
    """SIGTERM the service's tree, SIGKILL what is left after the timeout. True if it ran."""
    deadline = time.monotonic() + cfg.stop_timeout
    # Every process seen is kept: a flow run whose worker died is reparented to init and
    # drops out of the tree, but must still get the SIGKILL.
    seen: dict[int, psutil.Process] = {}
    while new := [p for p in owned(pgid, cfg) if p.pid not in seen]:
        seen.update((p.pid, p) for p in new)
        procs.send(new, signal.SIGTERM)
        procs.wait_gone(seen.values(), max(0.0, deadline - time.monotonic()))
        reap(pgid)
    if left := [p for p in seen.values() if procs.running(p)]:
        procs.send(left, signal.SIGKILL)
        procs.wait_gone(left, 5.0)
    reap(pgid, wait=1.0)
    cfg.pid_file(service).unlink(missing_ok=True)
    return bool(seen)


# --------------------------------------------------------------------------- network


def http_request(method: str, url: str, body: Mapping[str, Any] | None = None,
                 timeout: float = 2.0, creds: auth.Credentials | None = None) -> tuple[int, bytes]:
    """(status, body) of one request; status 0 when nothing answered."""
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


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: TIME_WAIT leftovers of a stopped server do not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False
