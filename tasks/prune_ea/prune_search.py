"""Stage `prune_search` of prune-ea/full (Vega PruneEA): NSGA-III (pymoo) over per-channel keep
bits of the trained base network, objectives [MACs, 1 − accuracy] (params too if asked; with
`search.objective: latency` the measured latency in ms replaces MACs). Each
candidate is a task: the pruned network (physically smaller) inherits the kept channels'
weights from the base model, gets its BatchNorm statistics re-estimated on a few training
batches, is briefly fine-tuned and scored on the held-out val split.

Files: result.csv (+ .parquet: id, generation, encoding, macs, params, acc), pareto_front.csv
(exactly the non-dominated rows of result.csv), fronts/generation_<g>.csv (the front as it stood
after each generation); the first-vs-last front plot is in MLflow. The generation loop is the
shared search driver (tasks/orchestration/search.py), so a killed search resumes from its saved state.

A candidate no better than chance (acc <= 1.5 / classes) is told to NSGA-III as infeasible, so
the tiny networks that score at chance do not hold survivors' places (strategies/prune_ea.py).

`search.channels` (default norm): NSGA-III decides how many channels each group keeps, and the
base model's largest-norm filters are the ones kept (`keep_largest`); `random` keeps the bits as
drawn (Vega's). The random control's encodings denote networks the same way (random per-group
counts, then the same channels rule), so search vs control measures what NSGA-III adds.

`search.max_latency_ms`: each encoding NSGA-III makes is first built and timed (latency/direct.py);
one over the limit is never trained — it is counted (`skipped_over_limit`) and told to NSGA-III
as infeasible (strategies/prune_ea.py) — and result.csv gets the admitted ones' `latency_ms`."""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import flow, get_run_logger

from core.errors import InputError
from core.seeds import derive_seed
from engine.runtime import configure_torch, resolve_device
from engine.supernet import recalibrate_bn
from latency.direct import NetworkLatency, network_latency
from latency.predictor import LatencySpace
from nas_models.prune_resnet import (build_prune_resnet, channel_scores, encoding_length, keep_largest,
                                     pruned_from_full, random_encoding, repair_encoding, space_ops)
from nas_models.registry import build_from_desc
from params.models import PruneSearchParams, Runtime
from strategies.prune_ea import PruneEASearch
from tasks.cifar.data import CifarSplit
from tasks.cifar.training import finetune_and_score, loaders, measure
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import save_handoff
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.pipeline import candidate_run_name
from tasks.orchestration.search import (ControlReport, SearchSpec, candidate_task, choose, cost_column, fidelity_of,
                                        finalize, own_rows, run_control, run_search)
from tasks.orchestration.tables import write_table
from tasks.prune_ea.train_base import TrainedBase
from tracking import tracker

STAGE = "prune_search"
TABLE = "result.csv"


@dataclass(frozen=True, kw_only=True)
class PruneSearched(StageResult):
    """The search's table rows (result.csv; `pareto` marks the final front) and the front's rows,
    which `retrain` picks from; `files`: the saved state, result.csv, pareto_front.csv and the
    per-generation fronts."""

    rows: tuple[dict[str, Any], ...]
    front: tuple[dict[str, Any], ...]
    control: ControlReport | None = None   # search vs a same-budget random control (search.control: random)


def load_base(base: TrainedBase) -> torch.nn.Module:
    model = build_from_desc(dict(base.desc))
    model.load_state_dict(torch.load(base.model_path, map_location="cpu", weights_only=True))
    return model


def encoding_network(depth: int, num_classes: int) -> Callable[[str], tuple[torch.nn.Module, torch.Tensor]]:
    """encoding -> (the pruned ResNet it selects, one 1x3x32x32 image): what its latency is
    measured on. Built randomly initialised: the weights do not change the time, only the kept
    channel counts do (the same as with the base's weights)."""

    def build(encoding: str) -> tuple[torch.nn.Module, torch.Tensor]:
        return build_prune_resnet(depth, encoding, num_classes), torch.rand(1, 3, 32, 32)

    return build


def encoding_latency(depth: int, num_classes: int, predictor_file: str | None = None,
                     threads: int = 1) -> NetworkLatency:
    """Memoized latency (ms) of `encoding_network` (the space's builder): measured here with ONNX Runtime (latency.direct:
    cost per proposal, noise), or predicted by `predictor_file` (checked against the space first)."""
    space = latency_space(depth, num_classes)
    return network_latency(space.build, predictor_file, threads, space=space, field_name="search.latency_predictor")


def latency_space(depth: int, num_classes: int = 10) -> LatencySpace:
    """The pruned ResNet-`depth` space for a latency table and predictor (latency.predictor): its
    table lists every op of the space (`space_ops`, ~16,000), and the networks sampled to fit and
    judge the correction are random encodings, each keeping a share of channels drawn uniformly
    from 0.15-1, so the sample spans the search's range from heavily pruned to unpruned."""

    def sample(count: int, seed: int) -> list[str]:
        rng = np.random.default_rng(derive_seed(seed, "prune_ea.latency_space"))
        seen: dict[str, None] = {}
        while len(seen) < count:
            seen.setdefault(random_encoding(depth, rng, float(rng.uniform(0.15, 1.0))), None)
        return list(seen)

    return LatencySpace(f"prune-resnet{depth}-32px-{num_classes}cls", encoding_network(depth, num_classes), sample,
                        describe=lambda e: hashlib.sha1(e.encode()).hexdigest()[:12],
                        note=f"pruned CIFAR ResNet-{depth} at 32 px, {num_classes} classes (prune-ea/full)",
                        ops=lambda: space_ops(depth, num_classes))


def calibration_batches(data: CifarSplit, batch_size: int, seed: int) -> Any:
    """The training batches (seeded order) a candidate's BatchNorm statistics are re-estimated on."""
    return loaders(data, batch_size, seed)[0]


def evaluate_candidate(candidate: dict[str, Any], base: TrainedBase, data: CifarSplit, cfg: PruneSearchParams,
                       batch_size: int, seed: int, runtime: Runtime, out_dir: Path) -> dict[str, Any]:
    """Prune, re-estimate BN, fine-tune `cfg.finetune_steps` steps, score. In rungs (the driver adds
    "rung", "steps", "max_steps", "resume_from"): fine-tune until candidate["steps"] steps —
    at rung 0 after the BN re-estimation, on a promotion from the previous rung's checkpoint
    (pruned weights and BN statistics, SGD momentum, step count, batch position, RNG; no second
    re-estimation) — save ckpt_<id>_r<rung>.pth and return it as "checkpoint" (also in "files")."""
    own_seed, device = derive_seed(seed, "prune_ea.prune_search", int(candidate["id"])), resolve_device(runtime.device)
    rung = None if candidate.get("rung") is None else int(candidate["rung"])
    resume_from = None if rung is None else candidate.get("resume_from")
    configure_torch(runtime.num_threads, own_seed)
    # The architecture the mask selects (repaired against the base's weights); a promotion then
    # overwrites its weights with the checkpoint's.
    pruned = pruned_from_full(load_base(base), candidate["encoding"])
    if not resume_from:
        # The base model's BN statistics no longer fit once input channels are pruned (a pruned
        # candidate scores at chance before its fine-tune, and the short fine-tune's score is then
        # mostly noise): re-estimate them first.
        recalibrate_bn(pruned, calibration_batches(data, batch_size, own_seed), cfg.bn_recalibration_batches, device)
    ckpt = None
    if rung is None:
        acc = finetune_and_score(pruned, data, cfg.finetune_steps, cfg.finetune_lr, batch_size, own_seed, device)
    else:
        ckpt = out_dir / f"ckpt_{candidate['id']}_r{rung}.pth"
        acc = finetune_and_score(pruned, data, int(candidate["steps"]), cfg.finetune_lr, batch_size, own_seed, device,
                                 checkpoint=ckpt, resume_from=Path(resume_from) if resume_from else None)
    performance = {"acc": acc, **measure(pruned), "kept_bits": candidate["encoding"].count("1")}
    if rung is not None:
        performance.update(rung=rung, train_steps=int(candidate["steps"]))
    desc = {"type": "PruneResNet", **pruned.arch}
    files = save_handoff(out_dir, str(candidate["id"]), desc, pruned, performance)
    out = {**candidate, "performance": performance, "desc": desc, "model_path": files[1], "files": files}
    if ckpt is not None:
        out.update(checkpoint=str(ckpt), files=[*files, str(ckpt)])
    return out


def _name(candidate: dict[str, Any], base: str) -> str:
    rung = candidate.get("rung")
    return f"{base}-r{rung}" if rung else base


@candidate_task(name="prune_candidate",
                task_run_name=candidate_run_name(
                    lambda c: _name(c, f"prune-{c.get('id', '?')}-g{c.get('generation', '?')}")))
def prune_candidate_task(candidate: dict[str, Any], base: TrainedBase, data: CifarSplit,
                         search: PruneSearchParams, batch_size: int, seed: int, ctx: StageContext) -> dict[str, Any]:
    """One pruning candidate; its MLflow run (prune-<id>, prune-<id>-r<rung> for a promotion) holds
    the encoding as an artifact (desc_<id>.json), not as a param (up to 1,136 characters)."""
    name = _name(candidate, f"prune-{candidate['id']}")
    params = {"id": candidate["id"], "generation": candidate["generation"]}
    if candidate.get("rung") is not None:
        params.update(rung=candidate["rung"], steps=candidate["steps"])
    with tracker.child_run(ctx.parent_run_id, name, params) as run_id:
        out = evaluate_candidate(candidate, base, data, search, batch_size, seed, ctx.runtime, ctx.work)
        tracker.log_metrics(run_id, out["performance"])
        tracker.log_files(run_id, [out["files"][0], out["files"][2]], "candidate")
    perf = out["performance"]
    get_run_logger().info("candidate %s (generation %s%s): acc %.4f  MACs %.2fM  params %.3fM", candidate["id"],
                          candidate["generation"], "" if "rung" not in perf else f", rung {perf['rung']}",
                          perf["acc"], perf["macs"] / 1e6, perf["params"] / 1e6)
    return out


def _row(result: dict[str, Any]) -> dict[str, Any]:
    perf = result.get("performance") or {}
    latency = {"latency_ms": result["latency_ms"]} if "latency_ms" in result else {}
    return {"generation": result.get("generation"), "encoding": result.get("encoding"), "macs": perf.get("macs"),
            "params": perf.get("params"), "acc": perf.get("acc"), **latency, "status": "ok" if perf else "failed"}


def smallest_encoding(depth: int) -> str:
    """The smallest network of the space: one channel kept per channel group (fewer is repaired)."""
    return repair_encoding("0" * encoding_length(depth), depth)


def check_any_fits(strategy: PruneEASearch, limit_ms: float | None) -> None:
    """One clear error when a latency limit left nothing to train (every encoding was over it)."""
    if limit_ms is not None and not strategy.history and strategy.skipped:
        raise InputError("search.max_latency_ms", f"no encoding was within {limit_ms:g} ms: all {strategy.skipped} "
                                                  "proposed were over it; raise the limit")


def front_files(strategy: PruneEASearch, rows: list[dict[str, Any]], work: Path) -> list[str]:
    """pareto_front.csv (exactly the non-dominated rows of result.csv) and one front per generation."""
    by_id = {r["id"]: r for r in rows}
    front = set(strategy.pareto_ids())
    files = write_table([r for r in rows if r["id"] in front], work / "pareto_front.csv")
    fronts = work / "fronts"
    fronts.mkdir(exist_ok=True)
    for g in range(strategy.generation + 1):
        ids = [i for i in strategy.front_of_generation(g) if i in by_id]
        files += write_table([by_id[i] for i in ids], fronts / f"generation_{g}.csv")
    return [str(f) for f in files]


def chance_floor(num_classes: int) -> float:
    """The accuracy at or below which a pruned network counts as no better than chance: NSGA-III
    takes such a candidate as infeasible (strategies/prune_ea.py `acc_floor`) and retraining skips it."""
    return 1.5 / num_classes


def spread(front: Sequence[dict[str, Any]], count: int, num_classes: int, along: str = "macs",
           min_share: float = 0.0) -> list[dict[str, Any]]:
    """`count` front members evenly spread along the front's cost axis `along` (macs, or
    latency_ms for `search.objective: latency`; both ends included), leaving out the front's
    degenerate end: members no better than chance (`chance_floor`), and members whose accuracy is
    under `min_share` of the way from chance (1 / classes) to the front's best. Measured: the
    cheapest members just above the chance floor (search accuracy 0.16 at 0.18 M MACs, 0.29 at
    3.4 M) retrained from scratch to chance, 0.16 and 0.10, so those minutes bought nothing."""
    chance = 1.0 / num_classes
    best = max((r["acc"] for r in front), default=chance)
    floor = max(chance_floor(num_classes), chance + min_share * (best - chance))
    useful = [r for r in front if r["acc"] >= floor and r["acc"] > chance_floor(num_classes)] or list(front)
    ordered = sorted(useful, key=lambda r: (r[along], -r["acc"]))
    if len(ordered) <= count:
        return ordered
    picks = sorted({round(i * (len(ordered) - 1) / (count - 1)) for i in range(count)}) if count > 1 else [len(ordered) - 1]
    return [ordered[i] for i in picks]


@flow(name="prune-search")
def prune_search(data: CifarSplit, base: TrainedBase, depth: int, search: PruneSearchParams, batch_size: int,
                 seed: int, ctx: StageContext, refresh: bool = False
                 ) -> PruneSearched:
    logger = get_run_logger()
    full_state = load_base(base).state_dict()
    cost = search.objective  # "macs" or "latency" (measured before training, like the limit)
    objectives = (cost, "error", "params") if search.with_params else (cost, "error")
    x_axis = cost_column(cost)

    def repair(bits: Sequence[int]) -> list[int]:
        # Never an all-zero channel group: keep the group's largest-norm channel of the base model.
        return [int(b) for b in repair_encoding(bits, depth, full_state)]

    scores = channel_scores(full_state, depth)

    def by_norm(bits: Sequence[int]) -> list[int]:
        # search.channels = norm: the group's largest-norm channels, as many as the bits keep
        return [int(b) for b in keep_largest(bits, depth, scores)]

    # One memo for the search and its control: an encoding both draw is timed once.
    timed = search.max_latency_ms is not None or cost == "latency"
    latency = encoding_latency(depth, data.num_classes, search.latency_predictor) if timed else None
    if latency is not None:
        logger.info("latency figures: %s", latency.source)
    fits = latency.fits(search.max_latency_ms) if latency is not None and search.max_latency_ms is not None else None
    # What an encoding denotes: the same for the search and its control (the same evaluator).
    network_of = by_norm if search.channels == "norm" else repair
    strategy = PruneEASearch(encoding_length(depth), seed, num_generation=search.num_generation,
                             num_individual=search.num_individual, random_models=search.random_models,
                             objectives=objectives, mutation=search.mutation, repair=network_of, fits=fits,
                             acc_floor=chance_floor(data.num_classes))

    def control(n: int) -> PruneEASearch:
        # The space's own sampler: PruneEA's first generation (random encodings, each keeping the
        # channels search.channels says), n of them and nothing bred (num_generation 0).
        return PruneEASearch(encoding_length(depth), derive_seed(seed, "prune_ea.control"), num_generation=0,
                             num_individual=min(n, search.num_individual), random_models=n,
                             objectives=objectives, repair=network_of, fits=fits)

    def to_input(c: Any) -> dict[str, Any]:
        # the figure the gate admitted it on (memoized)
        return {"id": c.id, "generation": c.generation, "encoding": c.code,
                **({} if latency is None else {"latency_ms": latency(c.code)})}

    spec = SearchSpec(STAGE, prune_candidate_task, max(search.random_models, search.num_individual), to_input,
                      lambda r: {**{k: r["performance"][k] for k in ("acc", "macs", "params")},
                                 **({"latency_ms": r["latency_ms"]} if "latency_ms" in r else {})},
                      _row, (x_axis, "acc"),
                      f"PruneEA ResNet-{depth}", table=TABLE, extra_outputs=front_files,
                      control=control if search.control == "random" else None, fidelity=fidelity_of(search))
    with tracker.child_run(ctx.parent_run_id, "prune_search", {"depth": depth, **search.model_dump()}) as run_id:
        common = dict(base=base, data=data, search=search, batch_size=batch_size, seed=seed)
        outcome = run_search(strategy, spec, ctx, run_id, refresh, **common)
        check_any_fits(strategy, search.max_latency_ms)
        report = run_control(strategy, spec, outcome, ctx, run_id, refresh, None, **common)
        best = choose(strategy, {}, STAGE)  # with a fidelity: among the candidates at the top rung
        rows = finalize(strategy, spec, outcome, ctx.work, best.id, search.keep_weights, needed=set(strategy.pareto_ids()))
        front = [r for r in own_rows(rows) if r["pareto"]]
        first = [r for r in own_rows(rows) if r["id"] in set(strategy.front_of_generation(0))]
        tracker.log_fronts_plot(run_id, {"generation 0": first, f"generation {strategy.generation}": front},
                                x_axis, "acc", "prune_search/fronts.png",
                                f"PruneEA ResNet-{depth}: first vs last front")
        tracker.log_files(run_id, outcome.files, STAGE)
        tracker.log_metrics(run_id, {"candidates": len(rows), "front_size": len(front),
                                     "resumed_candidates": outcome.resumed_from,
                                     **({} if fits is None else {"skipped_over_limit": strategy.skipped})})
    tracker.publish_table("prune-search-front", sorted(({k: v for k, v in r.items() if k != "encoding"} for r in front),
                                                       key=lambda r: r[x_axis]),
                          f"final Pareto front: {'measured latency' if cost == 'latency' else 'MACs'} vs accuracy "
                          "(val split, inherited weights + short fine-tune)")
    logger.info("prune search: %d candidates over %d generations, front of %d%s", len(rows), strategy.generation + 1,
                len(front), "" if fits is None else
                f"; {strategy.skipped} encoding(s) over {search.max_latency_ms:g} ms skipped untrained")
    return PruneSearched(rows=tuple(rows), front=tuple(front), control=report, files=tuple(outcome.files))
