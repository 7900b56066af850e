"""Stage `supernet` of spos/full: single-path one-shot training of the ShuffleNetV2 supernet.

With `supernet.warm_start` (the default) the uniform phase starts from a trained all-3x3 path
copied into every kernel choice and fitted into the xception choice (engine/supernet.py); null
is the paper's recipe. Each uniform-phase step trains one path: sampled uniformly, or — with `supernet.macs_range` — uniformly over
MACs bins and then uniformly inside the bin (strategies/path_sampler.py says how). The per-op
MACs table (macs_table.json) is built here, beside the checkpoint, and every later stage reads
it. The run records how the sampled paths fell into the MACs bins (sampled_bins.csv), so
"is the sampling really flat?" is answered in every run, not assumed."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from prefect import get_run_logger, task

from engine.runtime import configure_torch, resolve_device
from engine.supernet import SupernetOptim, WarmStart, train_supernet
from latency.macs_table import MacsTable
from nas_models.spos_shufflenet import build_supernet
from params.models import Runtime, SposModel, SupernetTrain
from strategies.path_sampler import FlopsBinSampler, uniform
from tasks.cifar.data import CifarSplit
from tasks.cifar.training import loaders
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import save_state_dict, write_json
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.tables import write_table
from tasks.spos.shared import load_supernet, macs_table
from tracking import tracker

LOG_EVERY = 20  # steps between loss points in MLflow


@dataclass(frozen=True, kw_only=True)
class TrainedSupernet(StageResult):
    """The trained supernet every later stage scores or builds paths from, and the choice space's
    MACs table beside it; `files`: supernet.pth, macs_table.json, sampled_bins.csv (+ .parquet),
    desc_supernet.json."""

    model_path: str
    preset: str
    num_classes: int
    macs_table: str                     # the per-op MACs/params table's file
    sampling: str                       # "uniform" or "macs bins"
    macs_range: tuple[int, int]         # the MACs range the bins cover
    bins: tuple[dict[str, int], ...]    # paths sampled per MACs bin (this call's steps)
    loss: float                         # mean training loss of the last 50 uniform-phase steps
    loss_first: float                   # ... and of the first 50 (NaN for a call that resumed past them)
    warm_start: dict[str, float] | None = None  # reference_loss, align_error_first/_last; None: off or resumed

    def table(self) -> MacsTable:
        """The choice space's MACs/params table (built with this supernet's class count)."""
        return macs_table(self.preset, self.num_classes, Path(self.macs_table).parent)

    def load(self) -> torch.nn.Module:
        """The supernet with the trained weights, in eval mode (weights read once per process)."""
        return load_supernet(self.preset, self.num_classes, self.model_path)


def train(data: CifarSplit, model: SposModel, cfg: SupernetTrain, seed: int, runtime: Runtime, out_dir: Path,
          on_step=None, on_warm=None) -> TrainedSupernet:
    configure_torch(runtime.num_threads, seed)
    num_classes = data.num_classes
    table = macs_table(model.preset, num_classes, out_dir)
    low, high = cfg.macs_range or (table.min_macs(), table.max_macs())
    if cfg.macs_range is None:
        sampler = None
        sample = lambda rng: uniform(rng, table.n_blocks, len(table.per_block[0]))  # noqa: E731
    else:
        sampler = FlopsBinSampler(table.per_block, table.fixed_macs, low, high, cfg.bins, field="supernet.macs_range")
        sample = sampler.sample
    edges = [low + (high - low) * i / cfg.bins for i in range(cfg.bins + 1)]
    hist: Counter[int] = Counter()

    def step(i: int, loss: float, path: list[int]) -> None:
        macs = table.macs(path)
        hist[min(cfg.bins - 1, max(0, int((macs - low) / (high - low) * cfg.bins)))] += 1
        if on_step is not None:
            on_step(i, loss, macs)

    supernet = build_supernet(model.preset, num_classes=num_classes)
    train_loader, _, _ = loaders(data, cfg.batch_size, seed, model.input_convention)
    optim = SupernetOptim(steps=cfg.steps, learning_rate=cfg.learning_rate, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    warm = WarmStart(**cfg.warm_start.model_dump()) if cfg.warm_start is not None else None
    stats = train_supernet(supernet, train_loader, optim, sample, seed, step, device=resolve_device(runtime.device),
                           checkpoint=out_dir / "checkpoint.pth", warm_start=warm, on_warm=on_warm)
    warm_figures = {k: stats[k] for k in ("reference_loss", "align_error_first", "align_error_last") if k in stats}
    weights = save_state_dict(supernet, out_dir / "supernet.pth")
    # Bins of the paths sampled in this call (a resumed call counts only the steps it ran).
    bins = [{"bin": b, "macs_from": int(edges[b]), "macs_to": int(edges[b + 1]), "paths": hist.get(b, 0)}
            for b in range(cfg.bins)]
    files = [str(weights), str(out_dir / "macs_table.json")]
    files += [str(p) for p in write_table(bins, out_dir / "sampled_bins.csv")]
    desc = {"type": "SposSupernet", "preset": model.preset, "num_classes": num_classes}
    files.append(str(write_json(out_dir / "desc_supernet.json", desc)))
    return TrainedSupernet(model_path=str(weights), preset=model.preset, num_classes=num_classes,
                           macs_table=str(out_dir / "macs_table.json"), sampling="macs bins" if sampler else "uniform",
                           macs_range=(int(low), int(high)), bins=tuple(bins), loss=stats["loss"],
                           loss_first=stats["loss_first"], warm_start=warm_figures or None, files=tuple(files))


@task(name="supernet", persist_result=True, cache_policy=STAGE_CACHE)
def train_supernet_task(data: CifarSplit, model: SposModel, supernet: SupernetTrain, seed: int,
                        ctx: StageContext) -> TrainedSupernet:
    logger = get_run_logger()
    with tracker.child_run(ctx.parent_run_id, "supernet", {**model.model_dump(), **supernet.model_dump()}) as run_id:
        progress = tracker.Progress("supernet-progress", "supernet training: steps")
        warm = supernet.warm_start
        offsets = {"reference": 0, "align": warm.reference_steps} if warm else {}
        warm_total = warm.reference_steps + warm.align_steps if warm else 0
        total = warm_total + supernet.steps  # every step of the stage, for the progress bar
        window: list[float] = []

        def on_step(i: int, loss: float, macs: int) -> None:
            window.append(loss)
            if (i + 1) % LOG_EVERY == 0 or i + 1 == supernet.steps:
                mean = sum(window) / len(window)
                window.clear()
                tracker.log_metrics(run_id, {"train_loss": mean, "path_macs": macs}, step=i + 1)
                progress.update((warm_total + i + 1) / total, f"uniform step {i + 1}/{supernet.steps}, loss {mean:.3f}")
                if (i + 1) % (LOG_EVERY * 10) == 0:
                    logger.info("supernet step %d/%d  loss %.4f", i + 1, supernet.steps, mean)

        def on_warm(phase: str, i: int, value: float) -> None:
            assert warm is not None
            steps = warm.reference_steps if phase == "reference" else warm.align_steps
            metric = "reference_loss" if phase == "reference" else "align_error"
            if (i + 1) % LOG_EVERY == 0 or i + 1 == steps:
                tracker.log_metrics(run_id, {f"warm_{metric}": value}, step=i + 1)
                progress.update((offsets[phase] + i + 1) / total,
                                f"warm start: {phase} step {i + 1}/{steps}, {metric} {value:.3f}")
            if i + 1 == steps:
                logger.info("supernet warm start: %s phase done (%d steps, last %s %.4f)", phase, steps, metric, value)

        out = train(data, model, supernet, seed, ctx.runtime, ctx.work, on_step, on_warm)
        tracker.log_files(run_id, out.files, "supernet")
        # The end of training (last 50 steps), not the whole run's mean; the curve is train_loss.
        figures = {"final_loss": out.loss, "first_loss": out.loss_first, **(out.warm_start or {})}
        tracker.log_metrics(run_id, {k: v for k, v in figures.items() if v == v})  # NaN: resumed past it
    tracker.publish_table("supernet-sampled-bins", list(out.bins),
                          f"supernet paths per MACs bin ({out.sampling} sampling; flat = every bin equally)")
    logger.info("supernet (%s preset, %s): %s sampling over MACs %s; paths per bin %s; loss %.3f over the "
                "first 50 uniform steps, %.3f over the last 50", model.preset,
                "warm-started" if supernet.warm_start else "paper recipe", out.sampling, list(out.macs_range),
                [b["paths"] for b in out.bins], out.loss_first, out.loss)
    return out
