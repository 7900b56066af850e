"""Where the project keeps its state: one ignored folder, `.spnas/` in the repo by default.

`SPNAS_HOME` overrides it (tests point it at a temporary folder)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    path = Path(os.environ.get("SPNAS_HOME", REPO_ROOT / ".spnas")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_cache_dir() -> Path:
    """Embedded data sets are generated here once and reused."""
    path = state_dir() / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_output_root() -> Path:
    return state_dir() / "outputs"
