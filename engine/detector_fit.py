"""Step-budgeted detector training and COCO scoring, shared by every SP-NAS stage.

Budgets are in optimizer steps (not epochs) so a candidate's cost is the same whatever the data
size; `fit_steps` cycles the loader as needed. Plain torch + pycocotools: no Prefect, no MLflow.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from data.coco import CocoDetection, CocoSet, collate_detection
from data.coco_eval import coco_map, to_coco_detections
from engine.detection import evaluate, train_one_epoch
from latency.timing import min_latency_ms


@dataclass(frozen=True)
class DetectorOptim:
    learning_rate: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 8
    warmup_steps: int = 50
    schedule: str = "cosine"  # "cosine" to zero over the budget, or "constant" after warm-up
    max_grad_norm: float | None = 10.0


def train_loader(coco: CocoSet, batch_size: int, seed: int, max_images: int | None = None) -> DataLoader:
    dataset = CocoDetection(coco, max_images=max_images)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate_detection,
                      generator=torch.Generator().manual_seed(seed))


def eval_loader(coco: CocoSet, max_images: int | None = None, batch_size: int = 16) -> DataLoader:
    return DataLoader(CocoDetection(coco, max_images=max_images), batch_size=batch_size, shuffle=False,
                      collate_fn=collate_detection)


def _cycle(loader: DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


def fit_steps(model: nn.Module, loader: DataLoader, steps: int, optim: DetectorOptim,
              on_step: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train `steps` optimizer steps; returns mean losses. Frozen parameters are left alone."""
    if steps <= 0:
        return {"steps": 0.0}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=optim.learning_rate, momentum=optim.momentum,
                                weight_decay=optim.weight_decay)
    warmup = min(optim.warmup_steps, max(1, steps // 4))

    def factor(step: int) -> float:
        if step < warmup:  # from-scratch FasterRCNN diverges at lr 0.02 without it
            return 0.001 + (1 - 0.001) * step / warmup
        if optim.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def stepped(step: int, losses: dict[str, float]) -> None:
        scheduler.step()
        if on_step is not None:
            on_step(step, losses)

    # One "epoch" over a cycled loader capped at `steps` keeps train_one_epoch's checks and means.
    return train_one_epoch(model, optimizer, _cycle(loader), max_steps=steps, on_step=stepped,
                           max_grad_norm=optim.max_grad_norm)


def score(model: nn.Module, coco: CocoSet, max_images: int | None = None) -> dict[str, float]:
    """COCO mAP@[.5:.95] and mAP@.5 (pycocotools) on `coco` (or its first max_images images)."""
    loader = eval_loader(coco, max_images)
    outputs = evaluate(model, loader)
    image_ids = [o["image_id"] for o in outputs]
    detections = to_coco_detections(image_ids, outputs, coco)
    return coco_map(coco, detections, image_ids=image_ids)


@torch.inference_mode()
def latency_ms(model: nn.Module, image_size: int, runs: int = 10, warmup: int = 3) -> float:
    """Eager batch-1 latency (min of `runs`), a comparable figure between architectures."""
    model.eval()
    image = [torch.rand(3, image_size, image_size)]
    return min_latency_ms(lambda: model(image), runs, warmup)
