"""Stage `serial` of spnas/full (Vega SpNasS): swap / expand / add-stage mutations of the
backbone code, parents from the [mAP, params] Pareto front (`serial.objective`: params, MACs or the
measured latency of backbone + FPN), every child inheriting its parent's
tensors by name and shape. The winner is the best-mAP candidate within the resource limit
(`serial.max_params` / `serial.max_macs`; default: the starting network's own figures) and, when
`serial.max_latency_ms` is set, within that measured latency of backbone + FPN (the start, always
trained, is then timed too and chosen only if it fits).

A stage that loops ask → evaluate → tell is a subflow, not a task: the candidates are tasks
mapped over a task runner (tasks/orchestration/search.py drives the loop), and a task must never block on
other tasks' futures.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from prefect import flow, get_run_logger

from core.seeds import derive_seed
from params.models import DetectorModel, DetectorTrainParams, SerialSearchParams
from strategies.serial import SerialSearch, SerialSearchConfig
from tasks.orchestration.context import StageContext
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.search import (ControlReport, SearchSpec, candidate_files, choose, cost_column,
                                        fidelity_of, finalize, own_rows, run_control, run_search)
from tasks.spnas.detectors import check_latency_met, desc_for, latency_of, limits_of, size_gate, size_limits
from tasks.spnas.fine_tune import FineTuned
from tasks.spnas.split import Split
from tasks.spnas.train_candidate import train_candidate_task
from tracking import tracker

STAGE = "serial"


@dataclass(frozen=True, kw_only=True)
class SerialSearched(StageResult):
    """The serial search's outcome. `best`: the chosen candidate's result (the search driver's
    candidate dict: code, desc, model_path, performance, ...), which reignite trains on; `rows`:
    the candidate table; `files`: the saved search state and every candidate's files."""

    best: dict[str, Any]
    rows: tuple[dict[str, Any], ...]
    mutation_kinds: tuple[str, ...]     # the mutation kinds the candidates used, sorted
    limits: Mapping[str, float]         # the params/MACs limits the winner respects
    control: ControlReport | None = None  # search vs a same-budget random control (serial.control: random)
    max_latency_ms: float | None = None   # the measured-latency limit it respects (serial.max_latency_ms)


def search_config(serial: SerialSearchParams) -> SerialSearchConfig:
    return SerialSearchConfig(max_sample=serial.max_sample, max_optimal=serial.max_optimal,
                              num_mutate=serial.num_mutate, add_stage_ratio=serial.add_stage_ratio,
                              expend_ratio=serial.expend_ratio, max_stages=serial.max_stages,
                              objective_keys=("mAP", cost_column(serial.objective)), maximize=(True, False))


def _row(result: dict[str, Any]) -> dict[str, Any]:
    perf = result.get("performance") or {}
    latency = {"latency_ms": result["latency_ms"]} if "latency_ms" in result else {}
    return {"code": result.get("code"), "parent_id": result.get("parent_id"), "mutations": result.get("mutations", ""),
            **{k: perf.get(k) for k in ("mAP", "mAP50", "params", "macs", "inherited_ratio", "train_seconds")},
            **latency, "status": "ok" if perf else "failed"}


def objectives(result: dict[str, Any]) -> dict[str, Any]:
    """What the strategy is told: mAP, params and MACs (objectives and limits) and, with a latency
    limit or objective, the latency measured at proposal time (so the choice respects it)."""
    perf = result["performance"]
    latency = {"latency_ms": result["latency_ms"]} if "latency_ms" in result else {}
    return {"mAP": perf["mAP"], "params": perf["params"], "macs": perf["macs"], **latency}


def serial_setup(data: Split, start: FineTuned, model: DetectorModel, serial: SerialSearchParams,
                 seed: int) -> tuple[SerialSearch, SearchSpec, dict[str, float]]:
    """The serial search, its driver spec and the limits the winner must respect (params, MACs
    and, when set, `latency_ms`): shared by the subflow and by benchmarks/plain_spnas.py, which
    drives the same search without Prefect."""
    limits = limits_of(serial.max_params, serial.max_macs, start.performance or {}, serial.max_latency_ms)
    timed = serial.max_latency_ms is not None or serial.objective == "latency"
    latency = latency_of(model, data.num_classes, predictor_file=serial.latency_predictor) if timed else None
    fits = size_gate(model, data.num_classes, limits, latency=latency)
    search = SerialSearch([model.backbone_code], search_config(serial), seed=seed, fits=fits)

    def control(n: int) -> SerialSearch:
        # The same mutations, always of the start code (no front): a random sample around it, n in all.
        config = replace(search_config(serial), max_sample=n, parents="start")
        return SerialSearch([model.backbone_code], config, seed=derive_seed(seed, "spnas.serial.control"), fits=fits)

    model_of: dict[int | None, str] = {None: start.model_path}  # the start net inherits fine_tune's weights

    def to_input(c: Any) -> dict[str, Any]:
        return {"id": c.id, "code": c.code, "parent_id": c.parent_id, "mutations": "+".join(c.mutations),
                "desc": desc_for(model, data.num_classes, c.code), "parent_model": model_of[c.parent_id],
                "freeze": bool(serial.freeze_inherited and c.parent_id is not None),
                # the figure the gate admitted it on (memoized; the start is timed here)
                **({} if latency is None else {"latency_ms": latency(c.code)})}

    def remember(result: dict[str, Any]) -> None:
        model_of[result["id"]] = result["model_path"]  # children inherit from their parent's file
        if latency is not None and "latency_ms" in result:  # a resumed search keeps its figures
            latency.remember(result["code"], result["latency_ms"])

    spec = SearchSpec(STAGE, train_candidate_task, serial.batch, to_input, objectives, _row,
                      (cost_column(serial.objective), "mAP"),
                      "SpNasS: backbone codes", on_result=remember,
                      control=control if serial.control == "random" else None, fidelity=fidelity_of(serial))
    return search, spec, limits


@flow(name="serial-search")
def serial_search(data: Split, start: FineTuned, model: DetectorModel, optimizer: DetectorTrainParams,
                  serial: SerialSearchParams, seed: int, ctx: StageContext, refresh: bool = False) -> SerialSearched:
    logger = get_run_logger()
    search, spec, limits = serial_setup(data, start, model, serial, seed)
    with tracker.child_run(ctx.parent_run_id, "serial_search", {**serial.model_dump(), "limits": limits}) as run_id:
        common = dict(data=data, optimizer=optimizer, steps=serial.full_steps, seed=seed, stage=STAGE)
        outcome = run_search(search, spec, ctx, run_id, refresh, **common)
        report = run_control(search, spec, outcome, ctx, run_id, refresh, limits, **common)
        check_latency_met(search, limits, "serial.max_latency_ms")
        best = choose(search, limits, STAGE)
        rows = finalize(search, spec, outcome, ctx.work, best.id, serial.keep_weights, needed=set())
        kinds = sorted({k for r in own_rows(rows) for k in str(r["mutations"]).split("+") if k})
        chosen = outcome.results[best.id]
        tracker.log_files(run_id, outcome.files, STAGE)
        tracker.log_metrics(run_id, {"candidates": len(outcome.results), "best_mAP": chosen["performance"]["mAP"],
                                     "resumed_candidates": outcome.resumed_from, "skipped_over_limit": search.skipped,
                                     **({"best_latency_ms": chosen["latency_ms"]} if "latency_ms" in chosen else {})})
        tracker.set_tags(run_id, {"best_code": best.code, "mutation_kinds": ",".join(kinds)})
    logger.info("serial search chose %s (mAP %.4f, %.2fM params; limits %s; %d proposal(s) over them skipped "
                "untrained); mutation kinds seen: %s", best.code, chosen["performance"]["mAP"],
                chosen["performance"]["params"] / 1e6, limits, search.skipped, kinds)
    return SerialSearched(best=chosen, rows=tuple(rows), mutation_kinds=tuple(kinds), limits=size_limits(limits),
                          control=report, max_latency_ms=serial.max_latency_ms,
                          files=(*outcome.files, *candidate_files(outcome)))

