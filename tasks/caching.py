"""Stage-scoped cache keys: what makes a flow resumable, and what makes a resume correct.

A stage's key covers exactly
- the inputs it is given (its own params sections, upstream results), minus the run-specific
  ones (its work folder, the MLflow run it logs under, where it runs: `RUN_SPECIFIC`);
- the *content* of every file or folder an input names (an absolute path is replaced by a
  fingerprint), so a result that points at a rewritten file, or a resumed run whose upstream
  files were re-linked elsewhere, is keyed by what the files hold, not where they are;
- the source of the project code it runs: the library packages (`LIBRARY_PACKAGES`), the
  shared task modules, and the stage's own module. Editing a line in engine/ misses the cache.

The same key names the stage's work folder under the state folder (see tasks/pipeline.py),
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

from spnas.paths import REPO_ROOT

RUN_SPECIFIC = frozenset({"work_dir", "run_dir", "parent_run_id", "runtime", "refresh"})
LIBRARY_PACKAGES = ("nas_models", "engine", "data", "strategies", "deploy", "latency")
# tasks/ modules every stage may run (not stages themselves).
SHARED_TASK_MODULES = ("common.py", "caching.py", "detectors.py", "classifiers.py", "cifar_training.py", "tables.py",
                       "search.py", "spos_shared.py", "sanas_shared.py")
KEY_LENGTH = 24

_file_digests: dict[tuple[str, int, int], str] = {}


def _hash_files(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def library_source_hash() -> str:
    """One hash of every library module and shared task module (computed once per process)."""
    files = sorted(p for pkg in LIBRARY_PACKAGES for p in (REPO_ROOT / pkg).rglob("*.py"))
    files += [REPO_ROOT / "tasks" / name for name in SHARED_TASK_MODULES if (REPO_ROOT / "tasks" / name).exists()]
    return _hash_files(files, REPO_ROOT)[:16]


@lru_cache(maxsize=None)
def _module_hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def source_hash(fn: Callable[..., Any]) -> str:
    """The library hash plus the whole module that defines `fn` (its helpers included)."""
    module_file = inspect.getsourcefile(inspect.unwrap(fn)) or ""
    return f"{library_source_hash()}-{_module_hash(module_file) if module_file else 'nosource'}"


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
