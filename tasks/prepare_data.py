"""Stage `data` of every pipeline: say which data a run uses and build the embedded sets (once,
into the state folder's data cache) when the user gave none. The run folder's
`data/sources.json` records the choice, and the log line says it in words."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from data.coco_digits import make_digits_coco
from data.digits import default_digits_folder
from params.models import CifarData, FaceData, LcnetData, Runtime, SpnasData
from spnas.paths import data_cache_dir
from tasks.caching import STAGE_CACHE
from tasks.common import write_json
from tracking import tracker


def classification_sources(data: LcnetData) -> dict[str, Any]:
    if data.dataset_dir:
        return {"dataset_dir": data.dataset_dir, "source": f"your dataset_dir {data.dataset_dir}"}
    return {"dataset_dir": str(default_digits_folder()),
            "source": "embedded digits (1,797 real 8x8 scikit-learn digits, 32 px)"}


def detection_sources(data: SpnasData, image_size: int, seed: int) -> dict[str, Any]:
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
    return {**coco, "classification_dir": cls_dir, "detection_source": detection, "classification_source": cls_source}


def _record(out: dict[str, Any], work_dir: str, parent_run_id: str) -> dict[str, Any]:
    path = write_json(Path(work_dir) / "sources.json", out)
    with tracker.child_run(parent_run_id, "data", {k: v for k, v in out.items() if k.endswith("source")}) as run_id:
        tracker.log_files(run_id, [path], "data")
    return {**out, "files": [str(path)]}


@task(name="data", persist_result=True, cache_policy=STAGE_CACHE)
def classification_data_task(data: LcnetData, work_dir: str, parent_run_id: str, runtime: Runtime) -> dict[str, Any]:
    out = _record(classification_sources(data), work_dir, parent_run_id)
    get_run_logger().info("data: %s", out["source"])
    return out


@task(name="data", persist_result=True, cache_policy=STAGE_CACHE)
def detection_data_task(data: SpnasData, image_size: int, seed: int, work_dir: str, parent_run_id: str,
                        runtime: Runtime) -> dict[str, Any]:
    out = _record(detection_sources(data, image_size, seed), work_dir, parent_run_id)
    get_run_logger().info("data: detection = %s; reignite classification = %s", out["detection_source"],
                          out["classification_source"])
    return out


def cifar_sources(data: CifarData, seed: int, out_dir: Path) -> dict[str, Any]:
    """A cifar-10-batches-py folder (the user's own, one converted from their ImageNet-format
    folder, or the embedded digits) and the seeded train/val split of its training images."""
    from data.cifar import (FOLDER_NAME, default_cifar_folder, load_cifar, read_cifar_batches, split_train_val,
                            write_cifar_set)

    if data.dataset_dir is None:
        folder, source = default_cifar_folder(seed), "embedded digits as 32x32 CIFAR-format images"
        cifar = read_cifar_batches(folder, "data.dataset_dir")
    else:
        cifar = load_cifar(data.dataset_dir, seed=seed, field="data.dataset_dir")
        given = Path(data.dataset_dir)
        if (given / "batches.meta").exists() or (given / FOLDER_NAME / "batches.meta").exists():
            folder = given if (given / "batches.meta").exists() else given / FOLDER_NAME
            source = f"your CIFAR folder {folder}"
        else:  # an ImageNet-format folder, converted once into this stage's work folder
            folder = write_cifar_set(out_dir / FOLDER_NAME, cifar)
            source = f"your image folder {given}, as 32x32 CIFAR-format images"
    train_idx, val_idx = split_train_val(cifar.train_labels, data.val_fraction, seed, field="data.val_fraction")
    split = write_json(out_dir / "split.json", {"train": train_idx.tolist(), "val": val_idx.tolist()})
    return {"cifar_dir": str(folder), "split_file": str(split), "labels": list(cifar.label_names),
            "counts": {"train": len(train_idx), "val": len(val_idx), "test": len(cifar.test_labels)},
            "source": f"{source} ({len(cifar.train_labels)} train / {len(cifar.test_labels)} test images, "
                      f"{cifar.num_classes} classes)"}


@task(name="data", persist_result=True, cache_policy=STAGE_CACHE)
def cifar_data_task(data: CifarData, seed: int, work_dir: str, parent_run_id: str, runtime: Runtime) -> dict[str, Any]:
    out = cifar_sources(data, seed, Path(work_dir))
    recorded = _record(out, work_dir, parent_run_id)
    get_run_logger().info("data: %s; train/val/test %s", out["source"], out["counts"])
    return {**recorded, "files": recorded["files"] + [out["split_file"]]}


def face_sources(data: FaceData, image_size: int, seed: int, out_dir: Path) -> dict[str, Any]:
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
    return {**coco, "source": source}


@task(name="data", persist_result=True, cache_policy=STAGE_CACHE)
def face_data_task(data: FaceData, image_size: int, seed: int, work_dir: str, parent_run_id: str,
                   runtime: Runtime) -> dict[str, Any]:
    out = _record(face_sources(data, image_size, seed, Path(work_dir)), work_dir, parent_run_id)
    get_run_logger().info("data: %s", out["source"])
    return out
