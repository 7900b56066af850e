"""Stage `rank_check` of spos/full: does the supernet rank architectures at all?

`count` paths spread over the space's MACs range (evenly spaced quantiles of seeded uniform
samples) are each trained stand-alone from scratch with the same short budget and scored on the
val split; the same paths are scored with the supernet's weights, with and without BN
recalibration. Kendall tau between the stand-alone and the supernet accuracies (scipy) is the
answer, printed beside the published one-shot figure (about 0.50-0.53 on NAS-Bench-201).
Each finished path is saved (rank_<i>.json), so a killed check continues where it was."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from scipy.stats import kendalltau

from core.seeds import derive_seed
from engine.runtime import configure_torch, resolve_device
from nas_models.spos_shufflenet import build_subnet
from params.models import RankCheckParams, Runtime
from strategies.path_sampler import uniform
from tasks.cifar.data import CifarSplit
from tasks.cifar.training import finetune_and_score
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import read_json, write_json
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.tables import write_table
from tasks.spos.shared import supernet_score
from tasks.spos.supernet import TrainedSupernet
from tracking import tracker

POOL = 400  # uniform samples the spread is taken from
PUBLISHED_TAU = "0.50-0.53 (one-shot on NAS-Bench-201)"


@dataclass(frozen=True, kw_only=True)
class RankChecked(StageResult):
    """Kendall tau between stand-alone and supernet accuracies (None: off, or constant scores)
    and the paths behind it; `files`: rank_check.csv (+ .parquet), rank_check.json."""

    paths: int
    kendall_tau_recalib: float | None
    kendall_tau_no_recalib: float | None
    rows: tuple[dict[str, Any], ...] = ()   # one per path: choices, MACs, params, the three accuracies
    steps_each: int = 0
    recalib_batches: int = 0
    published_one_shot_tau: str = PUBLISHED_TAU


def spread_paths(table: Any, count: int, seed: int) -> list[list[int]]:
    """`count` distinct paths at evenly spaced MACs quantiles of seeded uniform samples."""
    rng = random.Random(seed)
    pool = sorted({tuple(uniform(rng, table.n_blocks, len(table.per_block[0]))) for _ in range(POOL)},
                  key=table.macs)
    picks = sorted({round(i * (len(pool) - 1) / (count - 1)) for i in range(count)})
    return [list(pool[i]) for i in picks]


def tau(xs: list[float], ys: list[float]) -> float | None:
    value = kendalltau(xs, ys).statistic
    return None if value != value else float(value)  # NaN (constant scores) -> None


def rank_check(supernet: TrainedSupernet, data: CifarSplit, cfg: RankCheckParams, recalib_batches: int,
               eval_batch: int, convention: str, seed: int, runtime: Runtime, out_dir: Path,
               on_path=None) -> RankChecked:
    configure_torch(runtime.num_threads, seed)
    device = resolve_device(runtime.device)
    table = supernet.table()
    recalib = recalib_batches or 4  # the check compares with and without, whatever the search used
    rows = []
    for i, choices in enumerate(spread_paths(table, cfg.count, seed)):
        saved = out_dir / f"rank_{i}.json"
        if saved.exists() and read_json(saved)["choices"] == choices:
            row = read_json(saved)
        else:
            configure_torch(runtime.num_threads, derive_seed(seed, "spos.rank_check", i))
            model = build_subnet(choices, supernet.preset, num_classes=supernet.num_classes)
            standalone = finetune_and_score(model, data, cfg.steps, cfg.learning_rate, cfg.batch_size, seed, device,
                                            convention)
            row = {"path": i, "choices": choices, "macs": table.macs(choices), "params": table.params(choices),
                   "standalone_acc": standalone,
                   "supernet_acc_recalib": supernet_score(supernet.load(), choices, data, recalib, eval_batch, seed,
                                                          convention, device),
                   "supernet_acc_no_recalib": supernet_score(supernet.load(), choices, data, 0, eval_batch, seed,
                                                             convention, device)}
            write_json(saved, row)
        rows.append(row)
        if on_path is not None:
            on_path(i, row)
    stand = [r["standalone_acc"] for r in rows]
    summary = {"paths": len(rows), "steps_each": cfg.steps, "recalib_batches": recalib,
               "kendall_tau_recalib": tau(stand, [r["supernet_acc_recalib"] for r in rows]),
               "kendall_tau_no_recalib": tau(stand, [r["supernet_acc_no_recalib"] for r in rows]),
               "published_one_shot_tau": PUBLISHED_TAU}
    files = [str(p) for p in write_table([{**r, "choices": "".join(map(str, r["choices"]))} for r in rows],
                                         out_dir / "rank_check.csv")]
    files.append(str(write_json(out_dir / "rank_check.json", {**summary, "rows": rows})))
    return RankChecked(**summary, rows=tuple(rows), files=tuple(files))


@task(name="rank_check", persist_result=True, cache_policy=STAGE_CACHE)
def rank_check_task(supernet: TrainedSupernet, data: CifarSplit, rank: RankCheckParams, recalib_batches: int,
                    eval_batch: int, convention: str, seed: int, ctx: StageContext) -> RankChecked:
    logger = get_run_logger()
    if rank.count == 0:
        logger.info("rank_check: off (rank_check.count = 0)")
        return RankChecked(paths=0, kendall_tau_recalib=None, kendall_tau_no_recalib=None)
    with tracker.child_run(ctx.parent_run_id, "rank_check", rank.model_dump()) as run_id:
        progress = tracker.Progress("rank-check-progress", "rank check: paths trained stand-alone")

        def on_path(i: int, row: dict[str, Any]) -> None:
            progress.update((i + 1) / rank.count, f"{i + 1}/{rank.count} paths")
            logger.info("rank check path %d/%d (%.2fM MACs): stand-alone %.4f, supernet %.4f recalibrated / %.4f not",
                        i + 1, rank.count, row["macs"] / 1e6, row["standalone_acc"], row["supernet_acc_recalib"],
                        row["supernet_acc_no_recalib"])

        out = rank_check(supernet, data, rank, recalib_batches, eval_batch, convention, seed, ctx.runtime,
                         ctx.work, on_path)
        taus = {"kendall_tau_recalib": out.kendall_tau_recalib, "kendall_tau_no_recalib": out.kendall_tau_no_recalib}
        tracker.log_metrics(run_id, {k: v for k, v in taus.items() if v is not None})
        tracker.log_files(run_id, out.files, "rank_check")
    table = [{k: v for k, v in r.items() if k != "choices"} | {"choices": "".join(map(str, r["choices"]))}
             for r in out.rows]
    tracker.publish_table("spos-rank-check", table + [
        {"path": "Kendall tau", "supernet_acc_recalib": out.kendall_tau_recalib,
         "supernet_acc_no_recalib": out.kendall_tau_no_recalib}],
        f"stand-alone ({rank.steps} steps each) vs supernet accuracy; published one-shot tau {PUBLISHED_TAU}")
    logger.info("rank check: Kendall tau %s with BN recalibration, %s without (published one-shot: %s)",
                out.kendall_tau_recalib, out.kendall_tau_no_recalib, PUBLISHED_TAU)
    return out
