"""The one search driver every search stage uses: ask → map candidate tasks → tell, resumable.

Given an ask/tell strategy (strategies/: it sees only candidates and numbers), a candidate task
and the stage's work folder, `run_search` loops until the strategy is done. After every batch
it writes `search_state.json` (the strategy's state_dict, RNG included, plus every told
candidate's result), the candidates table (`output.csv` + `output.parquet`), a Prefect progress
artifact and table (Pareto members marked), and the Pareto plot in MLflow.

Started again on the same work folder (same stage key: same inputs and code) it loads the saved
state and continues: candidates already told are not evaluated again. A candidate that finished
in a killed batch but was never told comes back from Prefect's result cache.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from core.errors import InputError
from engine.runtime import dask_worker
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import read_json, write_json
from tasks.orchestration.pipeline import map_candidates
from tasks.orchestration.tables import write_table
from tracking import tracker

STATE_FILE = "search_state.json"
TABLE_FILE = "output.csv"
KEEP_ALL_UP_TO = 100  # keep_weights "auto": every candidate's weights up to this many, the front above


def _logger() -> Any:
    """The Prefect run logger inside a flow or task run; a plain logger when the driver is
    called outside one (benchmarks calling the stage functions plainly)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("spnas.search")


def dask_worker_address() -> str | None:
    """The address of the Dask worker running the caller, or None outside a Dask worker."""
    worker = dask_worker()
    return None if worker is None else worker.address


def candidate_task(name: str, task_run_name: Callable[[], str]) -> Callable[[Callable[..., dict[str, Any]]], Any]:
    """The decorator of every search stage's candidate task: a persisted, stage-cached Prefect
    task whose result records `worker`, the Dask worker that evaluated it (None when not on Dask),
    so users and tests can see how a cluster spread the candidates."""
    def decorate(fn: Callable[..., dict[str, Any]]) -> Any:
        @functools.wraps(fn)  # the cache key and Prefect's parameters follow the wrapped function
        def recorded(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return {**fn(*args, **kwargs), "worker": dask_worker_address()}

        return task(name=name, task_run_name=task_run_name, persist_result=True, cache_policy=STAGE_CACHE)(recorded)

    return decorate


class Strategy(Protocol):
    """What the driver needs of a strategy (strategies.ask_tell.AskTellSearch has it all)."""

    done: bool
    budget: int
    candidates: list[Any]

    def ask(self, n: int) -> list[Any]: ...
    def tell(self, candidate_id: int, metrics: dict[str, Any] | None) -> None: ...
    def pending_ids(self) -> list[int]: ...
    def pareto_ids(self) -> list[int]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class SearchSpec:
    """How one search stage maps between its strategy and its candidate task."""

    stage: str                                   # folder/run name, e.g. "serial"
    task: Any                                    # the candidate task (mapped)
    batch: int                                   # candidates asked (and mapped) per round
    to_input: Callable[[Any], dict[str, Any]]    # strategy candidate -> task input (with "id")
    metrics_of: Callable[[dict[str, Any]], dict[str, Any]]  # task result -> metrics told
    row_of: Callable[[dict[str, Any]], dict[str, Any]]      # task result (or failed input) -> table row
    plot: tuple[str, str] = ("params", "mAP")    # x, y of the Pareto plot
    title: str = ""
    # Called with every successful result, restored ones included (e.g. to remember weight files
    # that children inherit from).
    on_result: Callable[[dict[str, Any]], None] | None = None
    table: str = TABLE_FILE                      # the candidates table's name (PruneEA: result.csv)
    # More files a stage writes after every batch from the strategy and the rows (e.g. the
    # Pareto front and per-generation fronts); returns their paths.
    extra_outputs: Callable[[Any, list[dict[str, Any]], Path], list[str]] | None = None


@dataclass
class SearchOutcome:
    results: dict[int, dict[str, Any]]           # id -> task result ("status": "failed" if it failed)
    front: list[int]
    resumed_from: int                            # candidates already told when this run started
    files: list[str] = field(default_factory=list)

    def ok(self, cid: int) -> bool:
        return self.results[cid].get("status") != "failed"


def _rows(spec: SearchSpec, results: dict[int, dict[str, Any]], front: list[int],
          chosen: int | None = None) -> list[dict[str, Any]]:
    rows = []
    on_dask = any(r.get("worker") for r in results.values())  # the column only when a cluster was used
    for cid in sorted(results):
        row = {"id": cid, **spec.row_of(results[cid]), "pareto": cid in front}
        if on_dask:
            row["worker"] = results[cid].get("worker")
        if chosen is not None:
            row["chosen"] = cid == chosen
        rows.append(row)
    return rows


def drive(strategy: Strategy, spec: SearchSpec, results: dict[int, dict[str, Any]],
          evaluate: Callable[[list[dict[str, Any]]], list[dict[str, Any] | None]]) -> Iterator[None]:
    """The ask → evaluate → tell loop: yields after every batch, `results` updated in place (a
    failed candidate, evaluated as None, is told None and kept as a "failed" row). `evaluate`
    maps candidate inputs to results: Prefect tasks in run_search, plain calls in benchmarks."""
    while not strategy.done:
        pending = strategy.pending_ids()
        batch = [strategy.candidates[i] for i in pending] if pending else strategy.ask(spec.batch)
        if not batch:
            break
        inputs = [spec.to_input(c) for c in batch]
        for cand, inp, out in zip(batch, inputs, evaluate(inputs)):
            strategy.tell(cand.id, spec.metrics_of(out) if out else None)
            results[cand.id] = out if out else {**inp, "status": "failed"}
            if out and spec.on_result:
                spec.on_result(out)
        yield


def save_state(path: Path, strategy: Strategy, results: dict[int, dict[str, Any]]) -> None:
    """The search's resumable state: the strategy's and every candidate's result so far."""
    write_json(path, {"strategy": strategy.state_dict(), "results": {str(k): v for k, v in results.items()}})


def run_search(strategy: Strategy, spec: SearchSpec, ctx: StageContext, stage_run_id: str, refresh: bool,
               **common: Any) -> SearchOutcome:
    """Drive `strategy` to the end in `ctx`'s work folder; every candidate task gets `ctx` with
    `stage_run_id` (the search's own MLflow run) as its parent run, and `common` unmapped."""
    logger = _logger()
    work = ctx.work
    candidate_ctx = ctx.under(stage_run_id)
    state_path = work / STATE_FILE
    results: dict[int, dict[str, Any]] = {}
    if state_path.exists() and not refresh:
        saved = read_json(state_path)
        strategy.load_state_dict(saved["strategy"])
        results = {int(k): v for k, v in saved["results"].items()}
        logger.info("%s: resuming a saved search: %d candidate(s) already evaluated", spec.stage, len(results))
        for result in results.values():
            if spec.on_result and result.get("status") != "failed":
                spec.on_result(result)
    resumed_from = len(results)
    progress = tracker.Progress(f"{spec.stage}-search-progress", f"{spec.stage} search: candidates evaluated")
    def evaluate(inputs: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        return map_candidates(spec.task, inputs, candidate_ctx, refresh=refresh, **common)

    for _ in drive(strategy, spec, results, evaluate):
        front = strategy.pareto_ids()
        save_state(state_path, strategy, results)
        rows = _rows(spec, results, front)
        write_table(rows, work / spec.table)
        if spec.extra_outputs:
            spec.extra_outputs(strategy, rows, work)
        done = len(results)
        progress.update(done / max(1, strategy.budget), done=done, total=strategy.budget,
                        best=tracker.Progress.best_of(rows, spec.plot[1]))
        tracker.publish_table(f"{spec.stage}-search-candidates", rows, f"{spec.title} (pareto = on the front)")
        x, y = spec.plot
        tracker.log_pareto_plot(stage_run_id, [r for r in rows if r.get("status") != "failed"], x, y, "pareto",
                                f"{spec.stage}/pareto.png", f"{spec.title}: {y} vs {x}")
        logger.info("%s search: %d/%d candidates evaluated, front %s", spec.stage, done, strategy.budget, front)
    progress.update(1.0, done=len(results), total=len(results),
                    best=tracker.Progress.best_of(_rows(spec, results, []), spec.plot[1]))
    return SearchOutcome(results, strategy.pareto_ids(), resumed_from, [str(state_path)])


def keep_weights(outcome: SearchOutcome, policy: str, needed: set[int]) -> list[int]:
    """Delete `model_<id>.pth` of candidates the policy drops (all | pareto | best | auto), never
    one in `needed` (what later stages read). Returns the ids whose weights were removed."""
    if policy not in ("auto", "all", "pareto", "best"):
        raise InputError("keep_weights", f"{policy!r} is not one of auto, all, pareto, best")
    if policy == "auto":
        policy = "all" if len(outcome.results) <= KEEP_ALL_UP_TO else "pareto"
    if policy == "all":
        return []
    keep = set(needed) | (set(outcome.front) if policy == "pareto" else set())
    removed = []
    for cid, result in outcome.results.items():
        path = result.get("model_path")
        if cid in keep or not path or not Path(path).exists():
            continue
        Path(path).unlink()
        result["files"] = [f for f in result.get("files", []) if f != path]
        result["model_path"] = None
        removed.append(cid)
    return removed


def finalize(strategy: Strategy, spec: SearchSpec, outcome: SearchOutcome, work_dir: str | Path, chosen: int,
             policy: str, needed: set[int]) -> list[dict[str, Any]]:
    """After the choice: prune weights per `policy`, write the final table (with `chosen`) and
    state. Returns the table rows."""
    work = Path(work_dir)
    removed = keep_weights(outcome, policy, needed | {chosen})
    if removed:
        _logger().info("%s: removed the weights of %d candidate(s) off the front (keep_weights=%s)",
                       spec.stage, len(removed), policy)
    save_state(work / STATE_FILE, strategy, outcome.results)
    rows = _rows(spec, outcome.results, outcome.front, chosen)
    outcome.files += [str(p) for p in write_table(rows, work / spec.table)]
    if spec.extra_outputs:
        outcome.files += spec.extra_outputs(strategy, rows, work)
    return rows


def choose(strategy: Any, limits: dict[str, float], stage: str) -> Any:
    """The best candidate within `limits`; if none is within them (a limit set below every
    candidate), the best one overall, with a warning saying so."""
    try:
        return strategy.best(limits)
    except ValueError:
        _logger().warning("%s: no candidate within the limits %s; taking the best one without them",
                          stage, limits)
        return strategy.best()
