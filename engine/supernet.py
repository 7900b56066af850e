"""Single-path one-shot (SPOS) supernet training and path scoring. Plain torch: no Prefect, no MLflow.

Training: every step samples one path (`sample_path(rng)`), runs the batch through it and takes
an SGD step. Gradients are zeroed with `set_to_none=True`, so the blocks' unsampled choices have
no `.grad` at all and torch's SGD skips them entirely: no gradient, no weight decay and no
momentum update for what the step did not use (tests/test_spos_model.py checks it on a real step).

Resume: with `checkpoint=`, the same contract as `engine.detector_fit.fit_steps`: saved every
`checkpoint_every` steps (model, optimizer, scheduler, step, data position, torch RNG and the
path sampler's RNG), and a new process calling again with the same arguments continues to the
same weights an uninterrupted run reaches.

Warm start (`WarmStart`, a departure from the paper made for small budgets): at initialisation
the four ops of a block are unrelated random functions in a network where one changed choice
changes the features almost entirely, so uniform single-path training on a few thousand samples
stays at chance. The warm start first trains one reference path (choice 0 everywhere), then
fits each block's xception branch to the reference branch's output on the same inputs
(block-local relative MSE, Adam), then copies the reference op into the 5×5 and 7×7 choices
(kernels zero-padded: the same function), and only then runs the uniform phase with a fresh
optimizer. Choices 0-2 start equal, so their ranking comes from the uniform phase alone. Each
phase has its own checkpoint beside `checkpoint`, so a run killed in any phase resumes exactly.

Scoring a path: the path's weights are copied into a stand-alone subnet; its BatchNorm
statistics are recalibrated on `recalib_batches` training batches (cumulative average over
them, the SPOS recipe: the supernet's running statistics mix every path that ran through a
block), or left as the supernet's when 0; then top-1 on the given loader.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from core.errors import InputError
from core.seeds import derive_seed
from engine.classification import evaluate
from engine.detection import model_signature, read_checkpoint, save_checkpoint
from engine.detector_fit import LoaderCycle, resume_checkpoint
from engine.runtime import model_on, rng_state
from nas_models.spos_shufflenet import SposSupernet, copy_reference_kernels

REFERENCE_CHOICE = 0  # shufflenet 3×3: the op the warm start trains and copies
LOSS_WINDOW = 50      # steps the reported final loss is averaged over


@dataclass(frozen=True)
class SupernetOptim:
    steps: int
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 4e-5
    max_grad_norm: float | None = None  # clipping at 5 slowed the small preset's supernet (loss 2.20 vs 2.17 at 1200 steps)


@dataclass(frozen=True)
class WarmStart:
    """The warm start's budget (see the module docstring): steps of the reference path, then
    steps of fitting the xception branches (Adam at `align_lr`)."""

    reference_steps: int = 150
    align_steps: int = 100
    align_lr: float = 3e-3


def train_supernet(supernet: nn.Module, loader: DataLoader, optim: SupernetOptim,
                   sample_path: Callable[[random.Random], list[int]], seed: int,
                   on_step: Callable[[int, float, list[int]], None] | None = None, *,
                   device: torch.device | None = None, checkpoint: Path | None = None,
                   checkpoint_every: int = 100, warm_start: WarmStart | None = None,
                   on_warm: Callable[[str, int, float], None] | None = None) -> dict[str, float]:
    """Train `optim.steps` single-path steps (cosine lr to zero), after the warm start when one
    is given. Returns this call's figures: "steps" (single-path steps of sampled paths), "loss"
    (mean of the last LOSS_WINDOW of them), "loss_first" (of the first LOSS_WINDOW), and with a
    warm start "reference_loss" and "align_error_first"/"align_error_last" (relative MSE).
    `on_step(step, loss, path)` after each sampled-path step; `on_warm(phase, step, value)` after
    each warm-start step ("reference": its loss, "align": the mean relative error)."""
    if checkpoint_every < 1:
        raise InputError("checkpoint_every", f"must be a positive number of steps, got {checkpoint_every!r}")
    rng = random.Random(seed)
    criterion = nn.CrossEntropyLoss()
    config = {"optim": asdict(optim), "seed": seed, "model": model_signature(supernet),
              "batches_per_pass": len(loader), "warm_start": asdict(warm_start) if warm_start else None}
    figures: dict[str, float] = {}
    with model_on(supernet, device) as dev:
        if warm_start is not None:
            if not (checkpoint is not None and _written_for(checkpoint, config)):
                figures = _warm_start(supernet, loader, optim, warm_start, seed, dev, checkpoint,
                                      checkpoint_every, on_warm)
            # Each phase starts its data order from its own seed: a phase that was resumed
            # leaves the loader's generator elsewhere than an uninterrupted one would.
            _reseed(loader, derive_seed(seed, "supernet.uniform"))
        # A fresh optimizer after the warm start: its momentum belongs to the reference path.
        optimizer = torch.optim.SGD(supernet.parameters(), lr=optim.learning_rate, momentum=optim.momentum,
                                    weight_decay=optim.weight_decay)
        steps = optim.steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        batches = LoaderCycle(loader)
        start = _resume(checkpoint, config, supernet, optimizer, scheduler, batches, rng, dev) if checkpoint else 0
        supernet.train()
        losses: list[float] = []
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
            losses.append(loss.item())
            if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                save_checkpoint(checkpoint, supernet, optimizer, scheduler, 0, config,
                                extra={"step": step + 1, "data": batches.position(), "rng": rng_state(dev),
                                       "path_rng": rng.getstate()})
            if on_step is not None:
                on_step(step, loss.item(), path)
    return {"steps": float(len(losses)), "loss": _mean(losses[-LOSS_WINDOW:]),
            "loss_first": _mean(losses[:LOSS_WINDOW]), **figures}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _reseed(loader: DataLoader, seed: int) -> None:
    """Restart the loader's shuffling stream (a loader without its own generator shuffles from the
    global RNG, which every checkpoint restores)."""
    if loader.generator is not None:
        loader.generator.manual_seed(seed)


def _written_for(path: Path, config: dict[str, Any]) -> bool:
    """Whether `path` is a checkpoint of exactly this run (then the warm start is in its weights)."""
    try:
        return path.exists() and read_checkpoint(path).get("config") == config
    except InputError:
        return False


def _warm_start(supernet: nn.Module, loader: DataLoader, optim: SupernetOptim, warm: WarmStart, seed: int,
                device: torch.device, checkpoint: Path | None, checkpoint_every: int,
                on_warm: Callable[[str, int, float], None] | None) -> dict[str, float]:
    if not isinstance(supernet, SposSupernet):
        raise InputError("supernet.warm_start", f"needs the SPOS supernet, got {type(supernet).__name__}")
    reference = [REFERENCE_CHOICE] * len(supernet.blocks)
    stats = train_supernet(supernet, loader, replace(optim, steps=warm.reference_steps), lambda _: reference, seed,
                           (lambda i, loss, _: on_warm("reference", i, loss)) if on_warm else None,
                           device=device, checkpoint_every=checkpoint_every,
                           checkpoint=checkpoint.with_name("warm_reference.pth") if checkpoint else None)
    _reseed(loader, derive_seed(seed, "supernet.align"))
    first, last = align_xception(supernet, loader, warm.align_steps, warm.align_lr, device=device,
                                 checkpoint=checkpoint.with_name("warm_align.pth") if checkpoint else None,
                                 checkpoint_every=checkpoint_every,
                                 on_step=(lambda i, err: on_warm("align", i, err)) if on_warm else None)
    copy_reference_kernels(supernet)
    return {"reference_loss": stats["loss"], "align_error_first": first, "align_error_last": last}


def xception_errors(supernet: SposSupernet, images: torch.Tensor) -> torch.Tensor:
    """Per block: the xception branch's relative MSE to the reference branch on the inputs the
    reference path feeds that block (the warm start's objective; grads flow to xception only)."""
    with torch.no_grad():
        x = supernet.forward_stem(images)
    errors = []
    for block in supernet.blocks:
        ref, xcp = block.choices[REFERENCE_CHOICE], block.choices[3]
        with torch.no_grad():
            inp = ref.branch_input(x)
            target = ref.branch(inp)
            x = ref.join(x, target)
        errors.append(nn.functional.mse_loss(xcp.branch(inp), target) / target.var().clamp_min(1e-8))
    return torch.stack(errors)


def align_xception(supernet: SposSupernet, loader: DataLoader, steps: int, lr: float, *,
                   device: torch.device | None = None, checkpoint: Path | None = None,
                   checkpoint_every: int = 100,
                   on_step: Callable[[int, float], None] | None = None) -> tuple[float, float]:
    """Fit every block's xception branch to the reference branch (Adam, `steps` batches, train
    mode so the xception BN statistics follow). Returns the mean relative error of the first and
    of the last LOSS_WINDOW steps this call ran (NaN when it ran none)."""
    params = [p for block in supernet.blocks for p in block.choices[3].branch.parameters()]
    with model_on(supernet, device) as dev:
        optimizer = torch.optim.Adam(params, lr=lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        batches = LoaderCycle(loader)
        config = {"align_steps": steps, "lr": lr, "model": model_signature(supernet), "batches_per_pass": len(loader)}
        ckpt = resume_checkpoint(checkpoint, config, supernet, optimizer, scheduler, batches, dev) if checkpoint else None
        start = int(ckpt["step"]) if ckpt else 0
        supernet.train()
        errors: list[float] = []
        it = iter(batches)
        for step in range(start, steps):
            images, _ = next(it)
            optimizer.zero_grad(set_to_none=True)
            loss = xception_errors(supernet, images.to(dev)).mean()
            loss.backward()
            optimizer.step()
            errors.append(loss.item())
            if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                save_checkpoint(checkpoint, supernet, optimizer, scheduler, 0, config,
                                extra={"step": step + 1, "data": batches.position(), "rng": rng_state(dev)})
            if on_step is not None:
                on_step(step, errors[-1])
    return _mean(errors[:LOSS_WINDOW]), _mean(errors[-LOSS_WINDOW:])


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
    with model_on(model, device, channels_last=True) as dev, torch.no_grad():
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


__all__ = ["SupernetOptim", "WarmStart", "align_xception", "recalibrate_bn", "score_subnet", "train_supernet",
           "xception_errors"]
