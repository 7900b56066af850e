"""Questions about other processes by pid, answered from /proc where there is one.

One place for "is this pid alive": the stack uses it to find and stop its services, the
data builders to tell a crashed build's leftovers from a build still running.
"""
from __future__ import annotations

import os
from pathlib import Path


def read_proc(pid: int, name: str) -> bytes | None:
    """The bytes of /proc/<pid>/<name>, None if unreadable (gone, not ours, or no procfs)."""
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return None


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a process from /proc, None if it does not exist."""
    raw = read_proc(pid, "stat")
    if raw is None:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(b")") + 2:].split()
    return fields[0].decode(), int(fields[1]), int(fields[2])


def pid_alive(pid: int) -> bool:
    """True if `pid` is a running process; zombies (exited, not yet reaped) count as dead."""
    stat = proc_stat(pid)
    if stat is not None:
        return stat[0] not in {"Z", "X"}  # a zombie still answers kill(pid, 0)
    if Path("/proc/self").exists():
        return False
    try:  # no procfs (macOS): fall back to the signal probe
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


__all__ = ["pid_alive", "proc_stat", "read_proc"]
