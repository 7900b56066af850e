"""Stage `fine_tune` of spnas/full: the starting detector (backbone_code/block). With a
torchvision ResNet or fasterrcnn_resnet50_fpn state_dict, its tensors are renamed into ours
first (Vega's convert_pretrained); without one it trains from scratch on the data."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from data.coco import load_coco
from engine.detector_fit import fit_steps, score, train_loader
from engine.runtime import configure_torch
from nas_models.convert import convert_checkpoint, load_weights_file
from nas_models.detector import build_detector
from tasks.common import STAGE_CACHE, stage_dir, write_csv
from tasks.train_candidate import detector_desc, measure, optim_from, save_model
from tracking import tracker


def detector_for(p: dict[str, Any], data: dict[str, Any], code: str, neck_code: list[int] | None = None):
    return build_detector(code, p["block"], neck_code=neck_code, num_classes=data["num_classes"],
                          fpn_channels=p["fpn_channels"], image_size=p["image_size"])


def fine_tune(data: dict[str, Any], p: dict[str, Any], out_dir: Path, on_step=None) -> dict[str, Any]:
    configure_torch(p.get("num_threads"), p["seed"])
    model = detector_for(p, data, p["backbone_code"])
    converted: dict[str, Any] = {"pretrained": None}
    if p.get("pretrained_weights"):
        conv = convert_checkpoint(load_weights_file(p["pretrained_weights"]), p["backbone_code"], p["block"], model)
        model.load_state_dict(conv.state_dict, strict=False)
        converted = {"pretrained": p["pretrained_weights"], "pretrained_format": conv.source_format,
                     "converted_tensors": len(conv.state_dict), "dropped_tensors": len(conv.dropped)}
    train = load_coco(Path(data["train_images"]), Path(data["search_train_json"]))
    loader = train_loader(train, p["optimizer"]["batch_size"], p["seed"])
    steps = p["fine_tune_epochs"] * len(loader)
    losses = fit_steps(model, loader, steps, optim_from(p, "cosine"), on_step)
    metrics = score(model, load_coco(Path(data["train_images"]), Path(data["search_val_json"])), p.get("eval_max_images"))
    performance = {**metrics, **measure(model, p["image_size"]), "train_steps": steps,
                   "final_loss": losses.get("loss"), **converted}
    desc = detector_desc(model)
    files = save_model(out_dir, "0", desc, model, performance)
    files.append(str(write_csv(out_dir / "output.csv", [{"id": 0, "code": p["backbone_code"], **performance}])))
    return {"id": 0, "code": p["backbone_code"], "desc": desc, "model_path": files[1], "performance": performance,
            "files": files}


@task(name="fine_tune", persist_result=True, cache_policy=STAGE_CACHE)
def fine_tune_task(data: dict[str, Any], p: dict[str, Any], run_dir: str, parent_run_id: str) -> dict[str, Any]:
    logger = get_run_logger()
    with tracker.child_run(parent_run_id, "fine_tune", {"backbone_code": p["backbone_code"], "block": p["block"],
                                                        "epochs": p["fine_tune_epochs"],
                                                        "pretrained_weights": p.get("pretrained_weights")}) as run_id:
        progress = tracker.Progress("fine-tune-progress", f"fine_tune {p['backbone_code']}")
        history: list[dict[str, float]] = []
        total = max(1, p["fine_tune_epochs"] * -(-data["counts"]["train"] // p["optimizer"]["batch_size"]))

        def on_step(i: int, losses: dict[str, float]) -> None:
            if i % 20 == 0:
                tracker.log_metrics(run_id, {f"train_{k}": v for k, v in losses.items()}, step=i)
                history.append({"epoch": i, **losses})
                progress.update((i + 1) / total, f"step {i + 1}/{total}  loss {losses['loss']:.3f}")
                logger.info("fine_tune step %d/%d loss %.4f", i + 1, total, losses["loss"])

        out = fine_tune(data, p, stage_dir(run_dir, "fine_tune"), on_step)
        progress.update(1.0, "done")
        tracker.log_metrics(run_id, out["performance"])
        tracker.log_files(run_id, out["files"], "fine_tune")
        tracker.log_curve(run_id, history, ["loss", "loss_classifier", "loss_box_reg"], "fine_tune/loss.png",
                          "fine_tune (x = step)")
    perf = out["performance"]
    logger.info("fine_tune %s: search-val mAP %.4f  mAP@.5 %.4f", p["backbone_code"], perf["mAP"], perf["mAP50"])
    return out
