"""What the lcnet/full stages share (a stage imports no other stage's code, only the result
classes of the stages before it): preprocessing from the `model` section, data loaders over a
split, and rebuilding a trained classifier from its desc."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from data.imagefolder import ListDataset
from data.transforms import Preprocess, train_augment
from nas_models.registry import build_from_desc
from params.models import LcnetModel
from tasks.lcnet.split import Split


def preprocess_for(model: LcnetModel) -> Preprocess:
    """The evaluation/prediction preprocessing; the exported model.yml carries the same values."""
    return Preprocess(input_size=model.input_size, resize_short=model.resize_short or model.input_size,
                      mean=tuple(model.mean), std=tuple(model.std))


def loaders(split: Split, model: LcnetModel, batch_size: int, seed: int
            ) -> tuple[DataLoader, DataLoader, DataLoader | None]:
    pre = preprocess_for(model)
    data_dir, labels = Path(split.dataset_dir), Path(split.labels_file)
    train_ds = ListDataset(data_dir, Path(split.train_list), labels,
                           train_augment(pre.input_size, pre.resize_short, pre.mean, pre.std))
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(train_ds, batch_size=batch_size, shuffle=True, drop_last=len(train_ds) > batch_size,
                       generator=generator)
    val = DataLoader(ListDataset(data_dir, Path(split.val_list), labels, pre), batch_size=256)
    test = None
    if split.test_list:
        test = DataLoader(ListDataset(data_dir, Path(split.test_list), labels, pre), batch_size=256)
    return train, val, test


def load_trained(desc: Mapping[str, Any], model_path: str) -> torch.nn.Module:
    """The trained classifier from the train stage's desc and weights (taken apart: that stage
    imports this module)."""
    model = build_from_desc(dict(desc))
    model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    return model.eval()
