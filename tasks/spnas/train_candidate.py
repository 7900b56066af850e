"""One SP-NAS search candidate as one task: build it from its desc, inherit every parent tensor
whose name and shape match, train a small step budget, score mAP on the search-val images, save
desc_<id>.json / model_<id>.pth / performance_<id>.json into the search stage's work folder.
The search driver (tasks/orchestration/search.py) maps it for the serial and the parallel stage."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from prefect import get_run_logger
from prefect.runtime import task_run

from core.seeds import derive_seed
from data.coco import load_coco
from engine.detector_fit import fit_steps, score, train_loader
from engine.runtime import configure_torch, resolve_device
from nas_models.inherit import inherit_weights
from nas_models.registry import build_from_desc
from params.models import DetectorTrainParams, Runtime
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import save_handoff
from tasks.orchestration.search import candidate_task
from tasks.spnas.detectors import measure, optim_from
from tasks.spnas.split import Split
from tracking import tracker


def train_candidate(candidate: dict[str, Any], data: Split, optimizer: DetectorTrainParams, steps: int,
                    seed: int, runtime: Runtime, out_dir: Path, on_step=None, *, stage: str) -> dict[str, Any]:
    """candidate: {"id", "desc", "parent_model" (path or None), "freeze" (bool), ...extra columns};
    `stage` ("serial" or "parallel") names the candidate's random stream with its id."""
    train = load_coco(Path(data.train_images), Path(data.search_train_json))
    search_val = load_coco(Path(data.train_images), Path(data.search_val_json))
    device = resolve_device(runtime.device)
    started = time.perf_counter()
    own_seed = derive_seed(seed, f"spnas.{stage}", int(candidate["id"]))  # serial and parallel ids overlap
    # A mutated net can diverge at the search learning rate: retry once at half of it,
    # from the same inherited weights, before the search is told the candidate failed.
    for lr_scale in (1.0, 0.5):
        configure_torch(runtime.num_threads, own_seed)
        model = build_from_desc(candidate["desc"])
        inherited: dict[str, Any] = {"inherited_ratio": 0.0}
        if candidate.get("parent_model"):
            parent = torch.load(candidate["parent_model"], map_location="cpu", weights_only=True)
            report = inherit_weights(model, parent, freeze_inherited_blocks=bool(candidate.get("freeze")))
            inherited = {"inherited_ratio": report.ratio, "inherited_tensors": report.matched}
        try:
            losses = fit_steps(model, train_loader(train, optimizer.batch_size, own_seed),
                               steps, optim_from(optimizer, lr_scale=lr_scale), on_step, device=device)
            break
        except FloatingPointError:
            if lr_scale < 1.0:
                raise
    train_seconds = time.perf_counter() - started
    metrics = score(model, search_val, optimizer.eval_max_images, device=device)
    for param in model.parameters():  # frozen blocks are frozen for the search only
        param.requires_grad_(True)
    performance = {**metrics, **measure(model, candidate["desc"]["image_size"]), **inherited, "train_steps": steps,
                   "lr_scale": lr_scale, "train_seconds": round(train_seconds, 2), "final_loss": losses.get("loss")}
    files = save_handoff(out_dir, str(candidate["id"]), candidate["desc"], model, performance)
    return {**{k: v for k, v in candidate.items() if k != "desc"}, "desc": candidate["desc"],
            "performance": performance, "model_path": files[1], "files": files}


def _run_name() -> str:
    params = task_run.parameters or {}
    cand, step = params.get("candidate", {}), params.get("stage", "candidate")
    code = cand.get("code", "") if cand.get("neck_code") is None else cand["neck_code"]
    return f"{step}-{cand.get('id', '?')}-{code}".replace(" ", "")


@candidate_task(name="candidate", task_run_name=_run_name)
def train_candidate_task(candidate: dict[str, Any], data: Split, optimizer: DetectorTrainParams, steps: int,
                         seed: int, stage: str, ctx: StageContext) -> dict[str, Any]:
    """`ctx.parent_run_id` is the stage's MLflow run: each candidate is its grandchild."""
    logger = get_run_logger()
    extra = {k: v for k, v in candidate.items() if k not in ("desc", "parent_model")}
    with tracker.child_run(ctx.parent_run_id, f"{stage}-{candidate['id']}", {**extra, **candidate["desc"], "steps": steps}) as run_id:
        history: list[dict[str, float]] = []

        def on_step(i: int, losses: dict[str, float]) -> None:
            if i % 10 == 0 or i == steps - 1:
                tracker.log_metrics(run_id, {f"train_{k}": v for k, v in losses.items()}, step=i)
                history.append({"epoch": i, **losses})

        out = train_candidate(candidate, data, optimizer, steps, seed, ctx.runtime, ctx.work, on_step, stage=stage)
        tracker.log_metrics(run_id, out["performance"])
        tracker.log_files(run_id, out["files"], "candidate")
        tracker.log_curve(run_id, history, ["loss"], "candidate/loss.png", f"{stage} candidate {candidate['id']}")
    perf = out["performance"]
    logger.info("%s candidate %s %s: mAP %.4f  mAP@.5 %.4f  params %.2fM  MACs %.1fM  inherited %.0f%%", stage,
                candidate["id"], extra.get("code") if extra.get("neck_code") is None else extra["neck_code"],
                perf["mAP"], perf["mAP50"], perf["params"] / 1e6, perf["macs"] / 1e6, 100 * perf["inherited_ratio"])
    return out
