"""Stage `split` of lcnet/full: PaddleX-style ImageNet split into the stage's own folder.

The lists are written into the stage's folder (paths relative to the data folder), not into
the data folder itself, so two runs with different seeds never overwrite each other.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task

from data.split import format_split_summary, split_imagenet_folder
from params.models import LcnetData
from tasks.lcnet.data import Sources
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.handoff import StageResult
from tracking import tracker


@dataclass(frozen=True, kw_only=True)
class Split(StageResult):
    """The list files (paths relative to `dataset_dir`) and class names every later stage reads."""

    dataset_dir: str
    output_dir: str
    train_list: str
    val_list: str
    test_list: str | None  # None when the test share is empty
    labels_file: str
    labels: tuple[str, ...]   # class names by label id
    counts: Mapping[str, int]  # subset -> images
    summary: str              # class x subset table, for the log


def split_dataset(dataset_dir: str, data: LcnetData, seed: int, out_dir: Path) -> Split:
    result = split_imagenet_folder(Path(dataset_dir), data.val_value, data.test_value, seed, out_dir)
    lists = [p for p in (result.train_list, result.val_list, result.test_list, result.labels_file) if p]
    return Split(dataset_dir=str(result.dataset_dir), output_dir=str(result.output_dir),
                 train_list=str(result.train_list), val_list=str(result.val_list),
                 test_list=None if result.test_list is None else str(result.test_list),
                 labels_file=str(result.labels_file), labels=tuple(result.labels), counts=dict(result.counts),
                 summary=format_split_summary(result), files=tuple(str(p) for p in lists))


@task(name="split", persist_result=True, cache_policy=STAGE_CACHE)
def split_task(sources: Sources, data: LcnetData, seed: int, ctx: StageContext) -> Split:
    logger = get_run_logger()
    params = {"dataset": sources.source, "val_value": data.val_value, "test_value": data.test_value, "seed": seed}
    with tracker.child_run(ctx.parent_run_id, "split", params) as run_id:
        out = split_dataset(sources.dataset_dir, data, seed, ctx.work)
        tracker.log_metrics(run_id, {f"n_{k}": v for k, v in out.counts.items()} | {"num_classes": len(out.labels)})
        tracker.log_files(run_id, out.files, "split")
    logger.info("split %s into %s\n%s", out.dataset_dir, out.output_dir, out.summary)
    tracker.publish_table("split-counts", [{"subset": k, "images": v} for k, v in out.counts.items()],
                          "images per subset after the split")
    return out
