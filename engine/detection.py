"""Detection training/evaluation loops in the style of torchvision's references/detection/engine.py.

Only the loops and checkpoints: no data loading, no tracking, no mAP. `evaluate` returns raw
per-image detections; the data room turns them into COCO results and runs pycocotools.

Batches are `(list_of_images, list_of_targets)`, targets `{"boxes" (N,4) xyxy, "labels" (N,),
"image_id"}` as torchvision's detection models expect.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from core.errors import InputError
from engine.runtime import model_on

__all__ = ["evaluate", "load_checkpoint", "model_signature", "read_checkpoint", "restore_checkpoint",
           "save_checkpoint", "train_one_epoch"]

Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]


def _to(batch: Batch, device: torch.device) -> Batch:
    images, targets = batch
    images = [img.to(device) for img in images]
    targets = [
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
        for t in targets
    ]
    return images, targets


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[Batch],
    max_steps: int | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    max_grad_norm: float | None = None,
    *,
    device: torch.device | None = None,
    first_step: int = 0,
) -> dict[str, float]:
    """One pass over `loader` (or `max_steps` batches); returns mean losses and `steps`.

    `max_grad_norm` clips the global gradient norm: freshly mutated candidates at lr 0.02
    otherwise diverge now and then.

    Keys: torchvision's loss names plus "loss" (their sum). `on_step(step, losses)` is called
    after each optimizer step with float values (e.g. to log to MLflow or update progress).
    A non-finite loss raises FloatingPointError naming the step, before the weights change.

    `device`: where to train (None: where the model is); the model comes back where it was.
    `first_step` numbers the steps (on_step, errors) when this call continues a longer run.
    """
    with model_on(model, device) as dev:
        return _train_one_epoch(model, optimizer, loader, max_steps, on_step, max_grad_norm, dev, first_step)


def _train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[Batch],
    max_steps: int | None,
    on_step: Callable[[int, dict[str, float]], None] | None,
    max_grad_norm: float | None,
    device: torch.device,
    first_step: int,
) -> dict[str, float]:
    model.train()
    sums: dict[str, float] = {}
    steps = 0
    # islice, not a break after the fact: a cycled loader must not load a batch it won't train on.
    batches = loader if max_steps is None else itertools.islice(loader, max_steps)
    for step, batch in enumerate(batches, start=first_step):
        images, targets = _to(batch, device)
        loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        values["loss"] = float(loss.detach())
        if not math.isfinite(values["loss"]):
            raise FloatingPointError(
                f"non-finite loss at step {step}: {values}; "
                "lower the learning rate or check the boxes."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], max_grad_norm
            )
        optimizer.step()
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        steps += 1
        if on_step is not None:
            on_step(step, values)
    means = {k: v / steps for k, v in sums.items()} if steps else {}
    means["steps"] = float(steps)
    return means


def _image_id(value: Any) -> int | str:
    if isinstance(value, torch.Tensor):
        return int(value.item())
    return value


def evaluate(
    model: nn.Module, loader: Iterable[Batch], *, device: torch.device | None = None
) -> list[dict[str, Any]]:
    """Raw detections per image: {"image_id", "boxes" (N,4) xyxy, "labels" (N,), "scores" (N,)}.

    Arrays are numpy (float32 boxes/scores, int64 labels), in the input image's pixels.
    `device`: where to run (None: where the model is); the model comes back where it was.
    """
    # The move happens outside inference mode (see model_on).
    with model_on(model, device, channels_last=True) as dev:
        return _evaluate(model, loader, dev)


@torch.inference_mode()
def _evaluate(model: nn.Module, loader: Iterable[Batch], device: torch.device) -> list[dict[str, Any]]:
    model.eval()
    results: list[dict[str, Any]] = []
    for batch in loader:
        images, targets = _to(batch, device)
        outputs = model(images)
        for out, tgt in zip(outputs, targets):
            results.append(
                {
                    "image_id": _image_id(tgt["image_id"]),
                    "boxes": out["boxes"].cpu().numpy(),
                    "labels": out["labels"].cpu().numpy(),
                    "scores": out["scores"].cpu().numpy(),
                }
            )
    return results


def _check_plain(value: Any, where: str, tensors: bool = False) -> None:
    # weights_only loading accepts only plain containers/primitives: refuse others at save time.
    field = where.split(".")[0].split("[")[0]
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if tensors and isinstance(value, torch.Tensor):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]", tensors)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise InputError(field, f"key {k!r} at {where} must be a string or int.")
            _check_plain(v, f"{where}.{k}", tensors)
        return
    allowed = "dict/list/str/int/float/bool/None" + ("/Tensor" if tensors else "")
    raise InputError(field, f"{where} is a {type(value).__name__}; only {allowed} are allowed.")


def _cpu(value: Any) -> Any:
    # Checkpoints are CPU-only so they load anywhere, whatever device trained them.
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


def model_signature(model: nn.Module) -> str:
    """A short hash of the state-dict layout and of which parameters train: a checkpoint's config
    carries it so a checkpoint of another architecture is recognised as foreign, not loaded."""
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    for name, p in model.named_parameters():
        h.update(f"{name}:{p.requires_grad};".encode())
    return h.hexdigest()[:16]


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    epoch: int,
    config: dict[str, Any],
    *,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write model/optimizer/scheduler state, epoch and config atomically (temp file + rename).

    `extra`: more top-level entries (tensors and plain values, e.g. step, RNG state, history);
    they may not shadow the five standard ones. Every tensor is stored on CPU.
    """
    _check_plain(config, "config")
    extra = extra or {}
    _check_plain(extra, "extra", tensors=True)
    standard = {"model", "optimizer", "scheduler", "epoch", "config"}
    if standard & set(extra):
        raise InputError("extra", f"{sorted(standard & set(extra))} are standard entries, not extras.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = _cpu({
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "config": config,
        **extra,
    })
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
        os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
) -> dict[str, Any]:
    """Restore states saved by `save_checkpoint`; returns the checkpoint (epoch, config, ...)."""
    ckpt = read_checkpoint(path)
    restore_checkpoint(ckpt, model, optimizer, scheduler)
    return ckpt


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at `path` (tensors on CPU) without applying it, e.g. to compare its config
    first. A missing, unreadable or foreign file is an InputError naming `checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint", f"{str(path)!r} does not exist or is not a file.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(
            "checkpoint", f"{str(path)!r} is not a readable checkpoint ({type(exc).__name__})."
        ) from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise InputError(
            "checkpoint", f"{str(path)!r} was not written by save_checkpoint (no 'model' entry)."
        )
    return ckpt


def restore_checkpoint(
    ckpt: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
) -> None:
    """Load a `read_checkpoint` result into model/optimizer/scheduler, wherever they live (the
    model copies CPU tensors onto its device; the optimizer moves its state to its parameters')."""
    model.load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
