"""Stage `retrain` of spos/full: the searched path trained from scratch (affine BN, its own
weights), beside two baselines with the same budget: a random path of similar MACs and the
all-3x3 path. One task per model; checkpoints in the work folder."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from engine.runtime import configure_torch, resolve_device
from nas_models.spos_shufflenet import build_subnet
from params.models import Runtime, SposRetrainParams
from strategies.path_sampler import uniform
from tasks.cifar.data import CifarSplit
from tasks.cifar.training import TrainedClassifier, measure, train_and_score
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import save_handoff
from tasks.orchestration.pipeline import candidate_run_name
from tasks.spos.search import FinalArchitecture
from tasks.spos.supernet import TrainedSupernet
from tracking import tracker

SIMILAR = 0.05   # a "similar MACs" baseline is within 5 % of the winner's MACs
TRIES = 20_000


@dataclass(frozen=True, kw_only=True)
class RetrainedPath(TrainedClassifier):
    """One path trained from scratch (winner, random_similar or all_3x3); `files`: desc_,
    model_ and performance_<name>."""

    choices: tuple[int, ...]


def retrain_candidates(supernet: TrainedSupernet, final: FinalArchitecture, seed: int, baselines: bool
                       ) -> list[dict[str, Any]]:
    """The winner, then (if asked) a seeded random path of the closest MACs found within
    `SIMILAR` and the all-3x3 path: the retrain stage's candidate inputs ({"name", "choices"})."""
    table = supernet.table()
    out: list[dict[str, Any]] = [{"name": "winner", "choices": list(final.choices),
                                  **({"latency_ms": final.latency_ms} if final.latency_ms is not None else {})}]
    if baselines:
        rng, target = random.Random(seed), final.macs
        best: list[int] | None = None
        for _ in range(TRIES):
            path = uniform(rng, table.n_blocks, len(table.per_block[0]))
            if path != out[0]["choices"] and (best is None or abs(table.macs(path) - target) < abs(table.macs(best) - target)):
                best = path
                if abs(table.macs(best) - target) <= SIMILAR * target:
                    break
        out.append({"name": "random_similar", "choices": best})
        out.append({"name": "all_3x3", "choices": [0] * table.n_blocks})
    return out


def retrain(candidate: dict[str, Any], supernet: TrainedSupernet, data: CifarSplit, cfg: SposRetrainParams,
            convention: str, seed: int, runtime: Runtime, out_dir: Path, on_epoch=None) -> RetrainedPath:
    configure_torch(runtime.num_threads, seed)
    model = build_subnet(candidate["choices"], supernet.preset, num_classes=supernet.num_classes)
    scores = train_and_score(model, data, cfg, seed, resolve_device(runtime.device),
                             out_dir / f"checkpoint_{candidate['name']}.pth", on_epoch, convention)
    performance = {"acc": scores["test_acc"], "val_acc": scores["val_acc"], **measure(model), "epochs": cfg.epochs,
                   **({"search_latency_ms": candidate["latency_ms"]} if candidate.get("latency_ms") is not None else {})}
    desc = {"type": "SposSubnet", "choices": list(candidate["choices"]), "preset": supernet.preset,
            "num_classes": supernet.num_classes}
    files = save_handoff(out_dir, candidate["name"], desc, model, performance)
    return RetrainedPath(name=candidate["name"], choices=tuple(candidate["choices"]), desc=desc, model_path=files[1],
                         performance=performance, files=tuple(files))


@task(name="retrain", task_run_name=candidate_run_name(lambda c: f"retrain-{c.get('name', '?')}"),
      persist_result=True, cache_policy=STAGE_CACHE)
def spos_retrain_task(candidate: dict[str, Any], supernet: TrainedSupernet, data: CifarSplit,
                      retrain_cfg: SposRetrainParams, convention: str, seed: int, ctx: StageContext) -> RetrainedPath:
    logger = get_run_logger()
    choices = "".join(map(str, candidate["choices"]))
    with tracker.child_run(ctx.parent_run_id, f"retrain-{candidate['name']}",
                           {"choices": choices, **retrain_cfg.model_dump()}) as run_id:
        def on_epoch(m: dict[str, float]) -> None:
            tracker.log_metrics(run_id, m, step=int(m["epoch"]))

        out = retrain(candidate, supernet, data, retrain_cfg, convention, seed, ctx.runtime, ctx.work, on_epoch)
        tracker.log_metrics(run_id, out.performance)
        tracker.log_files(run_id, out.files, "retrain")
    perf = out.performance
    logger.info("retrained %s (%s) from scratch: test acc %.4f  MACs %.2fM  params %.3fM", candidate["name"], choices,
                perf["acc"], perf["macs"] / 1e6, perf["params"] / 1e6)
    return out
