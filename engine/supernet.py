"""Single-path one-shot (SPOS) supernet training and path scoring. Plain torch: no Prefect, no MLflow.

Training: every step samples one path (`sample_path(rng)`), runs the batch through it and takes
an SGD step. Gradients are zeroed with `set_to_none=True`, so the blocks' unsampled choices have
no `.grad` at all and torch's SGD skips them entirely: no gradient, no weight decay and no
momentum update for what the step did not use (tests/test_spos_model.py checks it on a real step).

Resume: with `checkpoint=`, the same contract as `engine.detector_fit.fit_steps`: saved every
`checkpoint_every` steps (model, optimizer, scheduler, step, data position, torch RNG and the
path sampler's RNG), and a new process calling again with the same arguments continues to the
same weights an uninterrupted run reaches.

Scoring a path: the path's weights are copied into a stand-alone subnet; its BatchNorm
statistics are recalibrated on `recalib_batches` training batches (cumulative average over
them, the SPOS recipe: the supernet's running statistics mix every path that ran through a
block), or left as the supernet's when 0; then top-1 on the given loader.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from core.errors import InputError
from engine.classification import evaluate
from engine.detection import model_signature, save_checkpoint
from engine.detector_fit import LoaderCycle, resume_checkpoint
from engine.runtime import model_on, rng_state


@dataclass(frozen=True)
class SupernetOptim:
    steps: int
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 4e-5
    max_grad_norm: float | None = None  # clipping at 5 slowed the small preset's supernet (loss 2.20 vs 2.17 at 1200 steps)


def train_supernet(supernet: nn.Module, loader: DataLoader, optim: SupernetOptim,
                   sample_path: Callable[[random.Random], list[int]], seed: int,
                   on_step: Callable[[int, float, list[int]], None] | None = None, *,
                   device: torch.device | None = None, checkpoint: Path | None = None,
                   checkpoint_every: int = 100) -> dict[str, float]:
    """Train `optim.steps` single-path steps (cosine lr to zero); returns {"steps", "loss"} of
    this call (mean loss over the steps it ran). `on_step(step, loss, path)` after each step."""
    if checkpoint_every < 1:
        raise InputError("checkpoint_every", f"must be a positive number of steps, got {checkpoint_every!r}")
    rng = random.Random(seed)
    criterion = nn.CrossEntropyLoss()
    with model_on(supernet, device) as dev:
        optimizer = torch.optim.SGD(supernet.parameters(), lr=optim.learning_rate, momentum=optim.momentum,
                                    weight_decay=optim.weight_decay)
        steps = optim.steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        batches = LoaderCycle(loader)
        config = {"optim": asdict(optim), "seed": seed, "model": model_signature(supernet),
                  "batches_per_pass": len(loader)}
        start = _resume(checkpoint, config, supernet, optimizer, scheduler, batches, rng, dev) if checkpoint else 0
        supernet.train()
        total, done = 0.0, 0
        it = iter(batches)
        for step in range(start, steps):
            images, labels = next(it)
            path = sample_path(rng)
            optimizer.zero_grad(set_to_none=True)  # unsampled choices keep grad None: SGD skips them
            loss = criterion(supernet(images.to(dev), path), labels.to(dev))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"supernet loss is {loss.item()} at step {step} (path {path}); "
                                         "lower supernet.learning_rate")
            loss.backward()
            if optim.max_grad_norm:
                nn.utils.clip_grad_norm_([p for p in supernet.parameters() if p.grad is not None],
                                         optim.max_grad_norm)
            optimizer.step()
            scheduler.step()
            total, done = total + loss.item(), done + 1
            if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                save_checkpoint(checkpoint, supernet, optimizer, scheduler, 0, config,
                                extra={"step": step + 1, "data": batches.position(), "rng": rng_state(dev),
                                       "path_rng": rng.getstate()})
            if on_step is not None:
                on_step(step, loss.item(), path)
    return {"steps": float(done), "loss": total / done if done else float("nan")}


def _resume(path: Path, config: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any, batches: LoaderCycle, rng: random.Random, device: torch.device) -> int:
    """The shared step-loop resume, plus the path sampler's RNG."""
    ckpt = resume_checkpoint(path, config, model, optimizer, scheduler, batches, device, extra=("path_rng",))
    if ckpt is None:
        return 0
    version, internal, gauss = ckpt["path_rng"]
    rng.setstate((version, tuple(internal), gauss))
    return int(ckpt["step"])


def recalibrate_bn(model: nn.Module, batches: Iterable[Any], count: int, device: torch.device | None = None) -> int:
    """Re-estimate every BatchNorm's running statistics as the plain average over `count` batches
    of (images, labels); returns the batches used. 0 leaves the statistics alone."""
    if count <= 0:
        return 0
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    used = 0
    with model_on(model, device) as dev, torch.no_grad():
        model.train()
        for images, _ in batches:
            if used >= count:
                break
            model(images.to(dev))
            used += 1
        model.eval()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return used


def score_subnet(subnet: nn.Module, recalib_loader: DataLoader, recalib_batches: int, val_loader: DataLoader,
                 device: torch.device | None = None) -> float:
    """Top-1 of a subnet carrying supernet weights, after recalibrating its BN (0 = don't)."""
    recalibrate_bn(subnet, recalib_loader, recalib_batches, device)
    return float(evaluate(subnet.eval(), val_loader, 1, device=device)["top1"])


__all__ = ["SupernetOptim", "recalibrate_bn", "score_subnet", "train_supernet"]
