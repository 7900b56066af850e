"""Stage `split` of spnas/full: check the detection data, carve a search-val part out of the
training images, and split the classification folder that reignite trains on.

Outputs: search_train.json, search_val.json (subsets of the training instances file) and
classification/{train,val,test}_list.txt + labels.txt.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task

from core.errors import InputError
from data.coco import load_coco
from data.coco_split import split_image_ids, write_subset
from data.split import format_split_summary, split_imagenet_folder
from params.models import SpnasData
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.handoff import StageResult
from tasks.spnas.data import Sources
from tracking import tracker


@dataclass(frozen=True, kw_only=True)
class ClassificationSplit:
    """The classification folder reignite trains on, as list files (data/split.py's layout)."""

    dataset_dir: str
    train_list: str
    val_list: str
    labels_file: str
    labels: tuple[str, ...]
    counts: Mapping[str, int]   # subset -> images
    source: str                 # where the folder came from, in words
    summary: str                # the split's table, for the log


@dataclass(frozen=True, kw_only=True)
class Split(StageResult):
    """The detection data every later stage reads: the COCO files, the search-train / search-val
    subsets carved out of the training images, and reignite's classification split."""

    train_images: str
    train_json: str
    val_images: str
    val_json: str
    search_train_json: str
    search_val_json: str
    labels: tuple[str, ...]
    num_classes: int
    counts: Mapping[str, int]   # "train", "search_val", "val" -> images
    classification: ClassificationSplit


def split_detection(sources: Sources, data: SpnasData, seed: int, out_dir: Path) -> Split:
    train = load_coco(Path(sources.train_images), Path(sources.train_json))
    val = load_coco(Path(sources.val_images), Path(sources.val_json))
    if train.cat_ids != val.cat_ids:
        raise InputError("data.val_json", f"categories {val.cat_ids} differ from train_json's {train.cat_ids}")
    train_ids, search_val_ids = split_image_ids(train, data.search_val_fraction, seed)
    search_train = write_subset(train, train_ids, out_dir / "search_train.json")
    search_val = write_subset(train, search_val_ids, out_dir / "search_val.json")
    (out_dir / "classification").mkdir(exist_ok=True)
    result = split_imagenet_folder(Path(sources.classification_dir), data.val_value, data.test_value, seed,
                                   out_dir / "classification")
    cls = ClassificationSplit(dataset_dir=str(result.dataset_dir), train_list=str(result.train_list),
                              val_list=str(result.val_list), labels_file=str(result.labels_file),
                              labels=tuple(result.labels), counts=dict(result.counts),
                              summary=format_split_summary(result), source=sources.classification_source)
    cls_files = [str(p) for p in (result.train_list, result.val_list, result.test_list, result.labels_file) if p]
    return Split(
        train_images=sources.train_images, train_json=sources.train_json, val_images=sources.val_images,
        val_json=sources.val_json, search_train_json=str(search_train), search_val_json=str(search_val),
        labels=tuple(train.label_names), num_classes=train.num_classes,
        counts={"train": len(train_ids), "search_val": len(search_val_ids), "val": len(val.images)},
        classification=cls, files=(str(search_train), str(search_val), *cls_files),
    )


@task(name="split", persist_result=True, cache_policy=STAGE_CACHE)
def split_detection_task(sources: Sources, data: SpnasData, seed: int, ctx: StageContext) -> Split:
    with tracker.child_run(ctx.parent_run_id, "split", {"search_val_fraction": data.search_val_fraction,
                                                    "classification": sources.classification_source}) as run_id:
        out = split_detection(sources, data, seed, ctx.work)
        tracker.log_metrics(run_id, {f"n_{k}": v for k, v in out.counts.items()}
                            | {f"n_cls_{k}": v for k, v in out.classification.counts.items()})
        tracker.log_files(run_id, out.files, "split")
    get_run_logger().info("detection images: %s; reignite classification split (%s):\n%s", out.counts,
                          out.classification.source, out.classification.summary)
    return out
