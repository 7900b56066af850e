"""What a stage hands to the stages after it: a small frozen dataclass per stage (paths, figures,
codes), so a flow reads like the pipeline's diagram and a renamed field fails where it is read,
not deep inside a later stage. Every one carries the files the stage wrote: a cached result is
trusted only while they all still exist (`missing_files`)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, kw_only=True)
class StageResult:
    """Base of every stage's result. `files`: every file the stage wrote that later stages or
    users read (absolute paths); `performance`: figures logged on the stage's MLflow run, also
    when a later run reuses this result from the cache."""

    files: tuple[str, ...] = ()
    performance: Mapping[str, Any] | None = None


def files_of(result: Any) -> list[str]:
    """The files a stage's result lists: a StageResult's, or a plain mapping's "files" (the
    search driver's candidate results)."""
    if isinstance(result, StageResult):
        return list(result.files)
    if isinstance(result, Mapping):
        return list(result.get("files", []))
    return []


def missing_files(result: Any) -> list[str]:
    """Files a result lists that no longer exist (a cache hit must not be trusted then)."""
    return [p for p in files_of(result) if not Path(p).exists()]


__all__ = ["StageResult", "files_of", "missing_files"]
