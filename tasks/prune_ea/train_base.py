"""Stage `train_base` of prune-ea/full: the full (unpruned) CIFAR ResNet-20/32/56 that every
pruning candidate inherits its weights from. Checkpoints in the work folder, so a killed
training continues from its last finished epoch."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task

from engine.runtime import configure_torch, resolve_device
from nas_models.prune_resnet import build_prune_resnet
from params.models import ClassifierTrain, Runtime
from tasks.cifar.data import CifarSplit
from tasks.cifar.training import TrainedClassifier, measure, train_and_score
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import save_handoff
from tasks.orchestration.tables import write_table
from tracking import tracker


BASELINE = "baseline"  # the base model's name in the comparison table


@dataclass(frozen=True, kw_only=True)
class TrainedBase(TrainedClassifier):
    """The full network every pruning candidate inherits its weights from, and the comparison's
    reference; `files`: desc_0.json, model_0.pth, performance_0.json, output.csv (+ .parquet)."""

    history: tuple[Mapping[str, float], ...]   # per-epoch train loss and val accuracy


def train_base(data: CifarSplit, depth: int, cfg: ClassifierTrain, seed: int, runtime: Runtime, out_dir: Path,
               on_epoch=None) -> TrainedBase:
    configure_torch(runtime.num_threads, seed)
    model = build_prune_resnet(depth, num_classes=data.num_classes)
    scores = train_and_score(model, data, cfg, seed, resolve_device(runtime.device), out_dir / "checkpoint.pth",
                             on_epoch)
    performance = {"acc": scores["test_acc"], "val_acc": scores["val_acc"], **measure(model), "epochs": cfg.epochs}
    desc = {"type": "PruneResNet", **model.arch}
    files = save_handoff(out_dir, "0", desc, model, performance)
    files += [str(p) for p in write_table([{"id": 0, "depth": depth, **performance}], out_dir / "output.csv")]
    return TrainedBase(name=BASELINE, desc=desc, model_path=files[1], performance=performance,
                       history=tuple(scores["history"]), files=tuple(files))


@task(name="train_base", persist_result=True, cache_policy=STAGE_CACHE)
def train_base_task(data: CifarSplit, depth: int, base: ClassifierTrain, seed: int, ctx: StageContext) -> TrainedBase:
    logger = get_run_logger()
    with tracker.child_run(ctx.parent_run_id, "train_base", {"depth": depth, **base.model_dump()}) as run_id:
        progress = tracker.Progress("train-base-progress", f"ResNet-{depth} base training")

        def on_epoch(m: dict[str, float]) -> None:
            tracker.log_metrics(run_id, m, step=int(m["epoch"]))
            progress.update(m["epoch"] / base.epochs, f"epoch {int(m['epoch'])}/{base.epochs}")
            logger.info("base epoch %d/%d  loss %.4f  val acc %.4f", m["epoch"], base.epochs, m["train_loss"],
                        m["val_top1"])

        out = train_base(data, depth, base, seed, ctx.runtime, ctx.work, on_epoch)
        tracker.log_metrics(run_id, out.performance)
        tracker.log_files(run_id, out.files, "train_base")
        tracker.log_curve(run_id, list(out.history), ["train_loss", "val_top1"], "train_base/curve.png",
                          f"ResNet-{depth} base")
    perf = out.performance
    logger.info("base ResNet-%d: test acc %.4f, %.2fM MACs, %.3fM params", depth, perf["acc"], perf["macs"] / 1e6,
                perf["params"] / 1e6)
    return out
