"""Classifier training and evaluation, shared by every pipeline that trains a classifier
(PP-LCNet, SP-NAS reignite, and later PruneEA/SPOS/SANAS).

Plain torch: no Prefect, no MLflow. Progress leaves through the `on_epoch` callback; a
checkpoint after every epoch (model, optimizer, scheduler, epoch, config) lets `fit` resume.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader


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
                    max_steps: int | None = None) -> dict[str, float]:
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for step, (images, labels) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
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


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, topk: int = 5) -> dict[str, float]:
    """top-1 / top-k accuracy and mean cross-entropy over `loader`."""
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, top1, topk_hits, seen = 0.0, 0, 0, 0
    for images, labels in loader:
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


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fit(model: nn.Module, train_loader: DataLoader, val_loader: DataLoader | None, cfg: TrainConfig,
        checkpoint_path: Path | None = None, topk: int = 5,
        on_epoch: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train for cfg.epochs; returns per-epoch metrics. Resumes from `checkpoint_path` when it
    holds a checkpoint of the same config (a killed run continues at its next epoch)."""
    steps = len(train_loader) if cfg.max_steps_per_epoch is None else min(len(train_loader), cfg.max_steps_per_epoch)
    optimizer, scheduler = sgd_cosine(model, cfg, steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history: list[dict[str, float]] = []
    start = 0
    if checkpoint_path is not None and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if state.get("config") == asdict(cfg):
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start, history = state["epoch"], list(state["history"])
    for epoch in range(start + 1, cfg.epochs + 1):
        metrics: dict[str, float] = {"epoch": epoch}
        metrics.update(train_one_epoch(model, train_loader, optimizer, scheduler, criterion, cfg.max_steps_per_epoch))
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        if val_loader is not None:
            val = evaluate(model, val_loader, topk)
            metrics.update({f"val_{k}": v for k, v in val.items() if k != "count"})
        history.append(metrics)
        if checkpoint_path is not None:
            _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history,
                          "config": asdict(cfg)}, checkpoint_path)
        if on_epoch is not None:
            on_epoch(metrics)
    return history
