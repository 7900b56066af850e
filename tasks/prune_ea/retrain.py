"""Stage `retrain` of prune-ea/full: the chosen Pareto-front members (spread along the front)
trained at their pruned size, scored on the test batch — the seed's "retrain the front" step.
`retrain.init: pruned` (default) starts each member from the base model's kept weights, as
pruning is usually finished (prune, then train); `scratch` from random initialisation, as the
seed does. Measured on photo_digits (seed 0, the default 10 epochs): a member at 16 % of the
base's MACs reached 0.897 test top-1 from its pruned weights and 0.286 from scratch. One task
per member; checkpoints in the work folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prefect import get_run_logger, task

from engine.runtime import configure_torch, resolve_device
from nas_models.prune_resnet import build_prune_resnet, pruned_from_full
from params.models import PruneRetrainParams, Runtime
from tasks.cifar.data import CifarSplit
from tasks.cifar.training import TrainedClassifier, measure, train_and_score
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import save_handoff
from tasks.orchestration.pipeline import candidate_run_name
from tasks.prune_ea.prune_search import load_base
from tasks.prune_ea.train_base import TrainedBase
from tracking import tracker


@dataclass(frozen=True, kw_only=True)
class RetrainedMember(TrainedClassifier):
    """A front member trained at its pruned size (named member_<id> in the comparison);
    `files`: desc_, model_ and performance_retrained_<id>."""

    id: int            # the candidate's id in the search
    encoding: str      # its channel bits


def initial_model(encoding: str, base: TrainedBase, depth: int, num_classes: int, init: str) -> torch.nn.Module:
    """The member's network before training: the base's kept weights (`pruned`) or random (`scratch`)."""
    if init == "scratch":
        return build_prune_resnet(depth, encoding, num_classes=num_classes)
    return pruned_from_full(load_base(base), encoding)


def retrain(candidate: dict[str, Any], base: TrainedBase, data: CifarSplit, depth: int, cfg: PruneRetrainParams,
            seed: int, runtime: Runtime, out_dir: Path, on_epoch=None) -> RetrainedMember:
    """`candidate`: a row of the search's front (id, encoding, acc)."""
    configure_torch(runtime.num_threads, seed)  # seeds `scratch`'s initialisation too
    model = initial_model(candidate["encoding"], base, depth, data.num_classes, cfg.init)
    scores = train_and_score(model, data, cfg, seed, resolve_device(runtime.device),
                             out_dir / f"checkpoint_{candidate['id']}.pth", on_epoch)
    performance = {"acc": scores["test_acc"], "val_acc": scores["val_acc"], **measure(model), "epochs": cfg.epochs,
                   "init": cfg.init, "search_acc": candidate["acc"],
                   **({"search_latency_ms": candidate["latency_ms"]} if candidate.get("latency_ms") is not None else {})}
    desc = {"type": "PruneResNet", **model.arch}
    files = save_handoff(out_dir, f"retrained_{candidate['id']}", desc, model, performance)
    return RetrainedMember(name=f"member_{candidate['id']}", id=candidate["id"], encoding=candidate["encoding"],
                           desc=desc, model_path=files[1], performance=performance, files=tuple(files))


@task(name="retrain", task_run_name=candidate_run_name(lambda c: f"retrain-{c.get('id', '?')}"),
      persist_result=True, cache_policy=STAGE_CACHE)
def retrain_task(candidate: dict[str, Any], base: TrainedBase, data: CifarSplit, depth: int,
                 retrain_cfg: PruneRetrainParams, seed: int, ctx: StageContext) -> RetrainedMember:
    logger = get_run_logger()
    with tracker.child_run(ctx.parent_run_id, f"retrain-{candidate['id']}", {"id": candidate["id"],
                                                                        **retrain_cfg.model_dump()}) as run_id:
        def on_epoch(m: dict[str, float]) -> None:
            tracker.log_metrics(run_id, m, step=int(m["epoch"]))

        out = retrain(candidate, base, data, depth, retrain_cfg, seed, ctx.runtime, ctx.work, on_epoch)
        tracker.log_metrics(run_id, out.performance)
        tracker.log_files(run_id, out.files, "retrain")
    perf = out.performance
    logger.info("retrained candidate %s (from %s): test acc %.4f  MACs %.2fM  params %.3fM", candidate["id"],
                "its pruned weights" if retrain_cfg.init == "pruned" else "scratch",
                perf["acc"], perf["macs"] / 1e6, perf["params"] / 1e6)
    return out
