"""spnas/full without Prefect or MLflow: the same plain stage functions the flow's tasks wrap,
called in the flow's order with the same parameters, each stage timed. Used by
benchmarks/orchestration_overhead.py as the "plain" side.

Every stage has a plain function beside its task (detection_sources, split_detection,
fine_tune_detector, reignite_backbone, train_full + comparison_rows, export_stage) except the
two search stages, whose subflows map candidate *tasks*. `search_loop` below runs the same
driver loop (tasks/orchestration/search.py `drive`, `choose`, `finalize`) with the same strategy and spec
(the subflows' own `serial_setup` / `parallel_setup`),
the candidates trained by the plain function (`train_candidate`), the same files written after
every batch — minus the Prefect artifacts and MLflow plots.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flows.sp_nas import summarize, to_fully_train
from params.models import Runtime, SpnasParams, runtime_of
from tasks.orchestration.files import write_json
from tasks.orchestration.search import STATE_FILE, SearchOutcome, SearchSpec, _rows, choose, drive, finalize, save_state
from tasks.orchestration.tables import write_table
from tasks.spnas import parallel as par
from tasks.spnas import serial as ser
from tasks.spnas.data import detection_sources
from tasks.spnas.detectors import size_limits
from tasks.spnas.export import export_stage
from tasks.spnas.fine_tune import fine_tune_detector
from tasks.spnas.fine_tune import FineTuned
from tasks.spnas.fully_train import Compared, comparison_rows, train_full
from tasks.spnas.reignite import Reignited, reignite_backbone
from tasks.spnas.split import Split, split_detection
from tasks.spnas.train_candidate import train_candidate


class StageClock:
    """Wall seconds per stage name (a name used twice accumulates)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0


def search_loop(strategy: Any, spec: SearchSpec, work: Path, train: dict[str, Any]) -> SearchOutcome:
    """tasks/orchestration/search.py's ask/evaluate/tell loop (`drive`) on a fresh work folder, the candidates
    trained one after another by the plain function instead of mapped Prefect tasks."""
    results: dict[int, dict[str, Any]] = {}

    def evaluate(inputs: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        outs: list[dict[str, Any] | None] = []
        for inp in inputs:
            try:
                outs.append(train_candidate(inp, out_dir=work, stage=spec.stage, **train))  # the flow's stage name
            except Exception:  # as the flow's map_candidates: a failed candidate is told None
                outs.append(None)
        return outs

    for _ in drive(strategy, spec, results, evaluate):
        save_state(work / STATE_FILE, strategy, results)
        write_table(_rows(spec, results, strategy.pareto_ids()), work / spec.table)
    return SearchOutcome(results, strategy.pareto_ids(), 0, [str(work / STATE_FILE)])


def finish_search(strategy: Any, spec: SearchSpec, outcome: SearchOutcome, work: Path, limits: dict[str, float],
                  policy: str) -> tuple[Any, list[dict[str, Any]]]:
    """tasks/orchestration/search.py `choose` + `finalize`, as the subflows call them."""
    best = choose(strategy, limits, spec.stage)
    return best, finalize(strategy, spec, outcome, work, best.id, policy, set())


def serial_plain(p: SpnasParams, data: Split, start: FineTuned, runtime: Runtime,
                 work: Path) -> ser.SerialSearched:
    """What the `serial_search` subflow computes."""
    cfg = p.serial
    search, spec, limits = ser.serial_setup(data, start, p.model, cfg, p.seed)
    train = {"data": data, "optimizer": p.optimizer, "steps": cfg.candidate_steps, "seed": p.seed, "runtime": runtime}
    outcome = search_loop(search, spec, work, train)
    best, rows = finish_search(search, spec, outcome, work, limits, cfg.keep_weights)
    kinds = sorted({k for r in rows for k in str(r["mutations"]).split("+") if k})
    return ser.SerialSearched(best=outcome.results[best.id], rows=tuple(rows), mutation_kinds=tuple(kinds),
                              limits=size_limits(limits), max_latency_ms=cfg.max_latency_ms)


def parallel_plain(p: SpnasParams, data: Split, base: Reignited, start: FineTuned,
                   runtime: Runtime, work: Path) -> par.ParallelSearched:
    """What the `parallel_search` subflow computes."""
    cfg = p.parallel
    search, spec, limits, cost = par.parallel_setup(data, base, start, p.model, cfg, p.seed)
    train = {"data": data, "optimizer": p.optimizer, "steps": cfg.candidate_steps, "seed": p.seed, "runtime": runtime}
    outcome = search_loop(search, spec, work, train)
    if not outcome.ok(0):
        raise RuntimeError("the reignited net (candidate 0) failed to train in the parallel stage")
    best, rows = finish_search(search, spec, outcome, work, limits, cfg.keep_weights)
    return par.ParallelSearched(best=outcome.results[best.id], rows=tuple(rows), extra_macs_per_stage=tuple(cost),
                                limits=size_limits(limits), max_latency_ms=cfg.max_latency_ms)


def run_spnas_plain(p: SpnasParams, run_dir: Path, clock: StageClock) -> dict[str, Any]:
    """The spnas flow's stages in its order, each in its own folder under `run_dir`; returns the
    flow's summary figures (flows/sp_nas.py `summarize`)."""
    # Candidates one at a time with the run's runtime: the flow's default (candidate_workers 1, no
    # dask_address); with more workers the flow would train candidates side by side.
    runtime = runtime_of(p)

    def folder(stage: str) -> Path:
        path = run_dir / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "params.json", p.model_dump(mode="json"))
    with clock("data"):
        sources = detection_sources(p.data, p.model.image_size, p.seed)
        write_json(folder("data") / "sources.json", sources.record())
    with clock("split"):
        data = split_detection(sources, p.data, p.seed, folder("split"))
    with clock("fine_tune"):
        start = fine_tune_detector(data, p.model, p.optimizer, p.fine_tune, p.seed, runtime, folder("fine_tune"))
    with clock("serial"):
        serial = serial_plain(p, data, start, runtime, folder("serial"))
    with clock("reignite"):
        reignited = reignite_backbone(data, serial.best, p.model, p.optimizer, p.reignite, p.seed, runtime,
                                      folder("reignite"))
    with clock("parallel"):
        parallel = parallel_plain(p, data, reignited, start, runtime, folder("parallel"))
    with clock("fully_train"):
        out = folder("fully_train")
        trained = [train_full(c, data, p.optimizer, p.fully_train, p.seed, runtime, out)
                   for c in to_fully_train(parallel, start, p.fully_train.baseline)]
        rows = comparison_rows(trained, parallel.limits)
        compared = Compared(rows=tuple(rows), files=tuple(str(f) for f in write_table(rows, out / "output.csv")))
    with clock("export"):
        exported = export_stage(trained[0], data, p.export, p.seed, runtime, folder("export"))
    summary = summarize(trained, compared, serial, parallel, exported)
    write_json(run_dir / "summary.json", summary)
    return summary
