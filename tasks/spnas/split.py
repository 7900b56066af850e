"""Stage `split` of spnas/full: check the detection data, carve a search-val part out of the
training images, and split the classification folder that reignite trains on.

Outputs: search_train.json, search_val.json (subsets of the training instances file) and
classification/{train,val,test}_list.txt + labels.txt.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from data.coco import load_coco
from data.coco_split import split_image_ids, write_subset
from data.split import format_split_summary, split_imagenet_folder
from params.models import Runtime, SpnasData
from core.errors import InputError
from tasks.orchestration.caching import STAGE_CACHE
from tracking import tracker


def split_detection(sources: dict[str, Any], data: SpnasData, seed: int, out_dir: Path) -> dict[str, Any]:
    train = load_coco(Path(sources["train_images"]), Path(sources["train_json"]))
    val = load_coco(Path(sources["val_images"]), Path(sources["val_json"]))
    if train.cat_ids != val.cat_ids:
        raise InputError("data.val_json", f"categories {val.cat_ids} differ from train_json's {train.cat_ids}")
    train_ids, search_val_ids = split_image_ids(train, data.search_val_fraction, seed)
    search_train = write_subset(train, train_ids, out_dir / "search_train.json")
    search_val = write_subset(train, search_val_ids, out_dir / "search_val.json")
    (out_dir / "classification").mkdir(exist_ok=True)
    result = split_imagenet_folder(Path(sources["classification_dir"]), data.val_value, data.test_value, seed,
                                   out_dir / "classification")
    cls = {**result.to_dict(), "summary": format_split_summary(result), "source": sources["classification_source"]}
    cls["files"] = [str(p) for p in (result.train_list, result.val_list, result.test_list, result.labels_file) if p]
    return {
        **{k: sources[k] for k in ("train_images", "train_json", "val_images", "val_json")},
        "search_train_json": str(search_train), "search_val_json": str(search_val),
        "labels": train.label_names, "num_classes": train.num_classes,
        "counts": {"train": len(train_ids), "search_val": len(search_val_ids), "val": len(val.images)},
        "classification": cls,
        "files": [str(search_train), str(search_val), *cls["files"]],
    }


@task(name="split", persist_result=True, cache_policy=STAGE_CACHE)
def split_detection_task(sources: dict[str, Any], data: SpnasData, seed: int, work_dir: str, parent_run_id: str,
                         runtime: Runtime) -> dict[str, Any]:
    with tracker.child_run(parent_run_id, "split", {"search_val_fraction": data.search_val_fraction,
                                                    "classification": sources["classification_source"]}) as run_id:
        out = split_detection(sources, data, seed, Path(work_dir))
        tracker.log_metrics(run_id, {f"n_{k}": v for k, v in out["counts"].items()}
                            | {f"n_cls_{k}": v for k, v in out["classification"]["counts"].items()})
        tracker.log_files(run_id, out["files"], "split")
    get_run_logger().info("detection images: %s; reignite classification split (%s):\n%s", out["counts"],
                          out["classification"]["source"], out["classification"]["summary"])
    return out
