"""Which project files a module runs: its own imports, read from its source, followed transitively.

A stage's cache key hashes exactly these files (tasks/orchestration/caching.py), so editing any
module a stage reaches — its helpers, the candidate trainer its search maps, the engine loop under
that — misses the cache, and editing a module it never reaches does not. Imports are read from
the source's tokens (module level and inside functions alike), so the graph follows the code as written rather
than a list someone has to keep. Only files under the project root count; third-party packages
are pinned by pyproject.toml instead.
"""
from __future__ import annotations

import itertools
import tokenize
from collections.abc import Iterator
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


def _statements(path: Path) -> Iterator[list[str]]:
    """The token strings of every logical line of `path` that starts with `import` or `from`."""
    with path.open("rb") as fh:
        line: list[str] = []
        for tok in tokenize.tokenize(fh.readline):
            if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER) or tok.string == ";":
                if line and line[0] in ("import", "from"):
                    yield line
                line = []
            elif tok.type in (tokenize.NAME, tokenize.OP):
                if tok.string not in ("(", ")"):  # from x import (a, b)
                    line.append(tok.string)
            elif tok.type not in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT,
                                  tokenize.ENCODING):
                line.append("<other>")  # a string or number: not an import statement's token


def _dotted(tokens: list[str]) -> list[str]:
    """"a . b , c . d as e" → ["a.b", "c.d"] (names only, aliases dropped)."""
    names, current, skip = [], "", False
    for tok in tokens + [","]:
        if tok == ",":
            if current:
                names.append(current)
            current, skip = "", False
        elif tok == "as":
            skip = True
        elif not skip:
            current += tok
    return names


def imported_names(path: Path, root: Path) -> set[str]:
    """Every module name `path` may import (absolute and relative, `from pkg import submodule`
    included, inside functions too); names that are not project modules are filtered out by the
    caller. Read with `tokenize`, not `ast`: CPython 3.11's ast.parse can fail with "AST
    constructor recursion depth mismatch" when called from a Prefect flow's worker thread."""
    here = module_name(path, root) or ""
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    names: set[str] = set()
    for tokens in _statements(path):
        if tokens[0] == "import":
            names.update(_dotted(tokens[1:]))
            continue
        if "import" not in tokens:
            continue
        split = tokens.index("import")
        source, targets = tokens[1:split], _dotted(tokens[split + 1:])
        dots = list(itertools.takewhile(lambda s: s in (".", "..."), source))  # tokenize gives "..." as one token
        module = "".join(source[len(dots):])
        if dots:  # relative: climb from this module's package
            parts = package.split(".") if package else []
            anchor = parts[: max(0, len(parts) - len("".join(dots)) + 1)]
            module = ".".join(anchor + ([module] if module else []))
        if module:
            names.add(module)
            names.update(f"{module}.{name}" for name in targets if name != "*")
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
