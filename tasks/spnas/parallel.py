"""Stage `parallel` of spnas/full (Vega SpNasP): on the reignited serial net, how many extra
parallel sub-networks K each stage gets; a sub-network is added to a stage with probability
inversely proportional to the MACs it adds (measured, not assumed).

Candidate 0 is the reignited net itself (no extra sub-networks) trained with the same budget,
so every parallel candidate is compared with its plain-FPN twin. The front weighs mAP against
`parallel.objective` (MACs as Vega, params, or the measured latency of backbone + FPN). The winner is the best-mAP
candidate within the resource limit (`parallel.max_params` / `parallel.max_macs`; default: the
starting network's figures, so the final detector is no larger than the baseline) and, when
`parallel.max_latency_ms` is set, within that measured latency of backbone + FPN (candidate 0, always
trained, is then timed too and chosen only if it fits)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger

from core.errors import InputError
from core.seeds import derive_seed
from latency.branch_costs import extra_macs_per_stage
from params.models import DetectorModel, DetectorTrainParams, ParallelSearchParams
from strategies.parallel import ParallelSearch
from tasks.orchestration.context import StageContext
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.search import (ControlReport, SearchSpec, candidate_files, choose, cost_column,
                                        fidelity_of, finalize, run_control, run_search)
from tasks.spnas.detectors import check_latency_met, desc_for, latency_of, limits_of, size_gate, size_limits
from tasks.spnas.fine_tune import FineTuned
from tasks.spnas.reignite import Reignited
from tasks.spnas.split import Split
from tasks.spnas.train_candidate import train_candidate_task
from tracking import tracker

STAGE = "parallel"


@dataclass(frozen=True, kw_only=True)
class ParallelSearched(StageResult):
    """The parallel search's outcome. `best`: the chosen candidate's result (the search driver's
    candidate dict: code, neck_code, desc, model_path, performance, ...), which fully_train trains
    longer; `rows`: the candidate table; `files`: the saved search state and every candidate's files."""

    best: dict[str, Any]
    rows: tuple[dict[str, Any], ...]
    extra_macs_per_stage: tuple[float, ...]   # what one more sub-network adds to each stage
    limits: Mapping[str, float]               # the params/MACs limits the winner respects
    control: ControlReport | None = None      # search vs a same-budget random control (parallel.control: random)
    max_latency_ms: float | None = None       # the measured-latency limit it respects (parallel.max_latency_ms)


def objectives(result: dict[str, Any]) -> dict[str, Any]:
    perf = result["performance"]
    latency = {"latency_ms": result["latency_ms"]} if "latency_ms" in result else {}
    return {"mAP": perf["mAP"], "macs": perf["macs"], "params": perf["params"], **latency}


def _row(result: dict[str, Any]) -> dict[str, Any]:
    perf = result.get("performance") or {}
    latency = {"latency_ms": result["latency_ms"]} if "latency_ms" in result else {}
    return {"code": result.get("code"), "neck_code": str(result.get("neck_code")),
            **{k: perf.get(k) for k in ("mAP", "mAP50", "params", "macs", "inherited_ratio", "train_seconds")},
            **latency, "status": "ok" if perf else "failed"}


def parallel_setup(data: Split, base: Reignited, start: FineTuned, model: DetectorModel,
                   parallel: ParallelSearchParams, seed: int
                   ) -> tuple[ParallelSearch, SearchSpec, dict[str, float], list[float]]:
    """The parallel search, its driver spec, the size limits and the extra MACs per stage: shared
    by the subflow and by benchmarks/plain_spnas.py, which drives the same search without Prefect."""
    num_stages = len(base.code.split("-"))
    cost = extra_macs_per_stage(base.code, model.block, model.image_size)
    limits = limits_of(parallel.max_params, parallel.max_macs, start.performance or {}, parallel.max_latency_ms)
    timed = parallel.max_latency_ms is not None or parallel.objective == "latency"
    latency = latency_of(model, data.num_classes, base.code) if timed else None
    if latency is not None and parallel.max_latency_ms is not None and (plain := latency([0] * num_stages)) > parallel.max_latency_ms:
        # Extra sub-networks only add work: the plain neck is the fastest of the space.
        raise InputError("parallel.max_latency_ms", f"{parallel.max_latency_ms:g} ms is below the reignited "
                                                    f"network's own {plain:.3f} ms ({base.code} with no extra "
                                                    "sub-networks, the fastest neck): no neck can fit")
    fits = size_gate(model, data.num_classes, limits, base.code, latency=latency)

    def sampler(max_sample: int, own_seed: int) -> ParallelSearch:
        return ParallelSearch(num_stages, cost, max_sample, own_seed, max_per_stage=parallel.max_per_stage,
                              max_additions=min(parallel.max_additions, num_stages * parallel.max_per_stage),
                              objective_keys=("mAP", cost_column(parallel.objective)), maximize=(True, False),
                              include_plain=True, fits=fits)

    search = sampler(parallel.max_sample, seed)

    def control(n: int) -> ParallelSearch:
        # SpNasP itself samples at random: the control is the same sampler on its own stream (n - 1 necks
        # beside the plain one, which both share), so it measures how much the draw alone decides.
        return sampler(max(0, n - 1), derive_seed(seed, "spnas.parallel.control"))

    def to_input(c: Any) -> dict[str, Any]:
        return {"id": c.id, "code": base.code, "neck_code": list(c.code),
                "desc": desc_for(model, data.num_classes, base.code, list(c.code)),
                "parent_model": base.model_path,
                # the figure the gate admitted it on (memoized; the plain candidate 0 is timed here)
                **({} if latency is None else {"latency_ms": latency(c.code)})}

    def remember(result: dict[str, Any]) -> None:
        if latency is not None and "latency_ms" in result:  # a resumed search keeps its figures
            latency.remember(result["neck_code"], result["latency_ms"])

    spec = SearchSpec(STAGE, train_candidate_task, parallel.batch, to_input, objectives, _row,
                      (cost_column(parallel.objective), "mAP"),
                      "SpNasP: neck codes (0 = no extra sub-networks)", on_result=remember,
                      control=control if parallel.control == "random" else None, fidelity=fidelity_of(parallel))
    return search, spec, limits, cost


@flow(name="parallel-search")
def parallel_search(data: Split, base: Reignited, start: FineTuned, model: DetectorModel,
                    optimizer: DetectorTrainParams, parallel: ParallelSearchParams, seed: int, ctx: StageContext,
                    refresh: bool = False) -> ParallelSearched:
    logger = get_run_logger()
    search, spec, limits, cost = parallel_setup(data, base, start, model, parallel, seed)
    with tracker.child_run(ctx.parent_run_id, "parallel_search",
                           {**parallel.model_dump(), "extra_macs_per_stage": cost, "limits": limits}) as run_id:
        common = dict(data=data, optimizer=optimizer, steps=parallel.full_steps, seed=seed, stage=STAGE)
        outcome = run_search(search, spec, ctx, run_id, refresh, **common)
        report = run_control(search, spec, outcome, ctx, run_id, refresh, limits, **common)
        if not outcome.ok(0):
            raise RuntimeError("the reignited net (candidate 0) failed to train in the parallel stage; see its log")
        check_latency_met(search, limits, "parallel.max_latency_ms")
        best = choose(search, limits, STAGE)
        rows = finalize(search, spec, outcome, ctx.work, best.id, parallel.keep_weights, needed=set())
        chosen = outcome.results[best.id]
        tracker.log_files(run_id, outcome.files, STAGE)
        tracker.set_tags(run_id, {"best_neck_code": str(chosen["neck_code"])})
        tracker.log_metrics(run_id, {"candidates": len(outcome.results), "best_mAP": chosen["performance"]["mAP"],
                                     "resumed_candidates": outcome.resumed_from, "skipped_over_limit": search.skipped,
                                     **({"best_latency_ms": chosen["latency_ms"]} if "latency_ms" in chosen else {})})
    logger.info("parallel search chose neck %s (mAP %.4f; plain FPN %.4f; limits %s; %d neck(s) over them skipped "
                "untrained)", chosen["neck_code"], chosen["performance"]["mAP"],
                outcome.results[0]["performance"]["mAP"], limits, search.skipped)
    return ParallelSearched(best=chosen, rows=tuple(rows), extra_macs_per_stage=tuple(cost),
                            limits=size_limits(limits), max_latency_ms=parallel.max_latency_ms, control=report,
                            files=(*outcome.files, *candidate_files(outcome)))
