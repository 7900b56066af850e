"""The preflight check of the CIFAR-format data prune-ea/full and spos/full share."""
from __future__ import annotations

from pathlib import Path

from data.cifar import read_cifar_batches
from data.split import check_image_folder
from params.models import CifarData
from tasks.orchestration.preflight import at, existing_dir


EMBEDDED_CLASSES = 10  # both embedded sets are the ten handwritten digits


def check_cifar_data(data: CifarData) -> int:
    """`data.dataset_dir`: a readable cifar-10-batches-py folder (itself or inside), or a folder
    of class sub-folders; a broken batch file fails here, not mid-run. Returns the number of
    classes the run will train on (what a latency predictor's classifier head must match)."""
    existing_dir(data.dataset_dir, "data.dataset_dir",
                 "a cifar-10-batches-py folder or a folder of class sub-folders, or null")
    if data.dataset_dir is None:
        return EMBEDDED_CLASSES
    given = Path(data.dataset_dir)
    folder = given / "cifar-10-batches-py" if (given / "cifar-10-batches-py").is_dir() else given
    if (folder / "batches.meta").exists() or any(folder.glob("data_batch_*")):
        with at("data.dataset_dir", data.dataset_dir):
            return read_cifar_batches(folder, "data.dataset_dir").num_classes
    with at("data.dataset_dir", data.dataset_dir):
        if not any(p.is_dir() for p in folder.iterdir()):
            raise ValueError("holds neither CIFAR batch files nor class sub-folders")
    return len(check_image_folder(folder, "data.dataset_dir"))  # every image decoded, two classes at least
