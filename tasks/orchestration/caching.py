"""Stage-scoped cache keys: what makes a flow resumable, and what makes a resume correct.

A stage's key covers exactly
- the inputs it is given (its own params sections, upstream results), minus the run-specific
  ones (`RUN_SPECIFIC`: its stage context `ctx`, i.e. its work folder, the MLflow run it logs
  under and where it runs; a search's `refresh`);
- the *content* of every file or folder an input names (an absolute path is replaced by a
  fingerprint), so a result that points at a rewritten file, or a resumed run whose upstream
  files were re-linked elsewhere, is keyed by what the files hold, not where they are;
- the source of the project code it runs: the stage's own module and every project module it
  imports, transitively (tasks/orchestration/import_graph.py reads the imports from the source).
  Editing a line the stage can reach misses the cache; editing one it cannot keeps the hit.

The same key names the stage's work folder under the state folder (see tasks/orchestration/pipeline.py),
so a re-run with the same key finds its checkpoints and saved search state there.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from pydantic import BaseModel

from core.paths import REPO_ROOT
from tasks.orchestration import import_graph

# The stage context (work folder, MLflow parent run, runtime) and a search's forced recompute.
RUN_SPECIFIC = frozenset({"ctx", "refresh"})
KEY_LENGTH = 24

_file_digests: dict[tuple[str, int, int], str] = {}


@lru_cache(maxsize=None)
def _files_hash(paths: tuple[Path, ...], root: Path) -> str:
    """Names relative to the project root, so a fresh clone elsewhere computes the same keys."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path.relative_to(root) if root in path.parents else path).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _start_file(fn: Callable[..., Any]) -> Path | None:
    """The project file defining `fn`: by module name under REPO_ROOT (so a test can point
    REPO_ROOT at a copy), else the file Python loaded it from."""
    fn = inspect.unwrap(fn)
    by_name = import_graph.module_path(fn.__module__, REPO_ROOT)
    if by_name is not None:
        return by_name
    source = inspect.getsourcefile(fn)
    return Path(source) if source else None


def source_files(fn: Callable[..., Any]) -> tuple[Path, ...]:
    """The module defining `fn` and every project module it imports, transitively."""
    start = _start_file(fn)
    return import_graph.project_closure(start, REPO_ROOT) if start is not None else ()


def source_hash(fn: Callable[..., Any]) -> str:
    """One hash of the code `fn` can run (see `source_files`); computed once per process."""
    files = source_files(fn)
    return _files_hash(files, REPO_ROOT) if files else "nosource"


def clear_source_hashes() -> None:
    """Forget hashed sources (tests edit project files in place)."""
    import_graph.clear()
    _files_hash.cache_clear()


def file_digest(path: Path) -> str:
    """sha256 of a file's content, remembered per (path, size, mtime) within the process."""
    stat = path.stat()
    memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _file_digests:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _file_digests[memo_key] = digest.hexdigest()[:16]
    return _file_digests[memo_key]


def tree_digest(root: Path) -> str:
    """A folder's identity from names, sizes and mtimes (data folders can hold many images)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            stat = os.stat(os.path.join(dirpath, name))
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            digest.update(f"{rel}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def fingerprint(value: Any) -> Any:
    """`value` as canonical JSON-able data, every absolute path that exists replaced by the
    fingerprint of what it holds."""
    if isinstance(value, BaseModel):
        return fingerprint(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return fingerprint(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): fingerprint(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [fingerprint(v) for v in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and os.path.isabs(value):
        path = Path(value)
        if path.is_file():
            return {"file": file_digest(path)}
        if path.is_dir():
            return {"dir": tree_digest(path)}
        return value
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot build a cache key from a {type(value).__name__}; pass plain data, paths or params models")


def stage_key(fn: Callable[..., Any], inputs: Mapping[str, Any]) -> str:
    """The cache key of running `fn` (a task's or subflow's function) on `inputs`."""
    payload = {
        "fn": f"{fn.__module__}.{fn.__qualname__}",
        "source": source_hash(fn),
        "inputs": fingerprint({k: v for k, v in inputs.items() if k not in RUN_SPECIFIC}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:KEY_LENGTH]


@dataclass
class StageCache(CachePolicy):
    """Prefect cache policy with `stage_key` as the key (persisted results + this = resume)."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        return stage_key(task_ctx.task.fn, inputs)


STAGE_CACHE = StageCache()
