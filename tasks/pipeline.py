"""What every flow does around its stages: validate params first, open the run's output
folder and MLflow parent run, run stages (re-running a cache hit whose files are gone), and
close with a summary in both UIs."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from spnas.paths import default_output_root
from tasks.common import missing_files, write_json
from tracking import tracker


@dataclass
class Pipeline:
    name: str
    run_name: str
    run_dir: Path
    parent_run_id: str
    experiment_id: str
    started: float


def _run_name() -> str:
    return flow_run.get_name() or time.strftime("run-%Y%m%d-%H%M%S")


@contextlib.contextmanager
def pipeline(name: str, params: BaseModel) -> Iterator[Pipeline]:
    """One output folder and one MLflow parent run per flow run; FAILED in MLflow if a stage raises."""
    logger = get_run_logger()
    run_name = _run_name()
    root = Path(getattr(params, "output_root", None) or default_output_root()).expanduser().resolve()
    run_dir = root / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "params.json", params.model_dump(mode="json"))
    experiment_id = tracker.ensure_experiment(name)
    tags = {"prefect.flow_run_id": str(flow_run.get_id() or ""), "prefect.flow_run_name": run_name,
            "output_dir": str(run_dir)}
    if flow_run.get_flow_run_ui_url():
        tags["prefect.flow_run_url"] = flow_run.get_flow_run_ui_url()
    parent = tracker.start_run(experiment_id, run_name, params=params.model_dump(mode="json"), tags=tags)
    pipe = Pipeline(name, run_name, run_dir, parent, experiment_id, time.perf_counter())
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


def run_stage(task: Any, **kwargs: Any) -> Any:
    """Run a stage task; a Cached result whose files were deleted is recomputed, not trusted."""
    state = task(**kwargs, return_state=True)
    result = state.result()
    if state.is_completed() and state.name == "Cached":
        missing = missing_files(result)
        if missing:
            get_run_logger().warning("cached %s lists missing files (%s); recomputing", task.name, missing[0])
            result = task.with_options(refresh_cache=True)(**kwargs)
        else:
            get_run_logger().info("%s: reused the cached result of an earlier run", task.name)
    return result


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


def map_candidates(task: Any, candidates: list[dict[str, Any]], **common: Any) -> list[Any]:
    """`task.map` over candidates (a task runner may spread them); a failed candidate gives None
    (the search is told it failed) instead of failing the stage."""
    from prefect import unmapped

    logger = get_run_logger()
    futures = task.map(candidate=candidates, **{k: unmapped(v) for k, v in common.items()})
    results: list[Any] = []
    for candidate, future in zip(candidates, futures):
        future.wait()
        state = future.state
        if not state.is_completed():
            logger.warning("candidate %s failed: %s", candidate.get("id"), state.message)
            results.append(None)
            continue
        result = future.result()
        if state.name == "Cached" and missing_files(result):
            result = task.with_options(refresh_cache=True)(candidate=candidate, **common)
        results.append(result)
    return results


def candidate_runner(values: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The task runner the search stages map candidates over, and the params adjusted for it.

    Default: one candidate at a time with every core (two trainings on 2 cores only fight).
    `candidate_workers` > 1 splits the cores between threads; `dask_address` sends candidates to
    an existing Dask cluster (its workers need this project installed)."""
    import os

    from prefect.task_runners import ThreadPoolTaskRunner

    workers = values.get("candidate_workers", 1)
    if values.get("dask_address"):
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=values["dask_address"]), values
    if workers > 1 and not values.get("num_threads"):
        values = {**values, "num_threads": max(1, (os.cpu_count() or 1) // workers)}
    return ThreadPoolTaskRunner(max_workers=workers), values
