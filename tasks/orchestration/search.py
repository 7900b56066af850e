"""The one search driver every search stage uses: ask → map candidate tasks → tell, resumable.

Given an ask/tell strategy (strategies/: it sees only candidates and numbers), a candidate task
and the stage's work folder, `run_search` loops until the strategy is done. After every batch
it writes `search_state.json` (the strategy's state_dict, RNG included, plus every told
candidate's result), the candidates table (`output.csv` + `output.parquet`), a Prefect progress
artifact and table (Pareto members marked), and the Pareto plot in MLflow.

Started again on the same work folder (same stage key: same inputs and code) it loads the saved
state and continues: candidates already told are not evaluated again. A candidate that finished
in a killed batch but was never told comes back from Prefect's result cache.

With `SearchSpec.fidelity` (multi-fidelity, strategies/halving.py) every new candidate trains the
first rung's steps, and the best 1/eta of each rung continue from their own checkpoint to the
next, up to max_steps; which promotions are due is read from the saved results alone, so a search
killed mid-rung resumes like any other.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from prefect import get_run_logger, task
from prefect.exceptions import MissingContextError

from core.errors import InputError
from engine.runtime import dask_worker
from strategies.halving import Fidelity, promotions
from strategies.pareto import common_reference, hypervolume, objective_vector
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import read_json, write_json
from tasks.orchestration.pipeline import map_candidates
from tasks.orchestration.tables import write_table
from tracking import tracker

STATE_FILE = "search_state.json"
TABLE_FILE = "output.csv"
CONTROL = "control"  # the random control's rows' origin, and its work folder inside the stage's
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
    def update(self, candidate_id: int, metrics: dict[str, Any]) -> None: ...
    def pending_ids(self) -> list[int]: ...
    def pareto_ids(self) -> list[int]: ...
    def goals(self) -> tuple[tuple[str, ...], tuple[bool, ...]]: ...
    def told_points(self, limits: Mapping[str, float] | None = None) -> list[dict[str, Any]]: ...
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
    # `control: random`: given how many candidates the search evaluated, a strategy of the same
    # space that samples that many at random (its own seed stream); see run_control.
    control: Callable[[int], Any] | None = None
    # Multi-fidelity screening (successive halving); None = every candidate trains its full
    # budget in one evaluation, as before. The control (run_control) screens the same way.
    fidelity: Fidelity | None = None


def fidelity_of(section: Any) -> Fidelity | None:
    """A search params section's `fidelity` (params/models.FidelityParams) as the driver's
    Fidelity; None when the section has none (params/ may not import strategies/)."""
    f = getattr(section, "fidelity", None)
    return None if f is None else Fidelity(f.min_steps, f.max_steps, f.eta)


@dataclass(frozen=True)
class ControlReport:
    """A search against its same-budget random control: the best first-objective value within
    the stage's limits on each side and, with two or more objectives, each side's hypervolume on
    one common reference point (pymoo's HV, strategies/pareto.common_reference)."""

    objective: str                   # what "best" ranks by, e.g. "mAP"
    maximize: bool
    search_candidates: int
    control_candidates: int
    best_search: float | None        # None: no candidate within the limits
    best_control: float | None
    hv_search: float | None = None   # None with a single objective
    hv_control: float | None = None
    # The hypervolume of the box from the reference point to the best value either side reached on
    # every objective at once: no front of what was seen can dominate more (see hv_ratio_bound).
    hv_box: float | None = None

    @property
    def hv_ratio(self) -> float | None:
        if self.hv_search is None or not self.hv_control:
            return None
        return self.hv_search / self.hv_control

    @property
    def hv_ratio_bound(self) -> float | None:
        """The ratio an ideal search would have reached against this control: one network as good
        as the best seen on every objective at once. How much room the reference point left for
        the search to show (a near-1 bound means any two decent fronts tie)."""
        if self.hv_box is None or not self.hv_control:
            return None
        return self.hv_box / self.hv_control

    @property
    def best_gain(self) -> float | None:
        """How much better the search's best is than the control's (positive = search ahead)."""
        if self.best_search is None or self.best_control is None:
            return None
        return (self.best_search - self.best_control) * (1 if self.maximize else -1)

    def figures(self) -> dict[str, float]:
        """The figures as flat numbers (MLflow metrics, summary fields), missing ones left out."""
        out = {"control_candidates": float(self.control_candidates), "best_search": self.best_search,
               "best_control": self.best_control, "best_gain": self.best_gain, "hv_search": self.hv_search,
               "hv_control": self.hv_control, "hv_ratio": self.hv_ratio, "hv_ratio_bound": self.hv_ratio_bound}
        return {k: float(v) for k, v in out.items() if v is not None}

    def describe(self) -> str:
        text = (f"search best {self.objective} {_num(self.best_search)} vs random control {_num(self.best_control)} "
                f"({self.search_candidates} vs {self.control_candidates} candidates)")
        if self.hv_ratio is None:
            return text
        bound = "" if self.hv_ratio_bound is None else f" (an ideal front would reach {self.hv_ratio_bound:.3f})"
        return f"{text}; hypervolume ratio search/control {self.hv_ratio:.3f}{bound}"


def cost_column(objective: str) -> str:
    """The candidate field a search's cost objective reads: its own name (params, macs), except
    `latency`, the figure measured at proposal time (latency/direct.py), kept as `latency_ms`."""
    return "latency_ms" if objective == "latency" else objective


def candidate_files(outcome: SearchOutcome) -> list[str]:
    """Every file the search's candidates wrote, and its control's (weights, descs, performance)."""
    outcomes = [outcome] + ([outcome.control] if outcome.control else [])
    return [f for o in outcomes for r in o.results.values() for f in r.get("files", [])]


def own_rows(rows: list[dict[str, Any]] | tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """A search table's rows without its random control's."""
    return [r for r in rows if r.get("origin") != CONTROL]


def control_fields(report: ControlReport | None) -> dict[str, float]:
    """A control report as `control_*` fields (MLflow metrics, summary.json); none without one."""
    return {} if report is None else {f"control_{k}": v for k, v in report.figures().items()}


def _num(value: float | None) -> str:
    return "none within the limits" if value is None else f"{value:.4g}"


def control_report(search: Strategy, control: Strategy, limits: Mapping[str, float] | None) -> ControlReport:
    """Compare a finished search with its finished control (pure: no Prefect, no files)."""
    keys, maximize = search.goals()

    def best(strategy: Strategy) -> float | None:
        values = [float(m[keys[0]]) for m in strategy.told_points(limits)]
        return (max(values) if maximize[0] else min(values)) if values else None

    hv_search = hv_control = hv_box = None
    if len(keys) > 1:
        sides = [[objective_vector(m, keys) for m in s.told_points()] for s in (search, control)]
        if any(sides):
            ref = common_reference(sides, maximize)
            hv_search, hv_control = (hypervolume(points, maximize, ref) for points in sides)
            every = [p for points in sides for p in points]
            ideal = [(max if up else min)(p[j] for p in every) for j, up in enumerate(maximize)]
            hv_box = hypervolume([ideal], maximize, ref)
    return ControlReport(keys[0], maximize[0], len(search.history), len(control.history), best(search),
                         best(control), hv_search, hv_control, hv_box)


@dataclass
class SearchOutcome:
    results: dict[int, dict[str, Any]]           # id -> task result ("status": "failed" if it failed)
    front: list[int]
    resumed_from: int                            # candidates already told when this run started
    files: list[str] = field(default_factory=list)
    control: SearchOutcome | None = None         # the random control's own outcome (control: random)
    report: ControlReport | None = None

    def ok(self, cid: int) -> bool:
        return self.results[cid].get("status") != "failed"

    @property
    def screened(self) -> int:
        """Candidates evaluated (at the first rung with a fidelity), failed ones included."""
        return len(self.results)

    @property
    def train_steps(self) -> int | None:
        """Training steps the search spent with a fidelity (each candidate's highest completed
        rung's steps; failed evaluations not counted); None without one (every candidate trained
        the stage's own step budget)."""
        spent = [r["rungs"][-1]["steps"] for r in self.results.values() if r.get("rungs")]
        return sum(spent) if spent else None


def _rows(spec: SearchSpec, results: dict[int, dict[str, Any]], front: list[int],
          chosen: int | None = None, control: bool | None = None) -> list[dict[str, Any]]:
    """Table rows; with a control run (`control` not None) every row says its `origin`: "control"
    for the control's, the search's own origin (e.g. SPOS's random/mutation/crossover) or "search"."""
    rows = []
    on_dask = any(r.get("worker") for r in results.values())  # the column only when a cluster was used
    for cid in sorted(results):
        row = {"id": cid, **spec.row_of(results[cid]), "pareto": cid in front}
        if spec.fidelity is not None:
            row |= _rung_fields(results[cid])
        if control:
            row["origin"] = CONTROL
        elif control is not None:
            row["origin"] = row.get("origin") or "search"
        if on_dask:
            row["worker"] = results[cid].get("worker")
        if chosen is not None:
            row["chosen"] = cid == chosen
        rows.append(row)
    return rows


def _rung_fields(result: dict[str, Any]) -> dict[str, Any]:
    """A candidate's fidelity columns: its highest completed rung (None: failed at the first),
    the steps it trained, and its first objective at each rung ("40:0.412 120:0.530")."""
    rungs = result.get("rungs") or []
    if not rungs:
        return {"rung": None, "train_steps": 0, "rungs": ""}
    first = next((k for k in rungs[0] if k not in ("rung", "steps")), None)
    return {"rung": rungs[-1]["rung"], "train_steps": rungs[-1]["steps"],
            "rungs": " ".join(f"{e['steps']}:{e[first]:.4g}" if first else str(e["steps"]) for e in rungs)}


def pending_promotions(results: Mapping[int, dict[str, Any]], fidelity: Fidelity, keys: tuple[str, ...],
                       maximize: tuple[bool, ...]) -> tuple[int, list[int]] | None:
    """The next promotion batch, (target rung, ids best first), read from the results alone (each
    successful one's `rungs` history; a failed promotion is marked `promotion_failed`): the
    lowest target rung first. None when no promotion is due."""
    history = {cid: r["rungs"] for cid, r in results.items() if r.get("rungs")}
    tried: dict[int, set[int]] = {}
    for cid, r in results.items():
        if r.get("promotion_failed") is not None:
            tried.setdefault(int(r["promotion_failed"]) - 1, set()).add(cid)
    due = promotions(history, keys, maximize, fidelity.eta, fidelity.top, tried)
    return min(due.items()) if due else None


def drive(strategy: Strategy, spec: SearchSpec, results: dict[int, dict[str, Any]],
          evaluate: Callable[[list[dict[str, Any]]], list[dict[str, Any] | None]]) -> Iterator[None]:
    """The ask → evaluate → tell loop: yields after every batch, `results` updated in place (a
    failed candidate, evaluated as None, is told None and kept as a "failed" row). `evaluate`
    maps candidate inputs to results: Prefect tasks in run_search, plain calls in benchmarks."""
    if spec.fidelity is not None:
        yield from _drive_halving(strategy, spec, spec.fidelity, results, evaluate)
        return
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


def _drive_halving(strategy: Strategy, spec: SearchSpec, fidelity: Fidelity, results: dict[int, dict[str, Any]],
                   evaluate: Callable[[list[dict[str, Any]]], list[dict[str, Any] | None]]) -> Iterator[None]:
    """`drive` with successive halving: due promotions first (each target rung one batch), then
    new candidates at rung 0; once the strategy is done, promotions until none is due. Doing
    promotions before asking keeps the order a function of `results` and the strategy's state, so
    a resumed search takes the same steps as an uninterrupted one."""
    keys, maximize = strategy.goals()
    steps = fidelity.rungs()

    def input_at(cand: Any, rung: int) -> dict[str, Any]:
        resume = results[cand.id].get("checkpoint") if rung else None  # the previous rung's weights
        return {**spec.to_input(cand), "steps": steps[rung], "rung": rung, "max_steps": fidelity.max_steps,
                "resume_from": resume}

    def metrics_at(out: dict[str, Any], rung: int) -> dict[str, Any]:
        return {"rung": rung, "train_steps": steps[rung], **spec.metrics_of(out)}  # the task's own figures win

    def entry(metrics: dict[str, Any], rung: int, out: dict[str, Any]) -> dict[str, Any]:  # per-rung history
        return {"rung": rung, "steps": steps[rung], **{k: float(metrics[k]) for k in keys},
                "checkpoint": out.get("checkpoint")}

    while True:
        due = pending_promotions(results, fidelity, keys, maximize)
        if due is not None:
            rung, ids = due
            _logger().info("%s: promoting %d candidate(s) to rung %d (%d steps)", spec.stage, len(ids), rung,
                           steps[rung])
            every = strategy.candidates
            batch = [every[i] for i in ids]
            inputs = [input_at(c, rung) for c in batch]
            for cand, out in zip(batch, evaluate(inputs)):
                before = results[cand.id]
                if not out:  # keeps its lower-rung result; never tried again
                    results[cand.id] = {**before, "promotion_failed": rung}
                    continue
                metrics = metrics_at(out, rung)
                strategy.update(cand.id, metrics)
                files = list(dict.fromkeys([*before.get("files", []), *out.get("files", [])]))  # every rung's
                results[cand.id] = {**out, "files": files, "rungs": [*before["rungs"], entry(metrics, rung, out)]}
                if spec.on_result:
                    spec.on_result(results[cand.id])
            yield
            continue
        if strategy.done:
            break
        pending = strategy.pending_ids()
        batch = [strategy.candidates[i] for i in pending] if pending else strategy.ask(spec.batch)
        if not batch:
            break
        inputs = [input_at(c, 0) for c in batch]
        for cand, inp, out in zip(batch, inputs, evaluate(inputs)):
            metrics = metrics_at(out, 0) if out else None
            strategy.tell(cand.id, metrics)
            results[cand.id] = {**out, "rungs": [entry(metrics, 0, out)]} if metrics else {**inp, "status": "failed"}
            if out and spec.on_result:
                spec.on_result(results[cand.id])
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
        before = len(results)

        def finished(n: int) -> None:  # progress as each candidate finishes, not per batch
            done = before + n
            progress.update(done / max(1, strategy.budget), done=done, total=strategy.budget, best=best)

        best = tracker.Progress.best_of(_rows(spec, results, []), spec.plot[1])
        promoting = any(inp.get("rung") for inp in inputs)  # progress counts new candidates only
        return map_candidates(spec.task, inputs, candidate_ctx, refresh=refresh,
                              on_done=None if promoting else finished, **common)

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
    outcome = SearchOutcome(results, strategy.pareto_ids(), resumed_from, [str(state_path)])
    if spec.fidelity is not None:
        top = _top_rung(results)
        logger.info("%s search: %d candidate(s) screened in %d training steps; %d reached rung %s", spec.stage,
                    outcome.screened, outcome.train_steps or 0,
                    sum(1 for r in results.values() if r.get("rungs") and r["rungs"][-1]["rung"] == top), top)
        tracker.log_metrics(stage_run_id, {"screened": outcome.screened, "train_steps": outcome.train_steps or 0})
    return outcome


def _top_rung(results: Mapping[int, dict[str, Any]]) -> int | None:
    """The highest rung any candidate completed (None: none completed one)."""
    return max((r["rungs"][-1]["rung"] for r in results.values() if r.get("rungs")), default=None)


def run_control(strategy: Strategy, spec: SearchSpec, outcome: SearchOutcome, ctx: StageContext, stage_run_id: str,
                refresh: bool, limits: Mapping[str, float] | None, **common: Any) -> ControlReport | None:
    """`control: random`: after the search, evaluate a same-size random sample of its space with
    the same candidate task, limits and training budget, in `control/` under the stage's work
    folder (resumable like the search), and report search vs control (log line, MLflow metrics,
    a Prefect table). Control candidates are never chosen: they are kept in `outcome.control`,
    and finalize adds them to the table as `origin=control`. None when the stage has no control."""
    if spec.control is None:
        return None
    control = spec.control(len(outcome.results))
    control_spec = replace(spec, stage=f"{spec.stage}-control", title=f"{spec.title}: random control",
                           on_result=None, extra_outputs=None, control=None)
    work = ctx.work / CONTROL
    work.mkdir(parents=True, exist_ok=True)
    outcome.control = run_search(control, control_spec, replace(ctx, work_dir=str(work)), stage_run_id, refresh,
                                 **common)
    outcome.report = report = control_report(strategy, control, limits)
    _logger().info("%s: %s", spec.stage, report.describe())
    tracker.log_metrics(stage_run_id, control_fields(report))
    tracker.publish_table(f"{spec.stage}-search-vs-control",
                          [{"figure": k, "value": v} for k, v in report.figures().items()],
                          f"{spec.title}: search vs a same-budget random control")
    return report


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


def drop_checkpoints(outcome: SearchOutcome) -> int:
    """Multi-fidelity: delete every rung checkpoint of the search and its control once the search
    is over (they exist to continue a promotion; model_<id>.pth keeps each candidate's weights).
    Returns how many files were removed."""
    removed = 0
    for o in [outcome] + ([outcome.control] if outcome.control else []):
        for result in o.results.values():
            paths = {e.get("checkpoint") for e in result.get("rungs") or []} - {None}
            for path in paths:
                if Path(path).exists():
                    Path(path).unlink()
                    removed += 1
            if paths:
                result["files"] = [f for f in result.get("files", []) if f not in paths]
                result.pop("checkpoint", None)
    return removed


def finalize(strategy: Strategy, spec: SearchSpec, outcome: SearchOutcome, work_dir: str | Path, chosen: int,
             policy: str, needed: set[int]) -> list[dict[str, Any]]:
    """After the choice: prune weights per `policy`, write the final table (with `chosen`) and
    state. Returns the table rows."""
    work = Path(work_dir)
    drop_checkpoints(outcome)
    removed = keep_weights(outcome, policy, needed | {chosen})
    if removed:
        _logger().info("%s: removed the weights of %d candidate(s) off the front (keep_weights=%s)",
                       spec.stage, len(removed), policy)
    save_state(work / STATE_FILE, strategy, outcome.results)
    control = outcome.control
    rows = _rows(spec, outcome.results, outcome.front, chosen, False if control else None)
    if spec.extra_outputs:  # fronts and per-generation files: the search's own candidates
        outcome.files += spec.extra_outputs(strategy, rows, work)
    if control is not None:
        keep_weights(control, policy, set())
        rows += _rows(spec, control.results, control.front, -1, True)  # never the chosen one
        outcome.files += control.files
    outcome.files += [str(p) for p in write_table(rows, work / spec.table)]
    return rows


def candidates_at_top_rung(strategy: Any, limits: Mapping[str, float] | None = None) -> list[int] | None:
    """Multi-fidelity: the ids, among the successful candidates within `limits`, that reached the
    highest rung any of those reached (told metrics carry `rung`); None without a fidelity or when
    none is within the limits. Scores of different rungs are not compared: a short-trained
    candidate could look better than a fully trained one only by chance."""
    told = {c.id: m for c, m in strategy.history if m is not None}
    rungs = {cid: told[cid].get("rung") for cid in strategy.within(limits)}
    if not rungs or all(r is None for r in rungs.values()):
        return None
    top = max(r for r in rungs.values() if r is not None)
    return [cid for cid, r in rungs.items() if r == top]


def _best(strategy: Any, limits: dict[str, float] | None) -> Any:
    top = candidates_at_top_rung(strategy, limits)
    if top is None:
        return strategy.best(limits) if limits is not None else strategy.best()
    return strategy.best(limits, among=top)


def choose(strategy: Any, limits: dict[str, float], stage: str) -> Any:
    """The best candidate within `limits`; if none is within them (a limit set below every
    candidate), the best one overall, with a warning saying so. With a fidelity, only candidates
    at the highest rung reached (within the limits, or overall in that fallback) are compared."""
    try:
        return _best(strategy, limits)
    except ValueError:
        _logger().warning("%s: no candidate within the limits %s; taking the best one without them",
                          stage, limits)
        return _best(strategy, None)
