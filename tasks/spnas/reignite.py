"""Stage `reignite` of spnas/full: the serial search's chosen backbone is trained as a
classifier (backbone + pooled linear head) on the classification split, its weights mapped
back into the detector, then a few detector steps re-fit the heads. At most 2 rounds (seed).
Its classification data is named in the log and in MLflow (see tasks/spnas/data.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prefect import get_run_logger, task
from torch.utils.data import DataLoader

from core.seeds import derive_seed
from data.coco import load_coco
from data.imagefolder import ListDataset
from data.transforms import Preprocess, train_augment
from engine.classification import TrainConfig, evaluate, fit
from engine.detector_fit import fit_steps, score, train_loader
from engine.runtime import configure_torch, resolve_device
from nas_models.detector import BackboneClassifier, serial_body
from params.models import IMAGENET_MEAN, IMAGENET_STD, DetectorModel, DetectorTrainParams, ReigniteParams, Runtime
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import save_handoff
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.tables import write_table
from tasks.spnas.detectors import load_detector, measure, optim_from
from tasks.spnas.split import ClassificationSplit, Split
from tracking import tracker


@dataclass(frozen=True, kw_only=True)
class Reignited(StageResult):
    """The serial winner after reignition: the net the parallel search adds sub-networks to."""

    code: str
    desc: dict[str, Any]
    model_path: str
    rounds: tuple[dict[str, Any], ...]   # one row per round (output.csv)


def classification_loaders(cls_split: ClassificationSplit, cfg: ReigniteParams, seed: int) -> tuple[DataLoader, DataLoader]:
    size = cfg.input_size
    pre = Preprocess(input_size=size, resize_short=size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    data_dir, labels = Path(cls_split.dataset_dir), Path(cls_split.labels_file)
    train = ListDataset(data_dir, Path(cls_split.train_list), labels, train_augment(size, size, pre.mean, pre.std))
    val = ListDataset(data_dir, Path(cls_split.val_list), labels, pre)
    return (DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)),
            DataLoader(val, batch_size=256))


def reignite_backbone(data: Split, chosen: dict[str, Any], model: DetectorModel, optimizer: DetectorTrainParams,
             cfg: ReigniteParams, seed: int, runtime: Runtime, out_dir: Path, on_epoch=None) -> Reignited:
    """`chosen`: the serial search's winner (its candidate result: code, desc, model_path)."""
    configure_torch(runtime.num_threads, seed)
    device = resolve_device(runtime.device)
    detector = load_detector(chosen["desc"], chosen["model_path"])
    train = load_coco(Path(data.train_images), Path(data.search_train_json))
    search_val = load_coco(Path(data.train_images), Path(data.search_val_json))
    before = score(detector, search_val, optimizer.eval_max_images, device=device)
    train_cls, val_cls = classification_loaders(data.classification, cfg, seed)
    rounds = []
    for r in range(cfg.rounds):
        # The classifier wraps the detector's own backbone module: training it updates the
        # detector's backbone in place, which is the "map the weights back" step.
        classifier = BackboneClassifier(serial_body(detector), len(data.classification.labels))
        train_cfg = TrainConfig(epochs=cfg.epochs, learning_rate=cfg.learning_rate, weight_decay=1e-4, warmup_epochs=0)
        history = fit(classifier, train_cls, val_cls, train_cfg, on_epoch=on_epoch, device=device)
        fit_steps(detector, train_loader(train, optimizer.batch_size, derive_seed(seed, "spnas.reignite", r)),
                  cfg.detector_steps, optim_from(optimizer, "cosine"), device=device)
        after = score(detector, search_val, optimizer.eval_max_images, device=device)
        rounds.append({"round": r + 1, "cls_top1": evaluate(classifier, val_cls, device=device)["top1"],
                       "mAP": after["mAP"], "mAP50": after["mAP50"], "epochs": len(history)})
    last = rounds[-1] if rounds else {"mAP": before["mAP"], "mAP50": before["mAP50"], "cls_top1": None}
    performance = {"mAP_before": before["mAP"], "mAP50_before": before["mAP50"], "mAP": last["mAP"],
                   "mAP50": last["mAP50"], "cls_top1": last["cls_top1"], "rounds": len(rounds),
                   **measure(detector, model.image_size)}
    files = save_handoff(out_dir, "0", chosen["desc"], detector, performance)
    files += [str(p) for p in write_table([{"id": 0, "code": chosen["code"], **r} for r in rounds]
                                          or [{"id": 0, "code": chosen["code"], "rounds": 0}], out_dir / "output.csv")]
    return Reignited(code=chosen["code"], desc=chosen["desc"], model_path=files[1], rounds=tuple(rounds),
                     performance=performance, files=tuple(files))


@task(name="reignite", persist_result=True, cache_policy=STAGE_CACHE)
def reignite_task(data: Split, chosen: dict[str, Any], model: DetectorModel, optimizer: DetectorTrainParams,
                  reignite: ReigniteParams, seed: int, ctx: StageContext) -> Reignited:
    logger = get_run_logger()
    source = data.classification.source
    logger.info("reignite %s on %s", chosen["code"], source)
    with tracker.child_run(ctx.parent_run_id, "reignite", {**reignite.model_dump(), "code": chosen["code"],
                                                       "classification_data": source}) as run_id:
        step = {"i": 0}

        def on_epoch(m: dict[str, float]) -> None:
            step["i"] += 1
            tracker.log_metrics(run_id, {f"cls_{k}": v for k, v in m.items()}, step=step["i"])
            logger.info("reignite epoch %d: classifier loss %.4f val top-1 %.4f", m["epoch"], m["train_loss"], m["val_top1"])

        out = reignite_backbone(data, chosen, model, optimizer, reignite, seed, ctx.runtime, ctx.work, on_epoch)
        tracker.log_metrics(run_id, {k: v for k, v in out.performance.items() if v is not None})
        tracker.log_files(run_id, out.files, "reignite")
    perf = out.performance
    logger.info("reignite %s: search-val mAP %.4f -> %.4f", chosen["code"], perf["mAP_before"], perf["mAP"])
    return out
