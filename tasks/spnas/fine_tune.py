"""Stage `fine_tune` of spnas/full: the starting detector (model.backbone_code / model.block).
With a torchvision ResNet or fasterrcnn_resnet50_fpn state_dict, its tensors are renamed into
ours first (Vega's convert_pretrained); without one it trains from scratch on the data.
Training checkpoints in the work folder, so a killed run continues where it stopped."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from data.coco import load_coco
from engine.detector_fit import fit_steps, score, train_loader
from engine.runtime import configure_torch, resolve_device
from nas_models.convert import convert_checkpoint, load_weights_file
from params.models import DetectorModel, DetectorTrainParams, FineTuneParams, Runtime
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import save_handoff
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.tables import write_table
from tasks.spnas.detectors import detector_desc, detector_for, measure, optim_from
from tasks.spnas.split import Split
from tracking import tracker


@dataclass(frozen=True, kw_only=True)
class FineTuned(StageResult):
    """The starting detector: the serial search's root, the baseline fully_train trains, and
    the source of the searches' "start" size limits (`performance`)."""

    code: str
    desc: dict[str, Any]
    model_path: str


def fine_tune_detector(data: Split, model: DetectorModel, optimizer: DetectorTrainParams, cfg: FineTuneParams,
              seed: int, runtime: Runtime, out_dir: Path, on_step=None) -> FineTuned:
    configure_torch(runtime.num_threads, seed)
    device = resolve_device(runtime.device)
    detector = detector_for(model, data.num_classes)
    converted: dict[str, Any] = {"pretrained": None}
    if model.pretrained_weights:
        conv = convert_checkpoint(load_weights_file(model.pretrained_weights, "model.pretrained_weights"),
                                  model.backbone_code, model.block, detector)
        detector.load_state_dict(conv.state_dict, strict=False)
        converted = {"pretrained": model.pretrained_weights, "pretrained_format": conv.source_format,
                     "converted_tensors": len(conv.state_dict), "dropped_tensors": len(conv.dropped)}
    train = load_coco(Path(data.train_images), Path(data.search_train_json))
    loader = train_loader(train, optimizer.batch_size, seed)
    steps = cfg.epochs * len(loader)
    losses = fit_steps(detector, loader, steps, optim_from(optimizer, "cosine"), on_step, device=device,
                       checkpoint=out_dir / "checkpoint.pth")
    metrics = score(detector, load_coco(Path(data.train_images), Path(data.search_val_json)),
                    optimizer.eval_max_images, device=device)
    performance = {**metrics, **measure(detector, model.image_size), "train_steps": steps,
                   "final_loss": losses.get("loss"), **converted}
    desc = detector_desc(detector)
    files = save_handoff(out_dir, "0", desc, detector, performance)
    files += [str(p) for p in write_table([{"id": 0, "code": model.backbone_code, **performance}], out_dir / "output.csv")]
    return FineTuned(code=model.backbone_code, desc=desc, model_path=files[1], performance=performance,
                     files=tuple(files))


@task(name="fine_tune", persist_result=True, cache_policy=STAGE_CACHE)
def fine_tune_task(data: Split, model: DetectorModel, optimizer: DetectorTrainParams, fine_tune: FineTuneParams,
                   seed: int, ctx: StageContext) -> FineTuned:
    logger = get_run_logger()
    with tracker.child_run(ctx.parent_run_id, "fine_tune", {"backbone_code": model.backbone_code, "block": model.block,
                                                        "epochs": fine_tune.epochs,
                                                        "pretrained_weights": model.pretrained_weights}) as run_id:
        progress = tracker.Progress("fine-tune-progress", f"fine_tune {model.backbone_code}")
        history: list[dict[str, float]] = []
        total = max(1, fine_tune.epochs * -(-data.counts["train"] // optimizer.batch_size))

        def on_step(i: int, losses: dict[str, float]) -> None:
            if i % 20 == 0:
                tracker.log_metrics(run_id, {f"train_{k}": v for k, v in losses.items()}, step=i)
                history.append({"epoch": i, **losses})
                progress.update((i + 1) / total, f"step {i + 1}/{total}  loss {losses['loss']:.3f}")
                logger.info("fine_tune step %d/%d loss %.4f", i + 1, total, losses["loss"])

        out = fine_tune_detector(data, model, optimizer, fine_tune, seed, ctx.runtime, ctx.work, on_step)
        progress.update(1.0, "done")
        tracker.log_metrics(run_id, out.performance)
        tracker.log_files(run_id, out.files, "fine_tune")
        tracker.log_curve(run_id, history, ["loss", "loss_classifier", "loss_box_reg"], "fine_tune/loss.png",
                          "fine_tune (x = step)")
    perf = out.performance
    logger.info("fine_tune %s: search-val mAP %.4f  mAP@.5 %.4f  params %.2fM  MACs %.1fM", model.backbone_code,
                perf["mAP"], perf["mAP50"], perf["params"] / 1e6, perf["macs"] / 1e6)
    return out
