"""Stage `fully_train` of spnas/full: the searched detector trained longer on all training
images — and, with the same budget on the same data, the starting architecture from its
fine_tune weights — both scored on the held-out val set. The comparison table answers the
user's question: did the search beat the hand-designed backbone, within the size limit?
Training checkpoints in the work folder, so a killed run continues where it stopped."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from data.coco import load_coco
from engine.detector_fit import fit_steps, latency_ms, score, train_loader
from engine.runtime import configure_torch, resolve_device
from params.models import DetectorTrainParams, FullyTrainParams, Runtime
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import save_handoff
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.pipeline import candidate_run_name
from tasks.orchestration.tables import write_table
from tasks.spnas.detectors import load_detector, measure, optim_from
from tasks.spnas.split import Split
from tracking import tracker

STAGE = "fully_train"


@dataclass(frozen=True, kw_only=True)
class Trained(StageResult):
    """One fully trained detector ("final": the searched one, "baseline": the starting one),
    scored on the held-out val set (`performance`)."""

    role: str
    code: str
    neck_code: tuple[int, ...] | None   # None: plain FPN (the baseline)
    desc: dict[str, Any]
    model_path: str

    @property
    def neck_text(self) -> str:
        """The neck code as the tables and the summary print it (as the search's list)."""
        return str(None if self.neck_code is None else list(self.neck_code))


@dataclass(frozen=True, kw_only=True)
class Compared(StageResult):
    """The searched-vs-baseline table (fully_train/output.csv), one row per trained net."""

    rows: tuple[dict[str, Any], ...]


def train_full(candidate: dict[str, Any], data: Split, optimizer: DetectorTrainParams,
                cfg: FullyTrainParams, seed: int, runtime: Runtime, out_dir: Path, on_step=None) -> Trained:
    """candidate: {"role": "final"|"baseline", "code", "neck_code", "desc", "model_path"}."""
    configure_torch(runtime.num_threads, seed)
    device = resolve_device(runtime.device)
    model = load_detector(candidate["desc"], candidate["model_path"])
    train = load_coco(Path(data.train_images), Path(data.train_json))
    loader = train_loader(train, optimizer.batch_size, seed)
    steps = cfg.epochs * len(loader)
    losses = fit_steps(model, loader, steps, optim_from(optimizer, "cosine"), on_step, device=device,
                       checkpoint=out_dir / f"checkpoint_{candidate['role']}.pth")
    metrics = score(model, load_coco(Path(data.val_images), Path(data.val_json)), device=device)
    image_size = candidate["desc"]["image_size"]
    performance = {**metrics, **measure(model, image_size), "latency_ms": latency_ms(model.cpu(), image_size),
                   "train_steps": steps, "final_loss": losses.get("loss")}
    files = save_handoff(out_dir, candidate["role"], candidate["desc"], model, performance)
    neck_code = candidate.get("neck_code")
    return Trained(role=candidate["role"], code=candidate["code"],
                   neck_code=None if neck_code is None else tuple(neck_code), desc=candidate["desc"],
                   model_path=files[1], performance=performance, files=tuple(files))


@task(name="fully_train", task_run_name=candidate_run_name(lambda c: f"fully_train-{c.get('role', '?')}"),
      persist_result=True, cache_policy=STAGE_CACHE)
def fully_train_task(candidate: dict[str, Any], data: Split, optimizer: DetectorTrainParams,
                     fully_train: FullyTrainParams, seed: int, ctx: StageContext) -> Trained:
    """`candidate`: {"role", "code", "neck_code", "desc", "model_path"} (the parallel winner's
    candidate result, or the starting detector's figures)."""
    logger = get_run_logger()
    role = candidate["role"]
    with tracker.child_run(ctx.parent_run_id, f"fully_train-{role}", {"role": role, "code": candidate["code"],
                                                                  "neck_code": candidate.get("neck_code"),
                                                                  "epochs": fully_train.epochs}) as run_id:
        progress = tracker.Progress(f"fully-train-{role}-progress", f"fully train ({role})")
        history: list[dict[str, float]] = []
        total = max(1, fully_train.epochs * -(-(data.counts["train"] + data.counts["search_val"])
                                              // optimizer.batch_size))

        def on_step(i: int, losses: dict[str, float]) -> None:
            if i % 20 == 0:
                tracker.log_metrics(run_id, {f"train_{k}": v for k, v in losses.items()}, step=i)
                history.append({"epoch": i, **losses})
                progress.update((i + 1) / total, f"step {i + 1}/{total}")
                logger.info("fully_train %s step %d/%d loss %.4f", role, i + 1, total, losses["loss"])

        out = train_full(candidate, data, optimizer, fully_train, seed, ctx.runtime, ctx.work, on_step)
        progress.update(1.0, "done")
        tracker.log_metrics(run_id, out.performance)
        tracker.log_files(run_id, out.files, STAGE)
        tracker.log_curve(run_id, history, ["loss"], f"{STAGE}/{role}_loss.png", f"fully train {role} (x = step)")
    perf = out.performance
    logger.info("fully_train %s %s %s: held-out mAP %.4f  mAP@.5 %.4f  params %.2fM", role, candidate["code"],
                candidate.get("neck_code"), perf["mAP"], perf["mAP50"], perf["params"] / 1e6)
    return out


def comparison_rows(results: Sequence[Trained], limits: Mapping[str, float]) -> list[dict[str, Any]]:
    """One row per trained net; `within_limit` says whether it respects the search's resource limit."""
    rows = []
    for r in results:
        perf = r.performance or {}
        rows.append({"role": r.role, "code": r.code, "neck_code": r.neck_text,
                     **{k: perf[k] for k in ("mAP", "mAP50", "params", "macs", "latency_ms", "train_steps")},
                     "within_limit": all(perf[k] <= v for k, v in limits.items())})
    return rows


@task(name="compare", persist_result=True, cache_policy=STAGE_CACHE)
def compare_task(results: list[Trained], limits: Mapping[str, float], ctx: StageContext) -> Compared:
    """fully_train/output.csv (+ .parquet) and a Prefect table: searched vs starting architecture."""
    rows = comparison_rows(results, limits)
    files = [str(p) for p in write_table(rows, ctx.work / "output.csv")]
    tracker.log_files(ctx.parent_run_id, files, STAGE)
    limit_text = ", ".join(f"{k} <= {v / 1e6:.2f}M" for k, v in limits.items()) or "none"
    tracker.publish_table("searched-vs-baseline", rows,
                          f"held-out val: searched detector vs the starting architecture, same training budget "
                          f"(resource limit: {limit_text})")
    for row in rows:
        get_run_logger().info("%-8s %-22s neck %-14s mAP %.4f  mAP@.5 %.4f  params %.2fM  MACs %.1fM  within limit: %s",
                              row["role"], row["code"], row["neck_code"], row["mAP"], row["mAP50"],
                              row["params"] / 1e6, row["macs"] / 1e6, row["within_limit"])
    return Compared(rows=tuple(rows), files=tuple(files))
