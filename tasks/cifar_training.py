"""What the prune-ea stages share (no stage imports another stage): the CIFAR-format data of the
`data` stage with its train/val split, loaders, training a CIFAR ResNet with the engine's
classification loop, scoring it, and measuring it. Plain functions: no Prefect, no MLflow."""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from data.cifar import CIFAR10_MEAN, CIFAR10_STD, CifarArrays, CifarSet, cifar_loaders, read_cifar_batches
from data.transforms import Preprocess
from engine.classification import TrainConfig, evaluate, fit
from latency.flops import count_macs_params
from params.models import ClassifierTrain
from tasks.common import read_json

EVAL_BATCH = 256


def load_data(data: dict[str, Any]) -> tuple[CifarSet, np.ndarray, np.ndarray]:
    """The CIFAR set of the `data` stage and its (train, val) index arrays."""
    return _read(data["cifar_dir"], data["split_file"])


@lru_cache(maxsize=2)
def _read(cifar_dir: str, split_file: str) -> tuple[CifarSet, np.ndarray, np.ndarray]:
    """Read once per process: every search candidate needs the same (read-only) arrays."""
    cifar = read_cifar_batches(cifar_dir, "data.dataset_dir")
    split = read_json(split_file)
    return cifar, np.asarray(split["train"], dtype=np.int64), np.asarray(split["val"], dtype=np.int64)


def loaders(data: dict[str, Any], batch_size: int, seed: int) -> tuple[DataLoader, DataLoader, DataLoader]:
    """(augmented train part, val part, test batch)."""
    cifar, train_idx, val_idx = load_data(data)
    train, val = cifar_loaders((cifar.train_images[train_idx], cifar.train_labels[train_idx]),
                               (cifar.train_images[val_idx], cifar.train_labels[val_idx]), batch_size, seed)
    test = DataLoader(CifarArrays(cifar.test_images, cifar.test_labels), batch_size=EVAL_BATCH)
    return train, val, test


def preprocess() -> Preprocess:
    """What the exported model.yml tells a Predictor: 32 px, CIFAR mean/std."""
    return Preprocess(input_size=32, resize_short=32, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def measure(model: torch.nn.Module) -> dict[str, int]:
    macs, params = count_macs_params(model.cpu(), (1, 3, 32, 32))
    return {"macs": macs, "params": params}


def train_config(cfg: ClassifierTrain) -> TrainConfig:
    return TrainConfig(epochs=cfg.epochs, learning_rate=cfg.learning_rate, momentum=cfg.momentum,
                       weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs)


def train_and_score(model: torch.nn.Module, data: dict[str, Any], cfg: ClassifierTrain, seed: int,
                    device: torch.device, checkpoint: Path | None,
                    on_epoch: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train on the train part (validated on val each epoch), then score val and test."""
    train, val, test = loaders(data, cfg.batch_size, seed)
    history = fit(model, train, val, train_config(cfg), checkpoint_path=checkpoint, topk=1, on_epoch=on_epoch,
                  device=device)
    return {"history": history, "val_acc": evaluate(model, val, 1, device=device)["top1"],
            "test_acc": evaluate(model, test, 1, device=device)["top1"]}


def finetune_and_score(model: torch.nn.Module, data: dict[str, Any], steps: int, lr: float, batch_size: int,
                       seed: int, device: torch.device) -> float:
    """A candidate's short fine-tune on inherited weights (constant lr), then val accuracy."""
    from engine.classification import train_one_epoch

    train, val, _ = loaders(data, batch_size, seed)
    if steps > 0:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
        done = 0
        while done < steps:  # several passes when the budget exceeds one epoch
            take = min(steps - done, len(train))
            train_one_epoch(model, train, optimizer, None, torch.nn.CrossEntropyLoss(), max_steps=take, device=device)
            done += take
    return evaluate(model, val, 1, device=device)["top1"]
