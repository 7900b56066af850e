"""Readers for the split's list files and a torch Dataset over them.

`labels.txt`: one class name per line (line i = label id i).
`*_list.txt`: lines `<relative/path> <label_id>`; the path may contain spaces (the label is
the last field).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from core.errors import InputError
from data.transforms import load_rgb


def read_labels(path: Path) -> list[str]:
    """Class names in label-id order; blank lines are ignored."""
    path = Path(path)
    text = _read_text(path)
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise InputError(str(path), "labels file is empty; expected one class name per line")
    duplicates = sorted({name for name in labels if labels.count(name) > 1})
    if duplicates:
        raise InputError(str(path), f"class names must be unique, repeated: {duplicates}")
    return labels


def read_list(path: Path, num_classes: int) -> list[tuple[str, int]]:
    """(relative path, label id) pairs, checking every line's format and label range."""
    path = Path(path)
    items: list[tuple[str, int]] = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        if len(parts) != 2 or not _is_int(parts[1]):
            raise InputError(str(path), f"line {number} is {line!r}; expected '<relative/path> <label_id>'")
        label = int(parts[1])
        if not 0 <= label < num_classes:
            raise InputError(str(path), f"line {number} has label id {label}; allowed are "
                                        f"0..{num_classes - 1} (one per line of labels.txt)")
        items.append((parts[0], label))
    return items


class ListDataset(Dataset):
    """Items (float32 CHW tensor, label id) for the images a list file names."""

    def __init__(self, data_dir: Path, list_file: Path, labels_file: Path,
                 transform: Callable[[Any], Any]) -> None:
        self.data_dir = Path(data_dir)
        self.labels = read_labels(labels_file)
        self.items = read_list(list_file, len(self.labels))
        self.transform = transform
        missing = next((rel for rel, _ in self.items if not (self.data_dir / rel).is_file()), None)
        if missing is not None:
            raise InputError(str(list_file), f"lists {missing!r}, which does not exist under {self.data_dir}")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def targets(self) -> list[int]:
        return [label for _, label in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rel, label = self.items[index]
        out = self.transform(load_rgb(self.data_dir / rel))
        if isinstance(out, np.ndarray):  # e.g. Preprocess, which stays torch-free for the Predictor
            out = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
        return out, label


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise InputError(str(path), "file does not exist; run the split step first or check the path")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(str(path), "is not UTF-8 text") from exc


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
