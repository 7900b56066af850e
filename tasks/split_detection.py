"""Stage `split` of spnas/full: check the detection data, carve a search-val part out of the
training images, and split the classification folder that reignite trains on.

Outputs in `<run>/split/`: search_train.json, search_val.json (subsets of the training
instances file) and classification/{train,val,test}_list.txt + labels.txt.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from data.coco import load_coco
from data.coco_digits import make_digits_coco
from data.coco_split import split_image_ids, write_subset
from spnas.errors import InputError
from spnas.paths import data_cache_dir
from tasks.common import STAGE_CACHE, stage_dir
from tasks.split import split_dataset
from tracking import tracker


def resolve_coco(p: dict[str, Any]) -> dict[str, str]:
    """The user's COCO files, or the embedded digit canvases (built once per size/count/seed)."""
    if p.get("train_json"):
        return {k: str(Path(p[k]).expanduser().resolve()) for k in ("train_images", "train_json", "val_images", "val_json")}
    root = data_cache_dir() / f"digits_coco_{p['image_size']}px_{p['num_train_images']}_{p['num_val_images']}_s{p['seed']}"
    d = make_digits_coco(root, num_train=p["num_train_images"], num_val=p["num_val_images"],
                         canvas_size=p["image_size"], seed=p["seed"])
    return {"train_images": str(d.train_images), "train_json": str(d.train_json),
            "val_images": str(d.val_images), "val_json": str(d.val_json)}


def split_detection(p: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    coco = resolve_coco(p)
    train = load_coco(Path(coco["train_images"]), Path(coco["train_json"]))
    val = load_coco(Path(coco["val_images"]), Path(coco["val_json"]))
    if train.cat_ids != val.cat_ids:
        raise InputError("val_json", f"categories {val.cat_ids} differ from train_json's {train.cat_ids}")
    train_ids, search_val_ids = split_image_ids(train, p["search_val_fraction"], p["seed"])
    search_train = write_subset(train, train_ids, out_dir / "search_train.json")
    search_val = write_subset(train, search_val_ids, out_dir / "search_val.json")
    (out_dir / "classification").mkdir(exist_ok=True)
    cls = split_dataset(p.get("classification_dir"), p["val_value"], p["test_value"], p["seed"],
                        out_dir / "classification")
    return {
        **coco, "search_train_json": str(search_train), "search_val_json": str(search_val),
        "labels": train.label_names, "num_classes": train.num_classes,
        "counts": {"train": len(train_ids), "search_val": len(search_val_ids), "val": len(val.images)},
        "classification": cls,
        "files": [str(search_train), str(search_val), *cls["files"]],
    }


@task(name="split", persist_result=True, cache_policy=STAGE_CACHE)
def split_detection_task(p: dict[str, Any], data_fingerprint: str, run_dir: str, parent_run_id: str) -> dict[str, Any]:
    """`data_fingerprint` is only there so changed data misses the cache."""
    with tracker.child_run(parent_run_id, "split") as run_id:
        out = split_detection(p, stage_dir(run_dir, "split"))
        tracker.log_metrics(run_id, {f"n_{k}": v for k, v in out["counts"].items()}
                            | {f"n_cls_{k}": v for k, v in out["classification"]["counts"].items()})
        tracker.log_files(run_id, out["files"], "split")
    get_run_logger().info("detection images: %s; classification split for reignite:\n%s", out["counts"],
                          out["classification"]["summary"])
    return out
