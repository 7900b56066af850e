"""Other processes by pid, through psutil: liveness, process groups, and stopping a set of them.

The stack uses it to find and stop its services, the data builders to tell a crashed build's
leftovers from a build still running. A zombie (exited, not yet reaped by its parent) counts
as gone everywhere: its parent may never reap it (e.g. a container whose init does not).
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable

import psutil

_ERRORS = (psutil.NoSuchProcess, psutil.AccessDenied)


def running(proc: psutil.Process) -> bool:
    """True while `proc` (the very process, not a later one with its pid) has not exited."""
    try:
        return proc.is_running() and proc.status() not in {psutil.STATUS_ZOMBIE,
                                                           psutil.STATUS_DEAD}
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # exists, owned by someone else


def find(pid: int) -> psutil.Process | None:
    """The running process with this pid, None if there is none (or only a zombie)."""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
    return proc if running(proc) else None


def pid_alive(pid: int) -> bool:
    """True if `pid` is a running process; zombies count as dead."""
    return find(pid) is not None


def environ(proc: psutil.Process) -> dict[str, str] | None:
    """Its environment, None when it cannot be read (gone, or someone else's)."""
    try:
        return proc.environ()
    except _ERRORS:
        return None


def cmdline(pid: int) -> list[str] | None:
    proc = find(pid)
    if proc is None:
        return None
    try:
        return proc.cmdline()
    except _ERRORS:
        return None


def group(pgid: int) -> list[psutil.Process]:
    """Running members of process group `pgid` (the leader may be gone, its members not)."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError):  # gone meanwhile
            if os.getpgid(proc.pid) == pgid and running(proc):
                members.append(proc)
    return members


def with_descendants(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """`procs` and everything they started, each once (in any process group or session)."""
    found = {p.pid: p for p in procs}
    for proc in list(found.values()):
        with contextlib.suppress(*_ERRORS):
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
    return [p for p in found.values() if running(p)]


def send(procs: Iterable[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        with contextlib.suppress(*_ERRORS):
            proc.send_signal(sig)  # psutil refuses if the pid now names another process


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` s for `procs` to exit; returns those still running.

    psutil's wait_procs reaps children of ours, but waits on a zombie of someone else's until
    its parent reaps it: it is asked in short slices, and zombies count as gone."""
    alive = [p for p in procs if running(p)]
    deadline = time.monotonic() + timeout
    while alive:
        _, alive = psutil.wait_procs(alive, timeout=min(0.2, max(0.0, deadline - time.monotonic())))
        alive = [p for p in alive if running(p)]
        if time.monotonic() >= deadline:
            break
    return alive


__all__ = ["cmdline", "environ", "find", "group", "pid_alive", "running", "send", "wait_gone",
           "with_descendants"]
