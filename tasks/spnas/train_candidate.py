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
from core.errors import InputError
from engine.detection import read_checkpoint
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


def rung_of(candidate: dict[str, Any]) -> int | None:
    """The candidate's rung when the search driver trains it in rungs (multi-fidelity), else None."""
    return None if candidate.get("rung") is None else int(candidate["rung"])


def checkpoint_path(out_dir: Path, candidate_id: Any, rung: int) -> Path:
    """One file per candidate and rung, never overwritten by a later rung (a killed promotion
    is redone from the rung below)."""
    return Path(out_dir) / f"ckpt_{candidate_id}_r{rung}.pth"


def train_candidate(candidate: dict[str, Any], data: Split, optimizer: DetectorTrainParams, steps: int,
                    seed: int, runtime: Runtime, out_dir: Path, on_step=None, *, stage: str) -> dict[str, Any]:
    """candidate: {"id", "desc", "parent_model" (path or None), "freeze" (bool), ...extra columns};
    `stage` ("serial" or "parallel") names the candidate's random stream with its id.

    In rungs (the driver adds "rung", "steps", "max_steps", "resume_from"): trains until
    candidate["steps"] steps of a candidate["max_steps"]-step schedule — from the inherited
    weights at rung 0, from the previous rung's checkpoint (weights, momentum, schedule, data
    position, RNG, the rung-0 lr_scale) on a promotion — saves ckpt_<id>_r<rung>.pth and
    returns it as "checkpoint" (also in "files"); `steps` is then unused."""
    rung = rung_of(candidate)
    target = steps if rung is None else int(candidate["steps"])
    total = target if rung is None else int(candidate.get("max_steps") or target)
    resume_from = None if rung is None else candidate.get("resume_from")
    ckpt = None if rung is None else checkpoint_path(out_dir, candidate["id"], rung)
    train = load_coco(Path(data.train_images), Path(data.search_train_json))
    search_val = load_coco(Path(data.train_images), Path(data.search_val_json))
    device = resolve_device(runtime.device)
    started = time.perf_counter()
    own_seed = derive_seed(seed, f"spnas.{stage}", int(candidate["id"]))  # serial and parallel ids overlap
    # A mutated net can diverge at the search learning rate: retry once at half of it,
    # from the same inherited weights, before the search is told the candidate failed.
    # A promotion keeps the lr_scale its rung 0 trained with (no retry: the schedule is fixed).
    scales: tuple[float, ...] = (1.0, 0.5)
    saved = _saved_meta(Path(resume_from)) if resume_from else None
    if saved is not None:
        scales = (float(saved["lr_scale"]),)
    for lr_scale in scales:
        configure_torch(runtime.num_threads, own_seed)
        model = build_from_desc(candidate["desc"])
        inherited: dict[str, Any] = {"inherited_ratio": 0.0}
        if saved is not None:  # the weights come from the checkpoint; only the frozen set is needed
            frozen = set(saved["frozen"])
            for name, param in model.named_parameters():
                param.requires_grad_(name not in frozen)
            inherited = dict(saved["inherited"])
        elif candidate.get("parent_model"):
            parent = torch.load(candidate["parent_model"], map_location="cpu", weights_only=True)
            report = inherit_weights(model, parent, freeze_inherited_blocks=bool(candidate.get("freeze")))
            inherited = {"inherited_ratio": report.ratio, "inherited_tensors": report.matched}
        try:
            if rung is None:
                losses = fit_steps(model, train_loader(train, optimizer.batch_size, own_seed),
                                   steps, optim_from(optimizer, lr_scale=lr_scale), on_step, device=device)
            else:
                meta = {"lr_scale": lr_scale, "inherited": inherited,
                        "frozen": [n for n, p in model.named_parameters() if not p.requires_grad]}
                losses = fit_steps(model, train_loader(train, optimizer.batch_size, own_seed), total,
                                   optim_from(optimizer, lr_scale=lr_scale), on_step, device=device,
                                   checkpoint=ckpt, stop_at=target, resume_from=resume_from, meta=meta)
            break
        except FloatingPointError:
            if lr_scale == scales[-1]:
                raise
    train_seconds = time.perf_counter() - started
    metrics = score(model, search_val, optimizer.eval_max_images, device=device)
    for param in model.parameters():  # frozen blocks are frozen for the search only
        param.requires_grad_(True)
    performance = {**metrics, **measure(model, candidate["desc"]["image_size"]), **inherited, "train_steps": target,
                   "lr_scale": lr_scale, "train_seconds": round(train_seconds, 2), "final_loss": losses.get("loss")}
    if rung is not None:
        performance["rung"] = rung
    files = save_handoff(out_dir, str(candidate["id"]), candidate["desc"], model, performance)
    out = {**{k: v for k, v in candidate.items() if k != "desc"}, "desc": candidate["desc"],
           "performance": performance, "model_path": files[1], "files": files}
    if ckpt is not None:
        out.update(checkpoint=str(ckpt), files=[*files, str(ckpt)])
    return out


def _saved_meta(path: Path) -> dict[str, Any]:
    """What a rung checkpoint was saved with besides the training state: lr_scale, the
    inheritance report and the frozen parameters (an InputError naming `resume_from` if none)."""
    try:
        meta = read_checkpoint(path).get("meta")
    except InputError as exc:
        raise InputError("resume_from", f"{str(path)!r} cannot be continued: {exc}") from None
    if not isinstance(meta, dict) or not {"lr_scale", "inherited", "frozen"} <= set(meta):
        raise InputError("resume_from", f"{str(path)!r} is not an SP-NAS candidate's rung checkpoint (no lr_scale, "
                                        "inheritance or frozen set saved with it).")
    return meta


def run_name(candidate: dict[str, Any], base: str) -> str:
    """A candidate's name (MLflow child run, Prefect task run): `base` at rung 0 and without
    rungs, `base`-r<rung> for a promotion."""
    rung = rung_of(candidate)
    return base if not rung else f"{base}-r{rung}"


def _run_name() -> str:
    params = task_run.parameters or {}
    cand, step = params.get("candidate", {}), params.get("stage", "candidate")
    code = cand.get("code", "") if cand.get("neck_code") is None else cand["neck_code"]
    return run_name(cand, f"{step}-{cand.get('id', '?')}-{code}".replace(" ", ""))


@candidate_task(name="candidate", task_run_name=_run_name)
def train_candidate_task(candidate: dict[str, Any], data: Split, optimizer: DetectorTrainParams, steps: int,
                         seed: int, stage: str, ctx: StageContext) -> dict[str, Any]:
    """`ctx.parent_run_id` is the stage's MLflow run: each candidate is its grandchild (one per
    rung when trained in rungs: `<stage>-<id>`, then `<stage>-<id>-r<rung>`)."""
    logger = get_run_logger()
    extra = {k: v for k, v in candidate.items() if k not in ("desc", "parent_model")}
    rung = rung_of(candidate)
    target = steps if rung is None else int(candidate["steps"])
    params = {**extra, **candidate["desc"], "steps": target, **({} if rung is None else {"rung": rung})}
    with tracker.child_run(ctx.parent_run_id, run_name(candidate, f"{stage}-{candidate['id']}"), params) as run_id:
        history: list[dict[str, float]] = []

        def on_step(i: int, losses: dict[str, float]) -> None:
            if i % 10 == 0 or i == target - 1:
                tracker.log_metrics(run_id, {f"train_{k}": v for k, v in losses.items()}, step=i)
                history.append({"epoch": i, **losses})

        out = train_candidate(candidate, data, optimizer, steps, seed, ctx.runtime, ctx.work, on_step, stage=stage)
        tracker.log_metrics(run_id, out["performance"])
        tracker.log_files(run_id, [f for f in out["files"] if f != out.get("checkpoint")], "candidate")
        tracker.log_curve(run_id, history, ["loss"], "candidate/loss.png", f"{stage} candidate {candidate['id']}")
    perf = out["performance"]
    logger.info("%s candidate %s %s%s: mAP %.4f  mAP@.5 %.4f  params %.2fM  MACs %.1fM  inherited %.0f%%", stage,
                candidate["id"], extra.get("code") if extra.get("neck_code") is None else extra["neck_code"],
                "" if rung is None else f" rung {rung} ({target} steps)",
                perf["mAP"], perf["mAP50"], perf["params"] / 1e6, perf["macs"] / 1e6, 100 * perf["inherited_ratio"])
    return out
