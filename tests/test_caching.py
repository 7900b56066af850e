"""Stage cache keys: what they cover (the stage's own inputs, file contents, project source)
and what they ignore (run-specific arguments, where a file lives)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from params.models import FineTuneParams, Runtime
from tasks import caching


def stage(data: dict, fine_tune: FineTuneParams, work_dir: str, parent_run_id: str, runtime: Runtime) -> None:
    """A stand-in stage function (only its identity and module matter to the key)."""


def _key(**inputs):
    return caching.stage_key(stage, {"work_dir": "/w", "parent_run_id": "r", "runtime": Runtime(), **inputs})


def test_run_specific_inputs_do_not_count() -> None:
    a = caching.stage_key(stage, {"data": {"x": 1}, "fine_tune": FineTuneParams(), "work_dir": "/a",
                                  "parent_run_id": "1", "runtime": Runtime(device="cpu")})
    b = caching.stage_key(stage, {"data": {"x": 1}, "fine_tune": FineTuneParams(), "work_dir": "/b",
                                  "parent_run_id": "2", "runtime": Runtime(num_threads=1)})
    assert a == b
    assert _key(data={"x": 1}, fine_tune=FineTuneParams(epochs=4)) != _key(data={"x": 1}, fine_tune=FineTuneParams())


def test_files_count_by_content_not_by_place(tmp_path: Path) -> None:
    one, two = tmp_path / "one.pth", tmp_path / "two.pth"
    one.write_bytes(b"weights-A")
    shutil.copy(one, two)
    assert _key(data={"model": str(one)}) == _key(data={"model": str(two)})
    two.write_bytes(b"weights-B")
    assert _key(data={"model": str(one)}) != _key(data={"model": str(two)})
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"1")
    before = _key(data={"images": str(folder)})
    (folder / "b.png").write_bytes(b"2")
    assert _key(data={"images": str(folder)}) != before


def test_editing_library_source_misses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    for pkg in caching.LIBRARY_PACKAGES + ("tasks",):
        shutil.copytree(caching.REPO_ROOT / pkg, repo / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(caching, "REPO_ROOT", repo)
    caching.library_source_hash.cache_clear()
    before = _key(data={"x": 1})
    with (repo / "engine" / "detector_fit.py").open("a") as fh:
        fh.write("\n# touched\n")
    caching.library_source_hash.cache_clear()
    try:
        assert _key(data={"x": 1}) != before
    finally:
        caching.library_source_hash.cache_clear()


def test_unhashable_inputs_are_refused() -> None:
    with pytest.raises(TypeError, match="cache key"):
        _key(data={"model": object()})
