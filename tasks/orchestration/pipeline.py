"""What every flow does around its stages: open the run's output folder and MLflow parent run,
run each stage in its own work folder (named by the stage's cache key, so a re-run finds its
checkpoints and saved search state), link the stage's files into the run folder, and close
with a summary in both UIs.

Work folders live under `<state>/work/<pipeline>/<stage>/<key>/`; a run folder
`<output_root>/<flow-run-name>/<stage>/` holds hard links to them, so every run folder is
complete even when most of its stages were reused from earlier runs.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import get_run_logger, tags, unmapped
from prefect.futures import as_completed
from prefect.runtime import flow_run, task_run

from core.errors import InputError
from core.paths import default_output_root, state_dir
from params.models import RunParams, Runtime, runtime_of
from params.registry import stage_tag
from tasks.orchestration.caching import stage_key
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import link_tree, write_json
from tasks.orchestration.handoff import missing_files
from tracking import tracker

REFRESH_ALL = "all"


def work_root() -> Path:
    return state_dir() / "work"


def check_refresh(refresh_from: str | None, stages: Sequence[str]) -> None:
    if refresh_from is not None and refresh_from != REFRESH_ALL and refresh_from not in stages:
        raise InputError("refresh_from", f"{refresh_from!r} is not a stage of this pipeline; use "
                                         f"{REFRESH_ALL!r} or one of {', '.join(stages)}")


@dataclass
class Pipeline:
    name: str
    run_name: str
    run_dir: Path
    parent_run_id: str
    experiment_id: str
    runtime: Runtime
    stages: tuple[str, ...]
    refresh_from: str | None = None
    candidate_workers: int = 1
    dask_address: str | None = None
    started: float = field(default_factory=time.perf_counter)

    def refreshing(self, stage: str) -> bool:
        """`--refresh` recomputes every stage; `--refresh-from S` recomputes S and what follows it."""
        if self.refresh_from is None:
            return False
        if self.refresh_from == REFRESH_ALL:
            return True
        return self.stages.index(stage) >= self.stages.index(self.refresh_from)

    def work_dir(self, stage: str, fn: Any, inputs: dict[str, Any]) -> Path:
        return work_root() / self.name / stage / stage_key(fn, inputs)

    def context(self, stage: str, work: Path, runtime: Runtime | None = None) -> StageContext:
        """What a stage's task (or subflow) is told: its work folder, the run's MLflow parent run
        and runtime (`runtime`: a search's candidates may get fewer threads)."""
        return StageContext(stage, str(work), self.parent_run_id, runtime or self.runtime)

    def _prepare(self, stage: str, work: Path) -> bool:
        refresh = self.refreshing(stage)
        if refresh:  # no checkpoint, saved state or old file may leak into a forced recompute
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        return refresh

    def _publish(self, stage: str, work: Path) -> None:
        linked = link_tree(work, self.run_dir / stage)
        get_run_logger().info("%s: %d file(s) in %s (work folder %s)", stage, linked, self.run_dir / stage, work)

    def run(self, stage: str, task: Any, **inputs: Any) -> Any:
        """Run one stage task; a cache hit is reused (and recorded in MLflow as reused), unless
        files it lists were deleted, then it is recomputed."""
        logger = get_run_logger()
        work = self.work_dir(stage, task.fn, inputs)
        refresh = self._prepare(stage, work)
        call = dict(inputs, ctx=self.context(stage, work))
        with tags(stage_tag(stage)):  # the watcher maps runs to stages by this tag, not by run names
            state = task.with_options(refresh_cache=refresh)(**call, return_state=True)
            result = state.result()
            if state.name == "Cached":
                missing = missing_files(result)
                if missing:
                    logger.warning("cached %s lists missing files (%s); recomputing", stage, missing[0])
                    result = task.with_options(refresh_cache=True)(**call)
                else:
                    logger.info("%s: reused the result of an earlier run with the same inputs and code", stage)
                    tracker.record_reused_stage(self.parent_run_id, stage, result, str(work))
        self._publish(stage, work)
        return result

    def map(self, stage: str, task: Any, candidates: list[dict[str, Any]], **common: Any) -> list[Any]:
        """`task.map` over candidates, each in its own work folder (e.g. the searched detector and
        the baseline of fully_train); a failed candidate gives None."""
        works = [self.work_dir(stage, task.fn, {"candidate": c, **common}) for c in candidates]
        refresh = any([self._prepare(stage, w) for w in works])
        with tags(stage_tag(stage)):
            results = map_candidates(task, candidates, [self.context(stage, w) for w in works], refresh=refresh,
                                     **common)
        for work in works:
            self._publish(stage, work)
        return results

    def candidate_runner(self) -> tuple[Any, Runtime]:
        """The task runner a search stage maps its candidates over (`candidate_workers` /
        `dask_address`, shared by every pipeline) and the runtime each candidate gets."""
        runner, threads = candidate_runner(self.candidate_workers, self.dask_address)
        return runner, self.runtime.model_copy(update={"num_threads": self.runtime.num_threads or threads})

    def search(self, stage: str, subflow: Any, **inputs: Any) -> Any:
        """A search stage is a subflow (it maps candidate tasks and must not be a task itself);
        its work folder holds the saved search state it resumes from. Its candidates go where the
        run's `candidate_workers` / `dask_address` say."""
        task_runner, runtime = self.candidate_runner()
        work = self.work_dir(stage, subflow.fn, inputs)
        refresh = self._prepare(stage, work)
        # The subflow passes its context on to its candidates: their runtime, not the run's.
        ctx = self.context(stage, work, runtime)
        # Both the subflow's tracking task run in this flow and the subflow run get the tag.
        with tags(stage_tag(stage)):
            result = subflow.with_options(task_runner=task_runner)(**inputs, ctx=ctx, refresh=refresh)
        self._publish(stage, work)
        return result


def _run_name() -> str:
    return flow_run.get_name() or time.strftime("run-%Y%m%d-%H%M%S")


@contextlib.contextmanager
def pipeline(name: str, params: RunParams, stages: Sequence[str], refresh_from: str | None = None) -> Iterator[Pipeline]:
    """One output folder and one MLflow parent run per flow run; FAILED in MLflow if a stage raises."""
    check_refresh(refresh_from, stages)  # before anything is written
    check_dask_address(params.dask_address)  # a scheduler that does not answer fails here, not mid-search
    logger = get_run_logger()
    run_name = _run_name()
    root = Path(params.output_root or default_output_root()).expanduser().resolve()
    run_dir = root / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "params.json", params.model_dump(mode="json"))
    experiment_id = tracker.ensure_experiment(name)
    tags = {"prefect.flow_run_id": str(flow_run.get_id() or ""), "prefect.flow_run_name": run_name,
            "output_dir": str(run_dir)}
    if refresh_from:
        tags["refresh_from"] = refresh_from
    if flow_run.get_flow_run_ui_url():
        tags["prefect.flow_run_url"] = flow_run.get_flow_run_ui_url()
    parent = tracker.start_run(experiment_id, run_name, params=params.model_dump(mode="json"), tags=tags)
    pipe = Pipeline(name, run_name, run_dir, parent, experiment_id, runtime_of(params), tuple(stages), refresh_from,
                    params.candidate_workers, params.dask_address)
    logger.info("outputs: %s", run_dir)
    url = tracker.run_url(parent)
    if url:
        logger.info("MLflow run: %s", url)
    try:
        yield pipe
    except BaseException:
        tracker.finish_run(parent, "FAILED")
        raise
    tracker.finish_run(parent, "FINISHED")


def close_tracking_on_crash(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook (on_crashed / on_cancellation): a killed flow process left its MLflow runs
    RUNNING; end them as KILLED so the MLflow UI tells the truth."""
    from prefect.logging.loggers import flow_run_logger

    logger = flow_run_logger(flow_run, flow)  # hooks may run outside the flow's run context
    try:
        ended = tracker.end_open_runs(str(flow_run.id), "KILLED")
        logger.info("marked %d MLflow run(s) of this flow run as KILLED", ended)
    except Exception as exc:  # a hook must not mask the crash it reports
        logger.warning("could not close MLflow runs: %s", exc)


def finish(pipe: Pipeline, summary: dict[str, Any], table: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Summary metrics on the parent run, summary.json in the run folder, a Prefect table and link."""
    summary = {**summary, "wall_seconds": round(time.perf_counter() - pipe.started, 1)}
    tracker.log_metrics(pipe.parent_run_id, summary)
    path = write_json(pipe.run_dir / "summary.json", summary)
    tracker.log_files(pipe.parent_run_id, [path, pipe.run_dir / "params.json"])
    tracker.publish_table(f"{pipe.name}-summary", table or [{"metric": k, "value": v} for k, v in summary.items()],
                          f"{pipe.name} final figures")
    url = tracker.run_url(pipe.parent_run_id)
    runs = tracker.experiment_runs_url(pipe.experiment_id)
    lines = [f"# {pipe.name}: {pipe.run_name}", "", f"* outputs: `{pipe.run_dir}`"]
    if url:
        lines += [f"* MLflow run: [{pipe.parent_run_id}]({url})", f"* compare runs: [runs table]({runs})"]
    tracker.publish_markdown(f"{pipe.name}-mlflow", "\n".join(lines), "where this run's files and metrics are")
    return {**summary, "run_dir": str(pipe.run_dir), "mlflow_run_id": pipe.parent_run_id}


def candidate_run_name(fmt: Callable[[Mapping[str, Any]], str]) -> Callable[[], str]:
    """A `task_run_name` for a mapped task: `fmt` of the run's `candidate` input (what a person
    reads in the Prefect UI; stages are found by their tag, never by this name)."""
    def name() -> str:
        return fmt((task_run.parameters or {}).get("candidate") or {})

    return name


def map_candidates(task: Any, candidates: list[dict[str, Any]], ctx: StageContext | list[StageContext],
                   refresh: bool = False, on_done: Callable[[int], None] | None = None, **common: Any) -> list[Any]:
    """`task.map` over candidates (a task runner may spread them); a failed candidate gives None
    (the search is told it failed) instead of failing the stage. `ctx`: one per candidate (each
    with its own work folder), or one shared by all (a search stage's). `on_done(n)` is called as
    each candidate finishes, in finishing order, with how many have finished so far (progress
    counts candidates, not batches). Results come back in the candidates' order."""
    logger = get_run_logger()
    mapped: dict[str, list[Any]] = {"candidate": candidates}
    if isinstance(ctx, StageContext):
        common = {**common, "ctx": ctx}
    else:
        mapped["ctx"] = list(ctx)
    runner = task.with_options(refresh_cache=refresh)
    futures = list(runner.map(**mapped, **{k: unmapped(v) for k, v in common.items()}))
    index = {id(future): i for i, future in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    for finished, future in enumerate(as_completed(futures), start=1):
        i = index[id(future)]
        future.wait()  # done already; a wrapped (Dask) future records its final state here
        state = future.state
        if not state.is_completed():
            logger.warning("candidate %s failed: %s", candidates[i].get("id"), state.message)
        else:
            result = future.result()
            if state.name == "Cached" and missing_files(result):
                one = {k: v[i] for k, v in mapped.items()}
                result = task.with_options(refresh_cache=True)(**one, **common)
            results[i] = result
        if on_done:
            on_done(finished)
    return results


def candidate_runner(workers: int, dask_address: str | None) -> tuple[Any, int | None]:
    """The task runner the search stages map candidates over, and the torch threads per candidate.

    Default: one candidate at a time with every core (two trainings on 2 cores only fight).
    `candidate_workers` > 1 splits the cores between threads; `dask_address` sends candidates to
    an existing Dask cluster (its workers need this project installed, and reach data and weights
    by the same paths: shared storage)."""
    from prefect.task_runners import ThreadPoolTaskRunner

    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address), None
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    return ThreadPoolTaskRunner(max_workers=workers), threads


DASK_CONNECT_TIMEOUT = 5.0  # seconds: a scheduler that answers does so in milliseconds


async def _scheduler_identity(address: str, timeout: float) -> dict[str, Any]:
    """What the server at `address` says it is (Dask's comm handshake, then its `identity` op)."""
    import asyncio

    from distributed.comm import connect

    comm = await connect(address, timeout=timeout)
    try:
        await asyncio.wait_for(comm.write({"op": "identity", "reply": True}), timeout)
        return await asyncio.wait_for(comm.read(), timeout)
    finally:
        comm.abort()


def check_dask_address(address: str | None, timeout: float = DASK_CONNECT_TIMEOUT) -> None:
    """InputError("dask_address", ...) unless a Dask scheduler answers at `address` within
    `timeout` seconds. Called before any stage runs (and by `spnas run` before submitting), so an
    unreachable cluster is one clear line instead of a search whose candidates all fail."""
    if not address:
        return
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    def probe() -> dict[str, Any]:  # its own thread and event loop: callers may already run one
        return asyncio.run(asyncio.wait_for(_scheduler_identity(address, timeout), timeout + 1))

    reason = None
    try:
        with ThreadPoolExecutor(1) as pool:
            identity = pool.submit(probe).result()
        kind = identity.get("type") if isinstance(identity, dict) else None
        if kind != "Scheduler":
            reason = f"the server there is a Dask {kind}, not a scheduler" if kind else "the server there is not Dask"
    except (OSError, TimeoutError) as exc:  # refused, unknown host, nothing answering in time
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else f"no answer within {timeout:g} s"
    except Exception as exc:  # something answered, but not in Dask's protocol
        reason = f"the server there does not speak Dask's protocol ({type(exc).__name__})"
    if reason:
        raise InputError("dask_address", f"no Dask scheduler answers at {address}: {reason}; start one "
                                         f"(dask scheduler) or set dask_address: null")


__all__ = ["DASK_CONNECT_TIMEOUT", "Pipeline", "candidate_runner", "check_dask_address", "check_refresh",
           "close_tracking_on_crash", "finish", "map_candidates", "pipeline", "work_root"]

