"""Stage `data` of spnas/full: the user's COCO files (+ the classification folder reignite
trains on), or the embedded digit canvases built once into the state folder's data cache."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from core.paths import data_cache_dir
from data.coco_digits import make_digits_coco
from data.digits import default_digits_folder
from params.models import SpnasData
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.sources import record_sources


@dataclass(frozen=True, kw_only=True)
class Sources(StageResult):
    """Where the detection data and reignite's classification folder are; `files`: sources.json."""

    train_images: str
    train_json: str
    val_images: str
    val_json: str
    classification_dir: str
    detection_source: str       # in words, for the log and MLflow
    classification_source: str

    def record(self) -> dict[str, Any]:
        """The choice as sources.json holds it (the data fields, in their order)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("files", "performance")}


def detection_sources(data: SpnasData, image_size: int, seed: int) -> Sources:
    """COCO files and the classification folder reignite trains on: the user's own
    classification_dir, else crops of the user's own training boxes, else the embedded digits."""
    if data.train_json:
        coco = {"train_images": data.train_images, "train_json": data.train_json,
                "val_images": data.val_images, "val_json": data.val_json}
        detection = f"your COCO files {data.train_json} / {data.val_json}"
        if data.classification_dir:
            cls_dir, cls_source = data.classification_dir, f"your classification_dir {data.classification_dir}"
        else:
            from data.coco_crops import make_crops_imagefolder

            crops = make_crops_imagefolder(Path(data.train_images), Path(data.train_json),
                                           data_cache_dir() / "coco_crops", min_size=data.crop_min_size, seed=seed,
                                           images_field="data.train_images", json_field="data.train_json")
            cls_dir, cls_source = str(crops.root), f"crops of your training boxes: {crops.describe()}"
    else:
        root = data_cache_dir() / f"digits_coco_{image_size}px_{data.num_train_images}_{data.num_val_images}_s{seed}"
        d = make_digits_coco(root, num_train=data.num_train_images, num_val=data.num_val_images,
                             canvas_size=image_size, seed=seed)
        coco = {"train_images": str(d.train_images), "train_json": str(d.train_json),
                "val_images": str(d.val_images), "val_json": str(d.val_json)}
        detection = f"embedded digit canvases ({data.num_train_images} train / {data.num_val_images} held-out, {image_size} px)"
        if data.classification_dir:
            cls_dir, cls_source = data.classification_dir, f"your classification_dir {data.classification_dir}"
        else:
            cls_dir, cls_source = str(default_digits_folder()), "embedded digits (scikit-learn, 32 px)"
    return Sources(**coco, classification_dir=cls_dir, detection_source=detection,
                   classification_source=cls_source)


@task(name="data", persist_result=True, cache_policy=STAGE_CACHE)
def detection_data_task(data: SpnasData, image_size: int, seed: int, ctx: StageContext) -> Sources:
    sources = detection_sources(data, image_size, seed)
    recorded = record_sources(sources.record(), ctx)  # sources.json + the MLflow run
    out = replace(sources, files=tuple(recorded["files"]))
    get_run_logger().info("data: detection = %s; reignite classification = %s", out.detection_source,
                          out.classification_source)
    return out
