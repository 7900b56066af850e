"""Step-budgeted detector training and COCO scoring, shared by every SP-NAS stage.

Budgets are in optimizer steps (not epochs) so a candidate's cost is the same whatever the data
size; `fit_steps` cycles the loader as needed. Plain torch + pycocotools: no Prefect, no MLflow.

Resume: with `checkpoint=`, `fit_steps` saves every `checkpoint_every` steps and a killed process
that calls it again with the same arguments continues where the last save was, seeing the very
batches an uninterrupted run would (see `LoaderCycle`).

Stops (multi-fidelity rungs): `stop_at=` trains only the first steps of the `steps`-step schedule
and saves there; a later call with a higher `stop_at` and `resume_from=` that checkpoint continues
the same schedule, so training in stops equals one uninterrupted run stopped at those points.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from data.coco import CocoDetection, CocoSet, collate_detection
from data.coco_eval import coco_map, to_coco_detections
from engine.detection import (
    evaluate,
    model_signature,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
    train_one_epoch,
)
from core.errors import InputError
from engine.runtime import model_on, rng_state, set_rng_state
from latency.timing import min_latency_ms

log = logging.getLogger(__name__)


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


class _Echo(Dataset):
    """Returns the index it is asked for: iterating a loader over it yields the sampler's order."""

    def __getitem__(self, index: Any) -> Any:
        return index


def _identity(batch: Any) -> Any:
    return batch


class LoaderCycle:
    """Cycles a DataLoader forever and knows its position, so a new process can resume mid-epoch.

    Each pass's order comes from the loader's generator (the global torch RNG when it has none).
    The position is that generator's state at the start of the current pass plus the number of
    batches already taken from the pass. `seek` restores the state and replays the pass's index
    order through a loader over `_Echo` that shares the real loader's (batch) sampler and
    generator: the RNG is consumed exactly as a real pass consumes it, but no image is loaded.
    The untaken rest of that pass is then loaded by index, and later passes are the loader's own.
    With num_workers=0 (as here) everything is exact; with workers the order still is, but
    randomness drawn inside the workers may differ for the rest of the interrupted pass.
    """

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.epoch = 0
        self.offset = 0
        self.epoch_start = self._order_rng().get_state()
        self._rest: list[Any] | None = None

    def _order_rng(self) -> torch.Generator:
        return self.loader.generator if self.loader.generator is not None else torch.default_generator

    def _index_sampler(self) -> Any:
        return self.loader.batch_sampler if self.loader.batch_sampler is not None else self.loader.sampler

    def position(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset, "order_rng": self.epoch_start.clone()}

    def seek(self, position: dict[str, Any]) -> None:
        """Continue from `position`. Call before restoring the global RNG: with a generator-less
        loader the replay draws from the global RNG, as the interrupted pass did."""
        self.epoch, self.offset = int(position["epoch"]), int(position["offset"])
        self.epoch_start = position["order_rng"].clone()
        self._order_rng().set_state(self.epoch_start)
        replay = DataLoader(_Echo(), batch_size=None, sampler=self._index_sampler(),
                            collate_fn=_identity, generator=self.loader.generator)
        self._rest = list(replay)[self.offset:]

    def _rest_loader(self, rest: list[Any]) -> DataLoader:
        src = self.loader
        # A generator in the pass's start state: its seed draw for workers matches the real pass.
        replay_rng = torch.Generator()
        replay_rng.set_state(self.epoch_start)
        common: dict[str, Any] = {"collate_fn": src.collate_fn, "num_workers": src.num_workers,
                                  "pin_memory": src.pin_memory, "worker_init_fn": src.worker_init_fn,
                                  "generator": replay_rng}
        if src.batch_sampler is not None:
            return DataLoader(src.dataset, batch_sampler=rest, **common)
        return DataLoader(src.dataset, batch_size=None, sampler=rest, **common)

    def __iter__(self) -> Iterator[Any]:
        while True:
            if self._rest is not None:
                rest, self._rest = self._rest, None
                batches: Any = self._rest_loader(rest) if rest else []
            else:
                self.epoch_start, self.offset = self._order_rng().get_state(), 0
                batches = self.loader  # iter() below draws this pass's order from the generator
            for batch in batches:
                self.offset += 1
                yield batch
            self.epoch += 1


def fit_steps(model: nn.Module, loader: DataLoader, steps: int, optim: DetectorOptim,
              on_step: Callable[[int, dict[str, float]], None] | None = None, *,
              device: torch.device | None = None, checkpoint: Path | None = None,
              checkpoint_every: int = 50, stop_at: int | None = None, resume_from: Path | None = None,
              meta: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Train `steps` optimizer steps; returns mean losses. Frozen parameters are left alone.

    `device`: where to train (None: where the model is); the model comes back where it was.
    `checkpoint`: a file to save to every `checkpoint_every` steps and at the end (atomically).
    If it exists and holds a checkpoint of the same config (optim, steps, model layout, batches
    per pass) training continues after its last saved step with the same weights, optimizer and
    LR schedule, RNG and data order, so the result equals an uninterrupted run; a checkpoint of
    another config, or an unreadable one, is ignored and overwritten. `on_step(step, losses)`
    gets the global step (a resumed call starts at the saved step); the returned means and
    "steps" cover only the steps run in this call ({"steps": 0.0} if the checkpoint was final).

    `stop_at` (default `steps`): stop after this many steps of the `steps`-step schedule (the
    warm-up and cosine are always those of `steps`); the end save is then at `stop_at`, and a
    `checkpoint` already past it is ignored. `resume_from`: a checkpoint of the same config
    (e.g. an earlier stop's `checkpoint`, never written to) to continue from when `checkpoint`
    holds nothing to resume; missing, unreadable, foreign or past `stop_at`, it is an InputError
    naming `resume_from` (a promotion silently retrained from scratch would be mislabelled).
    Continuing from it to `stop_at` equals an uninterrupted run stopped there. When it already
    is at `stop_at` nothing is trained and `checkpoint` gets its state. `meta`: plain values
    stored with every save (read them back with `read_checkpoint(path)["meta"]`).
    """
    if steps <= 0:
        return {"steps": 0.0}
    if checkpoint_every < 1:
        raise InputError("checkpoint_every", f"must be a positive number of steps, got {checkpoint_every!r}.")
    stop = steps if stop_at is None else stop_at
    if isinstance(stop, bool) or not isinstance(stop, int) or not 1 <= stop <= steps:
        raise InputError("stop_at", f"must be a whole number of steps from 1 to {steps} (the schedule's length), "
                                    f"got {stop_at!r}.")
    with model_on(model, device) as dev:
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
        batches = LoaderCycle(loader)
        config = {"optim": asdict(optim), "steps": steps, "model": model_signature(model),
                  "batches_per_pass": len(loader)}
        extra = {"meta": dict(meta)} if meta is not None else {}

        def save(done: int) -> None:
            save_checkpoint(checkpoint, model, optimizer, scheduler, done // len(loader), config,
                            extra={"step": done, "data": batches.position(), "rng": rng_state(dev), **extra})

        start, ckpt = 0, None
        if checkpoint is not None:
            ckpt = resume_checkpoint(Path(checkpoint), config, model, optimizer, scheduler, batches, dev,
                                     at_most=stop)
        if ckpt is None and resume_from is not None:
            ckpt = resume_checkpoint(Path(resume_from), config, model, optimizer, scheduler, batches, dev,
                                     at_most=stop, strict=True)
            if checkpoint is not None and int(ckpt["step"]) >= stop:
                save(int(ckpt["step"]))  # this stop's file exists even when there was nothing left to train
        if ckpt is not None:
            start = int(ckpt["step"])
        if start >= stop:
            return {"steps": 0.0}

        def stepped(step: int, losses: dict[str, float]) -> None:
            scheduler.step()
            if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == stop):
                save(step + 1)  # before on_step: whatever on_step does (or a kill right after), this step is kept
            if on_step is not None:
                on_step(step, losses)

        # One "epoch" over a cycled loader capped at the steps left keeps train_one_epoch's checks and means.
        return train_one_epoch(model, optimizer, batches, max_steps=stop - start, on_step=stepped,
                               max_grad_norm=optim.max_grad_norm, first_step=start)


def resume_checkpoint(path: Path, config: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                      scheduler: Any, batches: LoaderCycle, device: torch.device,
                      extra: tuple[str, ...] = (), *, at_most: int | None = None,
                      strict: bool = False) -> dict[str, Any] | None:
    """Restore a step-loop checkpoint (model, optimizer, scheduler, data position, RNG) written
    for exactly `config`; returns it (its "step" and any `extra` entries the caller restores
    itself), or None when there is none, it is unreadable, it belongs to another config or it is
    past step `at_most`. `strict`: each of those is an InputError naming `resume_from` instead."""
    path = Path(path)

    def refuse(reason: str) -> None:
        if strict:
            raise InputError("resume_from", f"{str(path)!r} {reason}; it cannot be continued.")

    if not path.exists():
        refuse("does not exist")
        return None
    try:
        ckpt = read_checkpoint(path)
    except InputError as exc:
        refuse("is not a readable checkpoint")
        log.warning("ignoring checkpoint: %s", exc)
        return None
    if ckpt.get("config") != config or not {"step", "data", "rng", *extra} <= set(ckpt):
        refuse("was written for another training configuration (optimizer, schedule length, model or data)")
        log.info("ignoring checkpoint %s: written for another config; starting fresh", path)
        return None
    if at_most is not None and int(ckpt["step"]) > at_most:
        refuse(f"is at step {ckpt['step']}, past the stop at {at_most}")
        log.info("ignoring checkpoint %s: at step %s, past the stop at %d", path, ckpt["step"], at_most)
        return None
    restore_checkpoint(ckpt, model, optimizer, scheduler)
    batches.seek(ckpt["data"])
    set_rng_state(ckpt["rng"], device)  # after seek: a generator-less loader replays on the global RNG
    log.info("resuming %s at step %d", path, ckpt["step"])
    return ckpt


def score(model: nn.Module, coco: CocoSet, max_images: int | None = None, *,
          device: torch.device | None = None) -> dict[str, float]:
    """COCO mAP@[.5:.95] and mAP@.5 (pycocotools) on `coco` (or its first max_images images).

    `device`: where to run the model (None: where it is); it comes back where it was.
    """
    loader = eval_loader(coco, max_images)
    outputs = evaluate(model, loader, device=device)
    image_ids = [o["image_id"] for o in outputs]
    detections = to_coco_detections(image_ids, outputs, coco)
    return coco_map(coco, detections, image_ids=image_ids)


def latency_ms(model: nn.Module, image_size: int, runs: int = 10, warmup: int = 3) -> float:
    """Eager batch-1 CPU latency (min of `runs`), a comparable figure between architectures.

    Always on CPU (the deployment target the tables compare), wherever the model lives.
    """
    with model_on(model, torch.device("cpu"), channels_last=True):  # moved outside inference mode (see model_on)
        return _cpu_latency_ms(model, image_size, runs, warmup)


@torch.inference_mode()
def _cpu_latency_ms(model: nn.Module, image_size: int, runs: int, warmup: int) -> float:
    model.eval()
    image = [torch.rand(3, image_size, image_size)]
    return min_latency_ms(lambda: model(image), runs, warmup)
