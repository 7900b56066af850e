"""Stage `search` of spos/full: SPOS evolution under a MACs limit, every candidate scored with
the supernet's weights after BN recalibration (strategies/evolution.py decides what to try;
the shared search driver in tasks/orchestration/search.py runs it, one generation per batch, resumable).

Files: output.csv (+ .parquet: id, generation, choices, macs, params, acc), topk.csv (the top-k
as it stood after each generation), architecture_final.json (the winner: choices, MACs, params,
supernet accuracy, the limit it respects).

`search.max_latency_ms`: a path within the MACs limit is then built as the stand-alone network
retrain would train and timed (latency/direct.py) before it is scored; one over the limit is
never evaluated (counted: `skipped_over_limit`), and output.csv gets the scored ones' `latency_ms`."""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from prefect import flow, get_run_logger

from core.errors import InputError
from core.seeds import derive_seed
from engine.runtime import configure_torch, resolve_device
from latency.direct import NetworkLatency, network_latency
from latency.predictor import LatencySpace
from latency.trace import ops_of_network
from nas_models.spos_shufflenet import NUM_CHOICES, build_subnet, get_preset
from params.models import EvolutionParams, Runtime
from strategies.evolution import EvolutionSearch
from tasks.cifar.data import CifarSplit
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import write_json
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.pipeline import candidate_run_name
from tasks.orchestration.search import (ControlReport, SearchSpec, candidate_task, finalize, own_rows, run_control,
                                        run_search)
from tasks.orchestration.tables import write_table
from tasks.spos.shared import supernet_score
from tasks.spos.supernet import TrainedSupernet
from tracking import tracker

STAGE = "search"


@dataclass(frozen=True, kw_only=True)
class FinalArchitecture:
    """The winner, as architecture_final.json holds it (these fields, in this order)."""

    choices: tuple[int, ...]
    macs: int
    params: int
    supernet_acc: float
    macs_limit: int        # the limit the search respected
    preset: str
    candidate_id: int
    generation: int
    latency_ms: float | None = None      # measured at proposal time, with search.max_latency_ms set
    max_latency_ms: float | None = None  # that limit


@dataclass(frozen=True, kw_only=True)
class SposSearched(StageResult):
    """The search's table rows (output.csv) and its winner, which `retrain` trains from scratch;
    `files`: the saved state, output.csv (+ .parquet), topk.csv, architecture_final.json."""

    rows: tuple[dict[str, Any], ...]
    final: FinalArchitecture
    control: ControlReport | None = None   # search vs a same-budget random control (search.control: random)


def choices_text(choices: list[int]) -> str:
    return "".join(str(c) for c in choices)


def path_network(preset: str, num_classes: int) -> Callable[[Any], tuple[torch.nn.Module, torch.Tensor]]:
    """choices -> (the stand-alone network retrain would build, `build_subnet`; one 1x3xSxS
    image at the preset's input size): what a path's latency is measured on."""
    size = get_preset(preset).input_size

    def build(choices: Any) -> tuple[torch.nn.Module, torch.Tensor]:
        return build_subnet(list(choices), preset, num_classes), torch.rand(1, 3, size, size)

    return build


def path_latency(preset: str, num_classes: int, predictor_file: str | None = None,
                 threads: int = 1) -> NetworkLatency:
    """Memoized latency (ms) of `path_network` (the space's builder): measured here with ONNX Runtime (latency.direct:
    cost per proposal, noise), or predicted by `predictor_file` (checked against the space first)."""
    space = latency_space(preset, num_classes)
    return network_latency(space.build, predictor_file, threads, space=space, field_name="search.latency_predictor")


def latency_space(preset: str, num_classes: int = 10) -> LatencySpace:
    """The SPOS path space of `preset` for a latency table and predictor (latency.predictor):
    the table lists every op of the space, the fitting and held-out paths are uniformly random."""
    blocks = sum(get_preset(preset).stage_blocks)

    def sample(count: int, seed: int) -> list[tuple[int, ...]]:
        rng = random.Random(derive_seed(seed, "spos.latency_space"))
        seen: dict[tuple[int, ...], None] = {}
        while len(seen) < count:
            seen.setdefault(tuple(rng.randrange(NUM_CHOICES) for _ in range(blocks)), None)
        return list(seen)

    def space_ops() -> list[dict[str, Any]]:
        # A block's ops depend on its own choice only: the uniform paths run every op of the space.
        return [op for c in range(NUM_CHOICES) for op in ops_of_network(*build((c,) * blocks)).ops]

    size, build = get_preset(preset).input_size, path_network(preset, num_classes)
    return LatencySpace(f"spos-{preset}-{size}px-{num_classes}cls", build, sample,
                        describe=lambda c: "".join(map(str, c)),
                        note=f"SPOS ShuffleNetV2 paths, preset {preset} at {size} px, {num_classes} classes (spos/full)",
                        ops=space_ops)


def evaluate_candidate(candidate: dict[str, Any], supernet: TrainedSupernet, data: CifarSplit,
                       search: EvolutionParams, convention: str, seed: int, runtime: Runtime,
                       out_dir: Path) -> dict[str, Any]:
    configure_torch(runtime.num_threads, seed)
    table = supernet.table()
    choices = list(candidate["choices"])
    acc = supernet_score(supernet.load(), choices, data, search.recalib_batches, search.batch_size, seed, convention,
                         resolve_device(runtime.device))
    performance = {"acc": acc, "macs": table.macs(choices), "params": table.params(choices),
                   "recalib_batches": search.recalib_batches}
    desc = {"type": "SposSubnet", "choices": choices, "preset": supernet.preset, "num_classes": supernet.num_classes}
    cid = candidate["id"]
    files = [str(write_json(out_dir / f"desc_{cid}.json", desc)),
             str(write_json(out_dir / f"performance_{cid}.json", performance))]
    return {**candidate, "performance": performance, "desc": desc, "files": files}


@candidate_task(name="spos_candidate",
                task_run_name=candidate_run_name(lambda c: f"path-{c.get('id', '?')}-g{c.get('generation', '?')}"))
def spos_candidate_task(candidate: dict[str, Any], supernet: TrainedSupernet, data: CifarSplit,
                        search: EvolutionParams, convention: str, seed: int, ctx: StageContext) -> dict[str, Any]:
    """One path scored with supernet weights; its MLflow run holds choices, MACs, params, accuracy."""
    params = {"id": candidate["id"], "generation": candidate["generation"],
              "choices": choices_text(candidate["choices"])}
    with tracker.child_run(ctx.parent_run_id, f"path-{candidate['id']}", params) as run_id:
        out = evaluate_candidate(candidate, supernet, data, search, convention, seed, ctx.runtime, ctx.work)
        tracker.log_metrics(run_id, out["performance"])
        tracker.log_files(run_id, out["files"], "candidate")
    perf = out["performance"]
    get_run_logger().info("path %s (generation %s) %s: supernet acc %.4f  MACs %.2fM", candidate["id"],
                          candidate["generation"], params["choices"], perf["acc"], perf["macs"] / 1e6)
    return out


def _row(result: dict[str, Any]) -> dict[str, Any]:
    perf = result.get("performance") or {}
    latency = {"latency_ms": result["latency_ms"]} if "latency_ms" in result else {}
    return {"generation": result.get("generation"), "origin": result.get("origin"),
            "choices": choices_text(result.get("choices", [])),
            "macs": perf.get("macs", result.get("macs")), "params": perf.get("params"), "acc": perf.get("acc"),
            **latency, "status": "ok" if perf else "failed"}


def check_any_fits(strategy: EvolutionSearch, limit_ms: float | None) -> None:
    """One clear error when a latency limit left no path to score."""
    if limit_ms is not None and not strategy.history:
        raise InputError("search.max_latency_ms", f"no path within the MACs limit was within {limit_ms:g} ms "
                                                  f"({strategy.skipped} timed and over it); raise the limit")


def topk_rows(strategy: EvolutionSearch, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_id = {r["id"]: r for r in rows}
    out = []
    for g in range(strategy.generation + 1):
        for rank, cid in enumerate(strategy.topk_of_generation(g), 1):
            if cid in by_id:
                r = by_id[cid]
                out.append({"generation": g, "rank": rank, "id": cid, "choices": r["choices"], "macs": r["macs"],
                            "acc": r["acc"]})
    return out


def topk_file(strategy: EvolutionSearch, rows: list[dict[str, Any]], work: Path) -> list[str]:
    return [str(p) for p in write_table(topk_rows(strategy, rows), work / "topk.csv")]


@flow(name="spos-search")
def spos_search(supernet: TrainedSupernet, data: CifarSplit, search: EvolutionParams, convention: str, seed: int,
                ctx: StageContext, refresh: bool = False) -> SposSearched:
    logger = get_run_logger()
    table = supernet.table()
    limit = search.macs_limit or (table.min_macs() + table.max_macs()) // 2
    # One memo for the search and its control: a path both draw is timed once.
    latency = (path_latency(supernet.preset, supernet.num_classes, search.latency_predictor)
               if search.max_latency_ms is not None else None)
    if latency is not None:
        logger.info("latency figures: %s", latency.source)
    fits = latency.fits(search.max_latency_ms) if latency is not None else None
    strategy = EvolutionSearch(
        table.macs, limit, seed, num_blocks=table.n_blocks, num_choices=len(table.per_block[0]),
        population=search.population, topk=search.topk, mutation_count=search.mutation_count,
        mutation_prob=search.mutation_prob, crossover_count=search.crossover_count, generations=search.generations,
        min_macs=table.min_macs(), fits=fits)

    def control(n: int) -> EvolutionSearch:
        # The space's own sampler: evolution's generation 0 (uniform paths within the limit), n of them.
        return EvolutionSearch(table.macs, limit, derive_seed(seed, "spos.control"), num_blocks=table.n_blocks,
                               num_choices=len(table.per_block[0]), population=n, topk=min(search.topk, n),
                               mutation_count=0, crossover_count=0, generations=1, min_macs=table.min_macs(),
                               fits=fits)

    def to_input(c: Any) -> dict[str, Any]:
        # with a latency limit: the figure the gate admitted the path on (memoized)
        return {"id": c.id, "generation": c.generation, "choices": list(c.choices), "macs": c.macs,
                "origin": c.origin, **({} if latency is None else {"latency_ms": latency(c.choices)})}

    spec = SearchSpec(STAGE, spos_candidate_task, max(search.population, search.mutation_count + search.crossover_count),
                      to_input,
                      lambda r: {k: r["performance"][k] for k in ("acc", "macs", "params")}, _row, ("macs", "acc"),
                      f"SPOS evolution (MACs <= {limit / 1e6:.2f}M"
                      + ("" if latency is None else f", latency <= {search.max_latency_ms:g} ms") + ")",
                      extra_outputs=topk_file,
                      control=control if search.control == "random" else None)
    params = {**search.model_dump(), "macs_limit_used": limit}
    with tracker.child_run(ctx.parent_run_id, STAGE, params) as run_id:
        common = dict(supernet=supernet, data=data, search=search, convention=convention, seed=seed)
        outcome = run_search(strategy, spec, ctx, run_id, refresh, **common)
        check_any_fits(strategy, search.max_latency_ms)
        report = run_control(strategy, spec, outcome, ctx, run_id, refresh, {"macs": limit}, **common)
        best = strategy.best()
        rows = finalize(strategy, spec, outcome, ctx.work, best.id, "all", needed=set())
        winner = next(r for r in own_rows(rows) if r["id"] == best.id)
        final = FinalArchitecture(choices=tuple(best.choices), macs=winner["macs"], params=winner["params"],
                                  supernet_acc=winner["acc"], macs_limit=limit, preset=supernet.preset,
                                  candidate_id=best.id, generation=winner["generation"],
                                  latency_ms=winner.get("latency_ms"), max_latency_ms=search.max_latency_ms)
        final_path = write_json(ctx.work / "architecture_final.json", asdict(final))
        outcome.files.append(str(final_path))
        tracker.log_files(run_id, outcome.files, STAGE)
        tracker.log_metrics(run_id, {"candidates": len(own_rows(rows)), "best_supernet_acc": winner["acc"],
                                     "best_macs": winner["macs"], "macs_limit": limit,
                                     "rejected_over_limit": sum(strategy.rejected_over_limit),
                                     "resumed_candidates": outcome.resumed_from,
                                     **({} if latency is None else {"skipped_over_limit": strategy.skipped,
                                                                    "best_latency_ms": winner["latency_ms"]})})
    tracker.publish_table("spos-topk", topk_rows(strategy, rows), "top-k per generation (supernet accuracy on val)")
    logger.info("search: %d paths over %d generations under %.2fM MACs%s (%d proposals over the limits never "
                "evaluated); winner %s  %.2fM MACs  supernet acc %.4f", len(own_rows(rows)), strategy.generation + 1,
                limit / 1e6, "" if latency is None else f" and {search.max_latency_ms:g} ms",
                sum(strategy.rejected_over_limit), winner["choices"], winner["macs"] / 1e6, winner["acc"])
    return SposSearched(rows=tuple(rows), final=final, control=report, files=tuple(outcome.files))
