"""The project's shape, read from its own imports: rooms depend roof → floor with no cycles, a
pipeline's stages never import another pipeline's stages, and nothing cites a file outside the
repository."""
from __future__ import annotations

import subprocess
from pathlib import Path

from core.paths import REPO_ROOT
from params.registry import PIPELINES
from tasks.orchestration.import_graph import imported_names, module_name, module_path

# Roof first. A room may import rooms of its own layer or below, never above; within a layer the
# room graph must still be acyclic (checked separately).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("spnas",),                     # CLI, stack, watcher, compare
    ("flows",),                     # one DAG per pipeline
    ("tasks",),                     # stages + the orchestration core
    ("tracking", "engine", "latency", "strategies", "deploy", "nas_models", "data", "params"),
    ("core",),                      # errors, paths, seeds, procs
)
ROOMS = tuple(room for layer in LAYERS for room in layer)
LAYER_OF = {room: i for i, layer in enumerate(LAYERS) for room in layer}
PIPELINE_PACKAGES = tuple(spec.package for spec in PIPELINES.values())  # tasks/cifar, tasks/orchestration: shared


def _module_edges() -> dict[str, set[str]]:
    """module → project modules it imports (every import statement, module level or not)."""
    edges: dict[str, set[str]] = {}
    for room in ROOMS:
        for path in sorted((REPO_ROOT / room).rglob("*.py")):
            name = module_name(path, REPO_ROOT)
            assert name is not None
            targets = set()
            for imported in imported_names(path, REPO_ROOT):
                found = module_path(imported, REPO_ROOT)
                if found is not None:
                    targets.add(module_name(found, REPO_ROOT) or "")
            edges[name] = targets - {name, ""}
    return edges


def _room_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    rooms: dict[str, set[str]] = {room: set() for room in ROOMS}
    for source, targets in edges.items():
        rooms[source.split(".")[0]].update(t.split(".")[0] for t in targets)
    return {room: targets - {room} for room, targets in rooms.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_rooms_import_downwards_only() -> None:
    rooms = _room_edges(_module_edges())
    upward = sorted(f"{a} -> {b}" for a, targets in rooms.items() for b in targets if LAYER_OF[b] < LAYER_OF[a])
    assert upward == []


def test_no_import_cycles_between_rooms_or_modules() -> None:
    edges = _module_edges()
    assert _cycle(_room_edges(edges)) is None
    assert _cycle(edges) is None


def test_no_stage_module_imports_another_pipelines_stages() -> None:
    crossing = []
    for source, targets in _module_edges().items():
        parts = source.split(".")
        if len(parts) < 3 or parts[0] != "tasks" or parts[1] not in PIPELINE_PACKAGES:
            continue
        for target in targets:
            tparts = target.split(".")
            if len(tparts) >= 2 and tparts[0] == "tasks" and tparts[1] in PIPELINE_PACKAGES and tparts[1] != parts[1]:
                crossing.append(f"{source} -> {target}")
    assert crossing == []


def test_every_stage_is_a_module_named_after_it() -> None:
    """tasks/ holds packages only; each registered stage is tasks/<package>/<stage>.py, found in
    one hop from its name, beside the pipeline's preflight.py."""
    loose = [p.name for p in (REPO_ROOT / "tasks").glob("*.py") if p.name != "__init__.py"]
    assert loose == []
    missing = [f"{spec.package}/{stage}.py" for spec in PIPELINES.values() for stage in spec.stages
               if not (REPO_ROOT / "tasks" / spec.package / f"{stage}.py").is_file()]
    assert missing == []
    assert all((REPO_ROOT / "tasks" / spec.package / "preflight.py").is_file() for spec in PIPELINES.values())


def test_the_repository_cites_nothing_outside_it() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    offenders = []
    for rel in tracked.split():
        path = REPO_ROOT / rel
        if rel.startswith("tests/test_layout.py") or path.suffix not in {".py", ".md", ".sh", ".toml", ".yaml", ".yml"}:
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{rel}: {needle}" for needle in ("DESIGN.md", "../shared", "shared/seeds") if needle in text]
    assert offenders == []


def test_layers_name_every_room() -> None:
    rooms = {p.name for p in REPO_ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert rooms == set(ROOMS)
    assert Path(REPO_ROOT / "prefect.yaml").is_file()
