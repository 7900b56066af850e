"""Where the project keeps its state: one ignored folder, `.spnas/` in the repo by default.

`SPNAS_HOME` overrides it (tests point it at a temporary folder)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from core.errors import InputError

REPO_ROOT = Path(__file__).resolve().parent.parent


def unwritable_reason(folder: Path) -> str | None:
    """Why files cannot be written under `folder` (which may not exist yet), or None.

    Tried, not asked: `os.access` says yes to root on a read-only mount or under /proc. Folders
    the probe creates are removed again, so a check leaves nothing behind."""
    folder = Path(folder).expanduser().absolute()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    created: list[Path] = []
    try:
        for part in reversed([folder, *folder.parents]):
            if not part.exists():
                part.mkdir()
                created.append(part)
        fd, name = tempfile.mkstemp(prefix=".spnas-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return f"cannot write under {probe}: {exc.strerror or exc}"
    finally:
        for part in reversed(created):
            try:
                part.rmdir()
            except OSError:
                pass
    return None


_WRITABLE: set[Path] = set()  # state folders that passed the write probe in this process


def state_dir() -> Path:
    path = Path(os.environ.get("SPNAS_HOME", REPO_ROOT / ".spnas")).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError("SPNAS_HOME", f"{path} cannot be created ({exc.strerror or exc}); point SPNAS_HOME "
                                       "at a folder you can write to") from None
    if path in _WRITABLE:  # the write probe once per folder: every stage and task asks
        return path
    reason = unwritable_reason(path)
    if reason:
        raise InputError("SPNAS_HOME", f"{path} is not writable ({reason}); point SPNAS_HOME at a folder you can "
                                       "write to")
    _WRITABLE.add(path)
    return path


def data_cache_dir() -> Path:
    """Embedded data sets are generated here once and reused."""
    path = state_dir() / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_output_root() -> Path:
    return state_dir() / "outputs"
