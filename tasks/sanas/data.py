"""Stage `data` of sanas/full: the user's WIDER FACE files (converted to COCO), or the embedded
face set (real LFW faces on real backgrounds) built once into the data cache."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from core.paths import data_cache_dir
from params.models import FaceData
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.sources import record_sources


@dataclass(frozen=True, kw_only=True)
class Faces(StageResult):
    """The COCO-format face set every training reads; `files`: sources.json."""

    train_images: str
    train_json: str
    val_images: str
    val_json: str
    source: str  # in words, for the log and MLflow

    def record(self) -> dict[str, Any]:
        """The choice as sources.json holds it."""
        return {"train_images": self.train_images, "train_json": self.train_json, "val_images": self.val_images,
                "val_json": self.val_json, "source": self.source}


def face_sources(data: FaceData, image_size: int, seed: int, out_dir: Path) -> Faces:
    """COCO files of the face set: the user's WIDER FACE files converted into this stage's work
    folder, or the embedded set (LFW faces placed on real backgrounds) built once in the cache."""
    from data.faces import make_faces_coco, wider_face_to_coco

    if data.train_annotations is not None:
        train = wider_face_to_coco(data.train_annotations, data.train_images, out_dir / "train_faces.json")
        val = wider_face_to_coco(data.val_annotations, data.val_images, out_dir / "val_faces.json")
        coco = {"train_images": data.train_images, "train_json": str(train.ann_file),
                "val_images": data.val_images, "val_json": str(val.ann_file)}
        source = f"your WIDER FACE files {data.train_annotations} / {data.val_annotations}"
    else:
        root = data_cache_dir() / f"faces_coco_{image_size}px_{data.num_train_images}_{data.num_val_images}_s{seed}"
        faces = make_faces_coco(root, data.num_train_images, data.num_val_images, image_size, seed)
        coco = {k: str(v) for k, v in faces.to_dict().items() if k != "root"}
        source = (f"embedded faces: real LFW face crops on real background images ({data.num_train_images} train / "
                  f"{data.num_val_images} held-out images, {image_size} px)")
    return Faces(**coco, source=source)


@task(name="data", persist_result=True, cache_policy=STAGE_CACHE)
def face_data_task(data: FaceData, image_size: int, seed: int, ctx: StageContext) -> Faces:
    faces = face_sources(data, image_size, seed, ctx.work)
    out = replace(faces, files=tuple(record_sources(faces.record(), ctx)["files"]))
    get_run_logger().info("data: %s", out.source)
    return out
