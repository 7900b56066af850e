"""Which project files a module runs: its own imports, read from its source, followed transitively.

A stage's cache key hashes exactly these files (tasks/orchestration/caching.py), so editing any
module a stage reaches — its helpers, the candidate trainer its search maps, the engine loop under
that — misses the cache, and editing a module it never reaches does not. Imports are read with
`ast` (module level and inside functions alike), so the graph follows the code as written rather
than a list someone has to keep. Only files under the project root count; third-party packages
are pinned by pyproject.toml instead.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path


def module_path(name: str, root: Path) -> Path | None:
    """The file that `import name` loads from `root` (a module or a package's __init__), if any."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path, root: Path) -> str | None:
    """`root/a/b/c.py` → "a.b.c"; `root/a/__init__.py` → "a"; None outside `root`."""
    try:
        parts = list(path.resolve().relative_to(root.resolve()).with_suffix("").parts)
    except ValueError:
        return None
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or None


def _with_parents(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imported_names(path: Path, root: Path) -> set[str]:
    """Every module name `path` may import (absolute and relative, `from pkg import submodule`
    included); names that are not project modules are filtered out by the caller."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    here = module_name(path, root) or ""
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: max(0, len(package.split(".")) - node.level + 1)] if package else []
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base:
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


@lru_cache(maxsize=None)
def project_closure(start: Path, root: Path) -> tuple[Path, ...]:
    """`start` and every project file it imports, transitively, in a stable order."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(path, root):
            for part in _with_parents(name):
                found = module_path(part, root)
                if found is not None and found not in seen:
                    todo.append(found)
    return tuple(sorted(seen, key=lambda p: str(p)))


def clear() -> None:
    """Forget computed closures (tests edit files in place)."""
    project_closure.cache_clear()
