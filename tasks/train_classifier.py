"""Stage `train` of lcnet/full: train PP-LCNet on the split's train list, validate on val.

Writes Vega's handoff layout into `<run>/train/`: desc_0.json, model_0.pth,
performance_0.json, output.csv, plus checkpoint.pth so a killed training resumes.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from prefect import get_run_logger, task
from torch.utils.data import DataLoader

from data.imagefolder import ListDataset
from data.transforms import Preprocess, train_augment
from engine.classification import TrainConfig, fit
from engine.runtime import configure_torch
from latency.flops import count_macs_params
from nas_models.registry import build_from_desc
from tasks.common import STAGE_CACHE, stage_dir, write_csv, write_json
from tracking import tracker


def preprocess_for(params: dict[str, Any]) -> Preprocess:
    """The evaluation/prediction preprocessing; the exported model.yml carries the same values."""
    size = params["input_size"]
    return Preprocess(input_size=size, resize_short=params.get("resize_short") or size,
                      mean=tuple(params["mean"]), std=tuple(params["std"]))


def loaders(split: dict[str, Any], params: dict[str, Any]) -> tuple[DataLoader, DataLoader, DataLoader | None]:
    pre = preprocess_for(params)
    data_dir, labels = Path(split["dataset_dir"]), Path(split["labels_file"])
    train_ds = ListDataset(data_dir, Path(split["train_list"]), labels,
                           train_augment(pre.input_size, pre.resize_short, pre.mean, pre.std))
    generator = torch.Generator().manual_seed(params["seed"])
    train = DataLoader(train_ds, batch_size=params["batch_size"], shuffle=True, drop_last=len(train_ds) > params["batch_size"],
                       generator=generator)
    val = DataLoader(ListDataset(data_dir, Path(split["val_list"]), labels, pre), batch_size=256)
    test = None
    if split.get("test_list"):
        test = DataLoader(ListDataset(data_dir, Path(split["test_list"]), labels, pre), batch_size=256)
    return train, val, test


def train_classifier(split: dict[str, Any], params: dict[str, Any], out_dir: Path,
                     on_epoch: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
    configure_torch(params.get("num_threads"), params["seed"])
    train_loader, val_loader, _ = loaders(split, params)
    desc = {"type": "PPLCNet", "scale": params["scale"], "num_classes": len(split["labels"]),
            "dropout": params["dropout"], "input_size": params["input_size"]}
    model = build_from_desc(desc)
    inherited = None
    if params.get("pretrained_weights"):
        from nas_models.inherit import inherit_weights

        state = torch.load(params["pretrained_weights"], map_location="cpu", weights_only=True)
        inherited = inherit_weights(model, state.get("model", state) if isinstance(state, dict) else state)
    macs, n_params = count_macs_params(model, (1, 3, params["input_size"], params["input_size"]))
    cfg = TrainConfig(epochs=params["epochs"], learning_rate=params["learning_rate"], momentum=params["momentum"],
                      weight_decay=params["weight_decay"], warmup_epochs=params["warmup_epochs"])
    started = time.perf_counter()
    history = fit(model, train_loader, val_loader, cfg, checkpoint_path=out_dir / "checkpoint.pth",
                  topk=params["topk"], on_epoch=on_epoch)
    seconds = time.perf_counter() - started
    last = history[-1]
    performance = {"val_top1": last["val_top1"], f"val_top{params['topk']}": last[f"val_top{params['topk']}"],
                   "macs": macs, "params": n_params, "train_seconds": round(seconds, 2), "epochs": len(history)}
    model_path = out_dir / "model_0.pth"
    tmp = model_path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(model_path)
    files = [write_json(out_dir / "desc_0.json", desc), model_path,
             write_json(out_dir / "performance_0.json", performance),
             write_csv(out_dir / "output.csv", [{"worker_id": 0, "desc": "desc_0.json", **performance}])]
    return {"desc": desc, "model_path": str(model_path), "history": history, "performance": performance,
            "inherited_tensors": None if inherited is None else inherited.matched,
            "files": [str(p) for p in files]}


@task(name="train", persist_result=True, cache_policy=STAGE_CACHE)
def train_classifier_task(split: dict[str, Any], params: dict[str, Any], run_dir: str,
                          parent_run_id: str) -> dict[str, Any]:
    logger = get_run_logger()
    epochs = params["epochs"]
    with tracker.child_run(parent_run_id, "train", params) as run_id:
        progress = tracker.Progress("train-progress", f"PP-LCNet x{params['scale']} training")

        def on_epoch(m: dict[str, float]) -> None:
            tracker.log_metrics(run_id, m, step=int(m["epoch"]))
            progress.update(m["epoch"] / epochs, f"epoch {int(m['epoch'])}/{epochs}: val top-1 {m['val_top1']:.4f}")
            logger.info("epoch %d/%d  loss %.4f  train acc %.4f  val top-1 %.4f  lr %.4f", m["epoch"], epochs,
                        m["train_loss"], m["train_acc"], m["val_top1"], m["lr"])

        out = train_classifier(split, params, stage_dir(run_dir, "train"), on_epoch)
        tracker.log_metrics(run_id, out["performance"])
        tracker.log_files(run_id, out["files"], "train")
        tracker.log_curve(run_id, out["history"], ["train_loss", "train_acc", "val_top1"], "train/curve.png",
                          f"PP-LCNet x{params['scale']}")
    return out
