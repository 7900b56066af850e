"""Stage `data` of prune-ea/full and spos/full: a CIFAR-format folder (the user's own, one converted
from their ImageNet-format folder, or the embedded digits) and its seeded train/val split."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from params.models import CifarData
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import write_json
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.sources import record_sources


@dataclass(frozen=True, kw_only=True)
class CifarSplit(StageResult):
    """The CIFAR-format folder every later stage reads, its seeded train/val split (split.json)
    and the class names; `files`: sources.json and split.json."""

    cifar_dir: str
    split_file: str
    labels: tuple[str, ...]
    counts: Mapping[str, int]   # images per part: train, val, test
    source: str                 # in words, for the log and MLflow

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def record(self) -> dict[str, Any]:
        """The choice as sources.json holds it (the data fields, in their order)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("files", "performance")}


def cifar_sources(data: CifarData, seed: int, out_dir: Path) -> CifarSplit:
    """A cifar-10-batches-py folder (the user's own, one converted from their ImageNet-format
    folder, or the embedded digits) and the seeded train/val split of its training images."""
    from data.cifar import (FOLDER_NAME, default_cifar_folder, load_cifar, read_cifar_batches, split_train_val,
                            write_cifar_set)

    if data.dataset_dir is None:
        folder = default_cifar_folder(seed, data.embedded)
        source = ("embedded digits as 32x32 CIFAR-format images" if data.embedded == "digits" else
                  "embedded digits on photo patches (random size, place, contrast) as 32x32 CIFAR-format images")
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
    return CifarSplit(cifar_dir=str(folder), split_file=str(split), labels=tuple(cifar.label_names),
                      counts={"train": len(train_idx), "val": len(val_idx), "test": len(cifar.test_labels)},
                      source=f"{source} ({len(cifar.train_labels)} train / {len(cifar.test_labels)} test images, "
                             f"{cifar.num_classes} classes)", files=(str(split),))


@task(name="data", persist_result=True, cache_policy=STAGE_CACHE)
def cifar_data_task(data: CifarData, seed: int, ctx: StageContext) -> CifarSplit:
    split = cifar_sources(data, seed, ctx.work)
    recorded = record_sources(split.record(), ctx)["files"]
    get_run_logger().info("data: %s; train/val/test %s", split.source, split.counts)
    return replace(split, files=(*recorded, split.split_file))
