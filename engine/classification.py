"""Classifier training and evaluation, shared by every pipeline that trains a classifier
(PP-LCNet, SP-NAS reignite, and later PruneEA/SPOS/SANAS).

Plain torch: no Prefect, no MLflow. Progress leaves through the `on_epoch` callback; a
checkpoint after every epoch (model, optimizer, scheduler, epoch, config, history, RNG states;
engine.detection's format) lets `fit` resume in a new process as if never interrupted.
"""
from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from core.errors import InputError
from engine.detection import model_signature, read_checkpoint, restore_checkpoint, save_checkpoint
from engine.runtime import model_on, rng_state, set_rng_state

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_epochs: int = 1
    label_smoothing: float = 0.0
    max_steps_per_epoch: int | None = None  # cap for smoke runs


def sgd_cosine(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with a per-step linear warm-up then cosine decay to zero (PP-LCNet's recipe)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None, criterion: nn.Module,
                    max_steps: int | None = None, *, device: torch.device | None = None) -> dict[str, float]:
    """One pass (or `max_steps` batches). `device`: where to train (None: where the model is);
    the model comes back where it was."""
    with model_on(model, device) as dev:
        return _train_one_epoch(model, loader, optimizer, scheduler, criterion, max_steps, dev)


def _train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                     scheduler: torch.optim.lr_scheduler.LRScheduler | None, criterion: nn.Module,
                     max_steps: int | None, device: torch.device) -> dict[str, float]:
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    # islice: stop before loading a batch that won't be trained on.
    batches = loader if max_steps is None else itertools.islice(loader, max_steps)
    for step, (images, labels) in enumerate(batches):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        loss = criterion(logits, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower learning_rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * labels.numel()
        correct += (logits.argmax(1) == labels).sum().item()
        seen += labels.numel()
    return {"train_loss": total_loss / max(1, seen), "train_acc": correct / max(1, seen)}


def evaluate(model: nn.Module, loader: DataLoader, topk: int = 5, *,
             device: torch.device | None = None) -> dict[str, float]:
    """top-1 / top-k accuracy and mean cross-entropy over `loader`. `device`: where to run
    (None: where the model is); the model comes back where it was."""
    with model_on(model, device, channels_last=True) as dev:  # outside inference mode (see model_on)
        return _evaluate(model, loader, topk, dev)


@torch.inference_mode()
def _evaluate(model: nn.Module, loader: DataLoader, topk: int, device: torch.device) -> dict[str, float]:
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, top1, topk_hits, seen = 0.0, 0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        loss += criterion(logits, labels).item()
        k = min(topk, logits.shape[1])
        best = logits.topk(k, dim=1).indices
        top1 += (best[:, 0] == labels).sum().item()
        topk_hits += (best == labels[:, None]).any(dim=1).sum().item()
        seen += labels.numel()
    if seen == 0:
        return {"top1": float("nan"), f"top{topk}": float("nan"), "loss": float("nan"), "count": 0}
    return {"top1": top1 / seen, f"top{topk}": topk_hits / seen, "loss": loss / seen, "count": seen}


def hits(model: nn.Module, loader: DataLoader, *, device: torch.device | None = None) -> torch.Tensor:
    """Per image of `loader`, in its order: 1 where the top-1 prediction is right, else 0."""
    with model_on(model, device, channels_last=True) as dev, torch.inference_mode():
        model.eval()
        out = [(model(images.to(dev)).argmax(1) == labels.to(dev)).to("cpu", torch.uint8)
               for images, labels in loader]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.uint8)


def fit(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader | None, cfg: TrainConfig,
        checkpoint_path: Path | None = None, topk: int = 5,
        on_epoch: Callable[[dict[str, float]], None] | None = None, *,
        device: torch.device | None = None) -> list[dict[str, float]]:
    """Train for cfg.epochs; returns per-epoch metrics (all epochs, also after a resume).

    `device`: where to train and validate (None: where the model is); the model comes back
    where it was. `checkpoint_path`: saved after every finished epoch. When it holds a
    checkpoint of the same config (TrainConfig, model layout, steps per epoch), training
    continues after its last finished epoch with the same weights, optimizer, LR schedule,
    RNG states and shuffling order, so the result equals an uninterrupted run; a checkpoint of
    another config, or an unreadable one, is ignored and overwritten.
    """
    steps = len(train_loader) if cfg.max_steps_per_epoch is None else min(len(train_loader), cfg.max_steps_per_epoch)
    with model_on(model, device) as dev:
        optimizer, scheduler = sgd_cosine(model, cfg, steps)
        criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        config = {"train": asdict(cfg), "model": model_signature(model), "steps_per_epoch": steps}
        history: list[dict[str, float]] = []
        start = 0
        if checkpoint_path is not None:
            start, history = _resume(Path(checkpoint_path), config, model, optimizer, scheduler, train_loader, dev)
        for epoch in range(start + 1, cfg.epochs + 1):
            metrics: dict[str, float] = {"epoch": epoch}
            metrics.update(_train_one_epoch(model, train_loader, optimizer, scheduler, criterion,
                                            cfg.max_steps_per_epoch, dev))
            metrics["lr"] = optimizer.param_groups[0]["lr"]
            if val_loader is not None:
                val = _evaluate(model, val_loader, topk, dev)
                metrics.update({f"val_{k}": v for k, v in val.items() if k != "count"})
            history.append(metrics)
            if checkpoint_path is not None:
                # The shuffling generator's state now is the next epoch's order: a resume restores it.
                gen, augment = train_loader.generator, augment_generator(train_loader)
                save_checkpoint(checkpoint_path, model, optimizer, scheduler, epoch, config,
                                extra={"history": history, "rng": rng_state(dev),
                                       "loader_rng": gen.get_state() if gen is not None else None,
                                       "augment_rng": augment.get_state() if augment is not None else None})
            if on_epoch is not None:
                on_epoch(metrics)
    return history


def augment_generator(loader: DataLoader) -> torch.Generator | None:
    """The generator of the training set's own transform when it has one (data.cifar's
    CifarAugment draws crops and flips from it, not from the global RNG): saved with every
    checkpoint and restored on resume, so a resumed run sees the same augmentations."""
    generator = getattr(getattr(loader.dataset, "transform", None), "generator", None)
    return generator if isinstance(generator, torch.Generator) else None


def _resume(path: Path, config: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any, train_loader: DataLoader, device: torch.device) -> tuple[int, list[dict[str, float]]]:
    """Restore a matching checkpoint; returns (finished epochs, their history), (0, []) if none."""
    if not path.exists():
        return 0, []
    try:
        ckpt = read_checkpoint(path)
    except InputError as exc:
        log.warning("ignoring checkpoint: %s", exc)
        return 0, []
    if ckpt.get("config") != config or not {"history", "rng", "loader_rng"} <= set(ckpt):
        log.info("ignoring checkpoint %s: written for another config; starting fresh", path)
        return 0, []
    restore_checkpoint(ckpt, model, optimizer, scheduler)
    set_rng_state(ckpt["rng"], device)  # augmentation and dropout draw from these
    if ckpt["loader_rng"] is not None and train_loader.generator is not None:
        train_loader.generator.set_state(ckpt["loader_rng"])
    augment = augment_generator(train_loader)
    if augment is not None and ckpt.get("augment_rng") is not None:
        augment.set_state(ckpt["augment_rng"])
    log.info("resuming %s after epoch %d of %d", path, ckpt["epoch"], config["train"]["epochs"])
    return int(ckpt["epoch"]), list(ckpt["history"])
