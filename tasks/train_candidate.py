"""One SP-NAS candidate as one task: build it from its desc, inherit every parent tensor whose
name and shape match, train a small step budget, score mAP on the search-val images, save
desc_<id>.json / model_<id>.pth / performance_<id>.json. Serial and parallel search map it."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from prefect import get_run_logger, task
from prefect.runtime import task_run

from data.coco import load_coco
from engine.detector_fit import DetectorOptim, fit_steps, score, train_loader
from engine.runtime import configure_torch
from latency.flops import count_macs_params
from nas_models.inherit import inherit_weights
from nas_models.registry import build_from_desc
from tasks.common import STAGE_CACHE, stage_dir, write_json
from tracking import tracker


def detector_desc(model: torch.nn.Module) -> dict[str, Any]:
    return {"type": "FasterRCNN", **model.arch}


def load_detector(desc: dict[str, Any], model_path: str | None = None) -> torch.nn.Module:
    model = build_from_desc(desc)
    if model_path:
        model.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
    return model


def optim_from(p: dict[str, Any], schedule: str = "constant", lr_scale: float = 1.0) -> DetectorOptim:
    o = p["optimizer"]
    return DetectorOptim(learning_rate=o["learning_rate"] * lr_scale, momentum=o["momentum"],
                         weight_decay=o["weight_decay"], batch_size=o["batch_size"], schedule=schedule)


def measure(model: torch.nn.Module, image_size: int) -> dict[str, int]:
    macs, params = count_macs_params(model, [torch.rand(3, image_size, image_size)])
    return {"macs": macs, "params": params}


def save_model(out_dir: Path, tag: str, desc: dict[str, Any], model: torch.nn.Module,
               performance: dict[str, Any]) -> list[str]:
    model_path = out_dir / f"model_{tag}.pth"
    tmp = model_path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(model_path)
    return [str(write_json(out_dir / f"desc_{tag}.json", desc)), str(model_path),
            str(write_json(out_dir / f"performance_{tag}.json", performance))]


def train_candidate(candidate: dict[str, Any], data: dict[str, Any], p: dict[str, Any], steps: int,
                    out_dir: Path, on_step=None) -> dict[str, Any]:
    """candidate: {"id", "desc", "parent_model" (path or None), "freeze" (bool), ...extra columns}."""
    train = load_coco(Path(data["train_images"]), Path(data["search_train_json"]))
    search_val = load_coco(Path(data["train_images"]), Path(data["search_val_json"]))
    started = time.perf_counter()
    # A mutated net can diverge at the search learning rate: retry once at half of it,
    # from the same inherited weights, before the search is told the candidate failed.
    for lr_scale in (1.0, 0.5):
        configure_torch(p.get("num_threads"), p["seed"] + int(candidate["id"]))
        model = build_from_desc(candidate["desc"])
        inherited: dict[str, Any] = {"inherited_ratio": 0.0}
        if candidate.get("parent_model"):
            parent = torch.load(candidate["parent_model"], map_location="cpu", weights_only=True)
            report = inherit_weights(model, parent, freeze_inherited_blocks=bool(candidate.get("freeze")))
            inherited = {"inherited_ratio": report.ratio, "inherited_tensors": report.matched}
        try:
            losses = fit_steps(model, train_loader(train, p["optimizer"]["batch_size"], p["seed"] + int(candidate["id"])),
                               steps, optim_from(p, lr_scale=lr_scale), on_step)
            break
        except FloatingPointError:
            if lr_scale < 1.0:
                raise
    train_seconds = time.perf_counter() - started
    metrics = score(model, search_val, p.get("eval_max_images"))
    for param in model.parameters():  # frozen blocks are frozen for the search only
        param.requires_grad_(True)
    performance = {**metrics, **measure(model, p["image_size"]), **inherited, "train_steps": steps, "lr_scale": lr_scale,
                   "train_seconds": round(train_seconds, 2), "final_loss": losses.get("loss")}
    files = save_model(out_dir, str(candidate["id"]), candidate["desc"], model, performance)
    return {**{k: v for k, v in candidate.items() if k != "desc"}, "desc": candidate["desc"],
            "performance": performance, "model_path": files[1], "files": files}


def _run_name() -> str:
    params = task_run.parameters or {}
    cand, step = params.get("candidate", {}), params.get("step", "candidate")
    code = cand.get("code") or cand.get("neck_code") or ""
    return f"{step}-{cand.get('id', '?')}-{code}".replace(" ", "")


@task(name="candidate", task_run_name=_run_name, persist_result=True, cache_policy=STAGE_CACHE)
def train_candidate_task(candidate: dict[str, Any], data: dict[str, Any], p: dict[str, Any], steps: int,
                         step: str, run_dir: str, parent_run_id: str) -> dict[str, Any]:
    """`parent_run_id` is the stage's MLflow run: each candidate is its grandchild."""
    logger = get_run_logger()
    extra = {k: v for k, v in candidate.items() if k not in ("desc", "parent_model")}
    with tracker.child_run(parent_run_id, f"{step}-{candidate['id']}", {**extra, **candidate["desc"], "steps": steps}) as run_id:
        history: list[dict[str, float]] = []

        def on_step(i: int, losses: dict[str, float]) -> None:
            if i % 10 == 0 or i == steps - 1:
                tracker.log_metrics(run_id, {f"train_{k}": v for k, v in losses.items()}, step=i)
                history.append({"epoch": i, **losses})

        out = train_candidate(candidate, data, p, steps, stage_dir(run_dir, step), on_step)
        tracker.log_metrics(run_id, out["performance"])
        tracker.log_files(run_id, out["files"], "candidate")
        tracker.log_curve(run_id, history, ["loss"], "candidate/loss.png", f"{step} candidate {candidate['id']}")
    perf = out["performance"]
    logger.info("%s candidate %s %s: mAP %.4f  mAP@.5 %.4f  params %.2fM  MACs %.1fM  inherited %.0f%%", step,
                candidate["id"], extra.get("code") or extra.get("neck_code"), perf["mAP"], perf["mAP50"],
                perf["params"] / 1e6, perf["macs"] / 1e6, 100 * perf["inherited_ratio"])
    return out
