"""Stage `split`: PaddleX-style ImageNet split into the run's own folder.

The lists are written into the run's `split/` folder (paths relative to the data folder), not
into the data folder itself, so two runs with different seeds never overwrite each other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from data.digits import default_digits_folder
from data.split import format_split_summary, split_imagenet_folder
from tasks.common import STAGE_CACHE, fingerprint_files, stage_dir
from tracking import tracker


def resolve_dataset_dir(dataset_dir: str | None) -> Path:
    """The user's folder, or the embedded digits (built once into the state folder)."""
    return Path(dataset_dir).expanduser().resolve() if dataset_dir else default_digits_folder()


def split_dataset(dataset_dir: str | None, val_value: float, test_value: float, seed: int,
                  out_dir: Path) -> dict[str, Any]:
    result = split_imagenet_folder(resolve_dataset_dir(dataset_dir), val_value, test_value, seed, out_dir)
    lists = [p for p in (result.train_list, result.val_list, result.test_list, result.labels_file) if p]
    out = result.to_dict()
    out["files"] = [str(p) for p in lists]
    out["fingerprint"] = fingerprint_files(lists)
    out["summary"] = format_split_summary(result)
    return out


@task(name="split", persist_result=True, cache_policy=STAGE_CACHE)
def split_task(dataset_dir: str | None, val_value: float, test_value: float, seed: int,
               data_fingerprint: str, run_dir: str, parent_run_id: str) -> dict[str, Any]:
    """`data_fingerprint` is only there so a changed data folder misses the cache."""
    logger = get_run_logger()
    params = {"dataset_dir": dataset_dir or "embedded digits", "val_value": val_value,
              "test_value": test_value, "seed": seed}
    with tracker.child_run(parent_run_id, "split", params) as run_id:
        out = split_dataset(dataset_dir, val_value, test_value, seed, stage_dir(run_dir, "split"))
        tracker.log_metrics(run_id, {f"n_{k}": v for k, v in out["counts"].items()} | {"num_classes": len(out["labels"])})
        tracker.log_files(run_id, out["files"], "split")
    logger.info("split %s into %s\n%s", out["dataset_dir"], out["output_dir"], out["summary"])
    tracker.publish_table("split-counts", [{"subset": k, "images": v} for k, v in out["counts"].items()],
                          "images per subset after the split")
    return out
