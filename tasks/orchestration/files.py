"""What every stage task shares: small atomic file writers for Vega's handoff layout
(desc_<id>.json / model_<id>.pth / performance_<id>.json) and linking
a stage's work folder into a run folder."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

# Files of a work folder that stay there: training checkpoints (resume state, not results),
# locks and half-written temporaries.
PRIVATE_PREFIXES = ("checkpoint", ".")
PRIVATE_SUFFIXES = (".tmp",)


def write_json(path: Path, data: Any) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str))
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_state_dict(model: torch.nn.Module, path: Path) -> Path:
    """Atomic: a new inode each time, so a run folder's hard link keeps the earlier file."""
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)
    return path


def save_handoff(out_dir: Path, tag: str, desc: dict[str, Any], model: torch.nn.Module,
                 performance: dict[str, Any]) -> list[str]:
    """desc_<tag>.json, model_<tag>.pth, performance_<tag>.json — [desc, model, performance]."""
    model_path = save_state_dict(model, out_dir / f"model_{tag}.pth")
    return [str(write_json(out_dir / f"desc_{tag}.json", desc)), str(model_path),
            str(write_json(out_dir / f"performance_{tag}.json", performance))]


def _private(name: str) -> bool:
    return name.startswith(PRIVATE_PREFIXES) or name.endswith(PRIVATE_SUFFIXES)


def link_tree(src: Path, dst: Path) -> int:
    """Hard-link (or copy, across file systems) every result file of `src` into `dst`, so a run
    folder holds the full layout even when its stages were reused from earlier runs. Returns
    how many files were linked."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if not _private(d)]
        target_dir = dst / Path(dirpath).relative_to(src)
        target_dir.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            if _private(name):
                continue
            source, target = Path(dirpath) / name, target_dir / name
            if target.exists():
                if os.path.samefile(source, target):
                    continue
                target.unlink()
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
            count += 1
    return count
