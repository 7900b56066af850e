"""What every stage task shares: the cache policy that makes flows resumable, stage folders,
small file writers for Vega's handoff layout (desc_/model_/performance_ + output.csv)."""
from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE

# Resume: a stage re-run with the same inputs and the same task code comes back Cached.
# The MLflow parent run id and the run's output folder differ between flow runs, so they are
# not part of the key (a resumed run reuses the earlier run's files, which the flow checks).
STAGE_CACHE = (INPUTS - "parent_run_id" - "run_dir") + TASK_SOURCE


def stage_dir(run_dir: str | Path, name: str) -> Path:
    path = Path(run_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, data: Any) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str))
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_csv(path: Path, rows: list[Mapping[str, Any]]) -> Path:
    """`output.csv` of a step: one row per candidate, the union of keys as columns."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})
    os.replace(tmp, path)
    return path


def missing_files(result: Any) -> list[str]:
    """Paths listed under result["files"] that no longer exist (a cache hit must not be trusted then)."""
    if not isinstance(result, Mapping):
        return []
    return [p for p in result.get("files", []) if not Path(p).exists()]


def fingerprint_files(paths: Iterable[str | Path]) -> str:
    """Content hash of small files (lists, json) so downstream cache keys follow their content."""
    digest = hashlib.sha256()
    for path in sorted(str(p) for p in paths):
        digest.update(path.encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def fingerprint_tree(root: str | Path) -> str:
    """Cheap identity of a data folder (names, sizes, mtimes): a changed data set misses the cache."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            stat = os.stat(os.path.join(dirpath, name))
            digest.update(f"{os.path.relpath(os.path.join(dirpath, name), root)}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:16]
