"""Build a generated data folder once, atomically, and reuse it afterwards.

A generator writes into a hidden temporary sibling; only a finished folder (holding a
`.complete` marker with the build parameters) is renamed into place. A crash therefore never
leaves a half-built folder where a later run would mistake it for a finished one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from core.errors import InputError
from core.procs import pid_alive

MARKER = ".complete"


@dataclass(frozen=True)
class CocoFolder:
    """Where a generated COCO-format detection set keeps its images and annotation files."""

    root: Path
    train_images: Path
    train_json: Path
    val_images: Path
    val_json: Path

    @classmethod
    def at(cls, root: Path) -> "CocoFolder":
        return cls(root=root, train_images=root / "train", train_json=root / "annotations" / "instances_train.json",
                   val_images=root / "val", val_json=root / "annotations" / "instances_val.json")

    def to_dict(self) -> dict[str, str]:
        return {key: str(value) for key, value in asdict(self).items()}


def build_once(final: Path, params: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Return `final`, building it with `build(tmp_dir)` unless a finished copy exists."""
    final = Path(final)
    if _finished(final, params):
        return final
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise InputError(str(final), "exists but is not a finished generated data set; "
                                     "choose a new or empty folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(final)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(final), dir=final.parent))
    try:
        build(tmp)
        (tmp / MARKER).write_text(_marker_text(params))
        _move_into_place(tmp, final)
        if not _finished(final, params):
            raise InputError(str(final), "was filled by another build with different parameters")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _finished(final: Path, params: dict[str, Any]) -> bool:
    marker = final / MARKER
    if not marker.is_file():
        return False
    if marker.read_text() != _marker_text(params):
        # Never silently replace a finished set: list files from a split may live inside it.
        raise InputError(str(final), f"already holds a data set built with {marker.read_text()}; "
                                     f"use another folder for {_marker_text(params)}")
    return True


def _move_into_place(tmp: Path, final: Path) -> None:
    if final.is_dir() and not any(final.iterdir()):
        final.rmdir()
    try:
        os.rename(tmp, final)
    except OSError:
        # Another process finished first (the target is non-empty now); theirs is as good.
        if not (final / MARKER).is_file():
            raise


def _marker_text(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def _tmp_prefix(final: Path) -> str:
    return f".{final.name}.building-{os.getpid()}-"


def _remove_stale_builds(final: Path) -> None:
    """Delete temporary folders left by builds whose process has died."""
    for path in final.parent.glob(f".{final.name}.building-*"):
        pid_text = path.name.rsplit(".building-", 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and not pid_alive(int(pid_text)):
            shutil.rmtree(path, ignore_errors=True)
