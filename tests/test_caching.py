"""Stage cache keys: what they cover (the stage's own inputs, file contents, project source)
and what they ignore (run-specific arguments, where a file lives)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from params.models import FineTuneParams, Runtime
from tasks.orchestration import caching, import_graph
from tasks.orchestration.context import StageContext


def stage(data: dict, fine_tune: FineTuneParams, ctx: StageContext) -> None:
    """A stand-in stage function (only its identity and module matter to the key)."""


def _key(**inputs):
    return caching.stage_key(stage, {"ctx": StageContext("s", "/w", "r", Runtime()), **inputs})


def test_run_specific_inputs_do_not_count() -> None:
    a = caching.stage_key(stage, {"data": {"x": 1}, "fine_tune": FineTuneParams(),
                                  "ctx": StageContext("fine_tune", "/a", "1", Runtime(device="cpu"))})
    b = caching.stage_key(stage, {"data": {"x": 1}, "fine_tune": FineTuneParams(),
                                  "ctx": StageContext("fine_tune", "/b", "2", Runtime(num_threads=1))})
    assert a == b
    assert _key(data={"x": 1}, fine_tune=FineTuneParams(epochs=4)) != _key(data={"x": 1}, fine_tune=FineTuneParams())



def test_stage_context_is_not_part_of_the_key(tmp_path: Path) -> None:
    """Pipeline keys a stage's work folder before it builds the context; the task's cache key,
    computed with the context among its inputs, must be the same key."""
    inputs = {"data": {"x": 1}, "fine_tune": FineTuneParams()}
    one = StageContext("fine_tune", str(tmp_path / "a"), "run-1", Runtime(device="cpu"))
    two = StageContext("fine_tune", str(tmp_path / "b"), "run-2", Runtime(device="cuda", num_threads=3))
    assert one.work == tmp_path / "a" and one.with_runtime(two.runtime).runtime == two.runtime
    keys = {caching.stage_key(stage, {**inputs, "ctx": ctx}) for ctx in (one, two, one.under("run-3"))}
    assert keys == {caching.stage_key(stage, inputs)}

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


PROJECT_ROOMS = ("core", "data", "deploy", "engine", "flows", "latency", "nas_models", "params", "strategies",
                 "tasks", "tracking")


@pytest.fixture
def repo_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A copy of the project's code that the cache keys read instead of the checkout (edited freely)."""
    repo = tmp_path / "repo"
    for room in PROJECT_ROOMS:
        shutil.copytree(caching.REPO_ROOT / room, repo / room, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(caching, "REPO_ROOT", repo)
    caching.clear_source_hashes()
    yield repo
    caching.clear_source_hashes()


def _touch(path: Path) -> None:
    with path.open("a") as fh:
        fh.write("\n# touched\n")
    caching.clear_source_hashes()


def test_editing_library_source_misses_the_cache(repo_copy: Path) -> None:
    """Editing the detector training loop this test module reaches through params/ and tasks/."""
    from tasks.spnas.fine_tune import fine_tune_task

    before = caching.stage_key(fine_tune_task.fn, {"data": {"x": 1}})
    _touch(repo_copy / "engine" / "detector_fit.py")
    assert caching.stage_key(fine_tune_task.fn, {"data": {"x": 1}}) != before


def test_a_helper_only_the_stage_imports_is_in_its_key(repo_copy: Path) -> None:
    """The candidate trainer is imported by the serial and parallel search stages only: editing it
    changes both search keys (the stale-cache bug of a hand-kept module list) and no other stage's."""
    from tasks.lcnet.train import train_classifier_task
    from tasks.prune_ea.prune_search import prune_search
    from tasks.spnas.fine_tune import fine_tune_task
    from tasks.spnas.parallel import parallel_search
    from tasks.spnas.serial import serial_search

    stages = {"serial": serial_search.fn, "parallel": parallel_search.fn, "fine_tune": fine_tune_task.fn,
              "lcnet.train": train_classifier_task.fn, "prune_search": prune_search.fn}
    before = {name: caching.stage_key(fn, {"x": 1}) for name, fn in stages.items()}
    _touch(repo_copy / "tasks" / "spnas" / "train_candidate.py")
    after = {name: caching.stage_key(fn, {"x": 1}) for name, fn in stages.items()}
    changed = {name for name in stages if after[name] != before[name]}
    assert changed == {"serial", "parallel"}


PROBE_STAGE = """
from prefect import task

from engine import runtime  # the only project code this stage reaches (with what runtime imports)
from tasks.orchestration.caching import STAGE_CACHE


@task(persist_result=True, cache_policy=STAGE_CACHE)
def probe(x: int) -> int:
    return 2 * x
"""


def test_unchanged_stage_stays_cached_across_an_edit_elsewhere(repo_copy: Path, prefect_api: None) -> None:
    """Through Prefect: an edit outside the stage's imports keeps its cache hit, one inside misses."""
    import importlib.util

    from prefect import flow

    path = repo_copy / "probe_stage.py"
    path.write_text(PROBE_STAGE)
    spec = importlib.util.spec_from_file_location("probe_stage_for_cache_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    @flow
    def once() -> str:
        return module.probe(21, return_state=True).name

    assert once() == "Completed"
    assert once() == "Cached"
    _touch(repo_copy / "tasks" / "spnas" / "train_candidate.py")
    assert once() == "Cached"
    _touch(repo_copy / "engine" / "runtime.py")
    assert once() == "Completed"


def test_closure_follows_relative_and_from_package_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\nfrom .sub.c import thing\n")
    (pkg / "b.py").write_text("def f():\n    import pkg.d  # inside a function still counts\n")
    (pkg / "sub" / "c.py").write_text("from ..e import *\nimport os\n")
    (pkg / "d.py").write_text("")
    (pkg / "e.py").write_text("")
    (pkg / "unrelated.py").write_text("")
    import_graph.clear()
    names = {p.relative_to(tmp_path).as_posix() for p in import_graph.project_closure(pkg / "a.py", tmp_path)}
    assert names == {"pkg/__init__.py", "pkg/a.py", "pkg/b.py", "pkg/d.py", "pkg/sub/__init__.py", "pkg/sub/c.py",
                     "pkg/e.py"}


def test_unhashable_inputs_are_refused() -> None:
    with pytest.raises(TypeError, match="cache key"):
        _key(data={"model": object()})


def _ast_imports(path: Path, root: Path) -> set[str]:
    """The same question answered with `ast` (fine in a test's main thread) to hold the token reader to."""
    import ast

    here = import_graph.module_name(path, root) or ""
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                base = ".".join(parts[: max(0, len(parts) - node.level + 1)] + ([base] if base else []))
            if base:
                names.add(base)
                names.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
    return names


def test_token_reader_agrees_with_ast_on_every_project_file() -> None:
    root = caching.REPO_ROOT
    files = [p for room in PROJECT_ROOMS + ("spnas", "tests", "benchmarks", "scripts") for p in (root / room).rglob("*.py")]
    assert len(files) > 150
    differing = [str(p.relative_to(root)) for p in files
                 if import_graph.imported_names(p, root) != _ast_imports(p, root)]
    assert differing == []
