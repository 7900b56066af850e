"""Stage `train` of lcnet/full: train PP-LCNet on the split's train list, validate on val.

Writes Vega's handoff layout: desc_0.json, model_0.pth, performance_0.json, output.csv
(+ .parquet); its checkpoint.pth stays in the work folder, so a killed training continues from
its last finished epoch in the next run with the same parameters.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from engine.classification import TrainConfig, fit
from engine.runtime import configure_torch, resolve_device
from latency.flops import count_macs_params
from nas_models.convert import load_weights_file
from nas_models.inherit import inherit_weights, require_loaded_share
from nas_models.registry import build_from_desc
from params.models import LcnetModel, LcnetTrain, Runtime
from tasks.lcnet.classifiers import loaders
from tasks.lcnet.split import Split
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import save_handoff
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.tables import write_table
from tracking import tracker


@dataclass(frozen=True, kw_only=True)
class Trained(StageResult):
    """The trained PP-LCNet: its desc and weights (evaluate and export rebuild it from them);
    `performance`: val top-1/top-k, MACs, params, seconds, epochs."""

    desc: Mapping[str, Any]
    model_path: str
    history: tuple[Mapping[str, float], ...]  # one row of figures per epoch
    inherited_tensors: int | None             # tensors loaded from pretrained_weights, None without

    @property
    def macs(self) -> int:
        return (self.performance or {})["macs"]

    @property
    def params(self) -> int:
        return (self.performance or {})["params"]


def train_classifier(split: Split, model: LcnetModel, cfg: LcnetTrain, seed: int, runtime: Runtime,
                     out_dir: Path, on_epoch: Callable[[dict[str, float]], None] | None = None) -> Trained:
    configure_torch(runtime.num_threads, seed)
    train_loader, val_loader, _ = loaders(split, model, cfg.batch_size, seed)
    desc = {"type": "PPLCNet", "scale": model.scale, "num_classes": len(split.labels),
            "dropout": model.dropout, "input_size": model.input_size}
    net = build_from_desc(desc)
    inherited = None
    if model.pretrained_weights:
        inherited = inherit_weights(net, load_weights_file(model.pretrained_weights, "model.pretrained_weights"))
        require_loaded_share(inherited, None, "model.pretrained_weights")
    macs, n_params = count_macs_params(net, (1, 3, model.input_size, model.input_size))
    train_cfg = TrainConfig(epochs=cfg.epochs, learning_rate=cfg.learning_rate, momentum=cfg.momentum,
                            weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs)
    started = time.perf_counter()
    history = fit(net, train_loader, val_loader, train_cfg, checkpoint_path=out_dir / "checkpoint.pth",
                  topk=cfg.topk, on_epoch=on_epoch, device=resolve_device(runtime.device))
    seconds = time.perf_counter() - started
    last = history[-1]
    performance = {"val_top1": last["val_top1"], f"val_top{cfg.topk}": last[f"val_top{cfg.topk}"],
                   "macs": macs, "params": n_params, "train_seconds": round(seconds, 2), "epochs": len(history)}
    files = save_handoff(out_dir, "0", desc, net, performance)
    files += [str(p) for p in write_table([{"worker_id": 0, "desc": "desc_0.json", **performance}], out_dir / "output.csv")]
    return Trained(desc=desc, model_path=files[1], history=tuple(history), performance=performance,
                   inherited_tensors=None if inherited is None else inherited.matched, files=tuple(files))


@task(name="train", persist_result=True, cache_policy=STAGE_CACHE)
def train_classifier_task(split: Split, model: LcnetModel, train: LcnetTrain, seed: int, ctx: StageContext) -> Trained:
    logger = get_run_logger()
    epochs = train.epochs
    with tracker.child_run(ctx.parent_run_id, "train", {**model.model_dump(), **train.model_dump()}) as run_id:
        progress = tracker.Progress("train-progress", f"PP-LCNet x{model.scale} training")

        def on_epoch(m: dict[str, float]) -> None:
            tracker.log_metrics(run_id, m, step=int(m["epoch"]))
            progress.update(m["epoch"] / epochs, f"epoch {int(m['epoch'])}/{epochs}: val top-1 {m['val_top1']:.4f}")
            logger.info("epoch %d/%d  loss %.4f  train acc %.4f  val top-1 %.4f  lr %.4f", m["epoch"], epochs,
                        m["train_loss"], m["train_acc"], m["val_top1"], m["lr"])

        out = train_classifier(split, model, train, seed, ctx.runtime, ctx.work, on_epoch)
        tracker.log_metrics(run_id, out.performance)
        tracker.log_files(run_id, out.files, "train")
        tracker.log_curve(run_id, list(out.history), ["train_loss", "train_acc", "val_top1"], "train/curve.png",
                          f"PP-LCNet x{model.scale}")
    return out
