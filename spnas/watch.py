"""`spnas run`'s terminal view of a flow run: one line per stage (status, a bar, what its Prefect
progress artifact says: "candidates k/n, best …" for a search), then the run's summary table.

The flow run is created from its deployment through the Prefect API and then only read: every
~1.5 s the flow run, its task runs (one or more per stage; a search stage is a subflow, seen in
the parent as a tracking task run), its subflow runs and their progress artifacts. The stages
and their order come from the pipeline registry (params/registry.py); every task run and subflow
run of a stage carries its `stage:<name>` tag (tasks/orchestration/pipeline.py sets it), so runs
are mapped by tag, never by name, and a search's counts are read from its progress artifact's
metadata, never from its text. On a terminal the view is a live table; elsewhere (CI, pipes) a
plain line is printed whenever a stage changes. Ctrl-C stops watching only: the run goes on on
the worker.

Prefect is imported inside functions only, so the CLI can put the stack's environment in place
first (`stack_environ`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from core.errors import InputError

POLL_SECONDS = 1.5
# A plain-mode stage line is repeated for progress alone at most this often (status changes
# are always printed at once): a CI log gets a heartbeat, not one line per training step.
PLAIN_REPEAT_SECONDS = 10.0
# Scheduled this long without a worker picking the run up: say what to check.
WORKER_HINT_SECONDS = 30.0
# The API may stop answering for a moment (a busy 2-core machine); give up after this long.
API_PATIENCE_SECONDS = 60.0

WAITING, RUNNING, DONE, CACHED, FAILED, CANCELLED, SKIPPED = (
    "waiting", "running", "done", "cached", "failed", "cancelled", "skipped")
_STYLE = {WAITING: "dim", RUNNING: "bold yellow", DONE: "green", CACHED: "cyan", FAILED: "bold red",
          CANCELLED: "magenta", SKIPPED: "dim"}


# ------------------------------------------------------------------ environment


@contextlib.contextmanager
def stack_environ(cfg: Any) -> Iterator[None]:
    """The stack's variables (PREFECT_API_URL, PREFECT_HOME, …) in os.environ for the body, and
    inherited PREFECT_* ones out of the way (a user's Cloud key or profile must not leak into
    this stack), as `stack.process_env` does for subprocesses. Restored afterwards, so a test
    calling the CLI in-process keeps its own environment."""
    from spnas import stack

    saved = dict(os.environ)
    wanted = stack.process_env(cfg)
    os.environ.clear()
    os.environ.update(wanted)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _client(cfg: Any) -> Iterator[Any]:
    """A sync Prefect client on the stack's API (with its auth string when it has one), whatever
    settings prefect was imported with: they are read once, at import."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL, temporary_settings

    from spnas import stack

    env = stack.stack_env(cfg)
    updates: dict[Any, Any] = {PREFECT_API_URL: env["PREFECT_API_URL"]}
    restore = {PREFECT_API_KEY}  # a user's Prefect Cloud key is not for this server
    if env.get("PREFECT_API_AUTH_STRING"):
        updates[PREFECT_API_AUTH_STRING] = env["PREFECT_API_AUTH_STRING"]
    else:
        restore.add(PREFECT_API_AUTH_STRING)
    with temporary_settings(updates=updates, restore_defaults=restore):
        with get_client(sync_client=True) as client:
            yield client


# ------------------------------------------------------------------ state → stage view


def stage_of(run: Any, stages: Sequence[str]) -> str | None:
    """The stage a task run or subflow run of the main flow belongs to: its `stage:<name>` tag
    (None without one, or for a stage this pipeline does not have)."""
    from params.registry import stage_from_tags

    stage = stage_from_tags(getattr(run, "tags", None))
    return stage if stage in stages else None


def status_of(state: Any) -> str:
    """One Prefect state (task run or subflow run) in the view's words."""
    if state is None:
        return WAITING
    kind = _state_type(state)
    if kind == "COMPLETED":
        return CACHED if state.name == "Cached" else DONE
    if kind in ("FAILED", "CRASHED"):
        return FAILED
    if kind in ("CANCELLED", "CANCELLING"):
        return CANCELLED
    if kind in ("RUNNING", "PAUSED"):
        return RUNNING
    return WAITING  # SCHEDULED, PENDING (incl. Late, AwaitingRetry)


def _state_type(state: Any) -> str:
    kind = state.type
    return str(getattr(kind, "value", kind)).upper()


def combine(statuses: Sequence[str]) -> str:
    """One stage's status from its runs' (a stage may run several tasks: fully_train + compare)."""
    if not statuses:
        return WAITING
    for worst in (FAILED, CANCELLED, RUNNING):
        if worst in statuses:
            return worst
    if all(s == CACHED for s in statuses):
        return CACHED
    if all(s in (DONE, CACHED) for s in statuses):
        return DONE
    if any(s in (DONE, CACHED) for s in statuses):
        return RUNNING  # some finished, the rest about to start
    return WAITING


@dataclass
class StageView:
    name: str
    status: str = WAITING
    fraction: float | None = None     # 0..1 from progress artifacts (None: no progress known)
    detail: str = ""                  # the latest progress description
    done: int | None = None           # candidates evaluated / to evaluate, for a search stage
    total: int | None = None
    best: str | None = None
    seconds: float | None = None      # run time of the stage's runs so far

    def text(self) -> str:
        """The words after the bar: "candidates k/n, best …" for a search, else the description."""
        if self.done is not None and self.total is not None:
            words = f"candidates {self.done}/{self.total}"
            if self.best:
                words += f", best {self.best}"
        else:
            words = self.detail
        if self.status in (DONE, FAILED) and self.seconds is not None:
            words = f"{words}  ({_duration(self.seconds)})".strip()
        return words


def _when(obj: Any) -> datetime:
    for attr in ("start_time", "expected_start_time", "created"):
        value = getattr(obj, attr, None)
        if value is not None:
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.max.replace(tzinfo=timezone.utc)


def _run_seconds(run: Any) -> float:
    value = getattr(run, "total_run_time", None)
    seconds = value.total_seconds() if value is not None else 0.0
    if _state_type(run.state) == "RUNNING" and getattr(run, "start_time", None) is not None:
        seconds = max(seconds, (datetime.now(timezone.utc) - _when(run)).total_seconds())
    return seconds


def _progress_value(artifact: Any) -> float | None:
    try:
        value = float(artifact.data)
    except (TypeError, ValueError):
        return None
    return min(1.0, max(0.0, value / 100.0)) if math.isfinite(value) else None


def build_stages(stages: Sequence[str], task_runs: Iterable[Any], subflow_runs: Iterable[Any],
                 artifacts: Iterable[Any], flow_state: Any = None) -> list[StageView]:
    """The view of every stage from what the API returned for a flow run.

    `task_runs`: the flow run's own task runs (subflows appear among them as tracking task
    runs); `subflow_runs`: its child flow runs (their states are the truth for those tracking
    task runs); `artifacts`: progress artifacts of the flow run and its subflows. Runs are
    mapped by their `stage:<name>` tag; one without it is no stage's."""
    from tracking.tracker import Progress

    subflows = list(subflow_runs)
    subflow_of = {s.parent_task_run_id: s for s in subflows if getattr(s, "parent_task_run_id", None)}
    by_stage: dict[str, list[Any]] = {s: [] for s in stages}
    stage_of_run: dict[Any, str] = {}
    for run in sorted(task_runs, key=_when):
        # A subflow's tracking task run and the subflow run both carry the tag; the subflow has
        # the live state (and its artifacts carry its flow run id, a task's the task run id).
        sub = subflow_of.get(run.id)
        stage = stage_of(run, stages) or (stage_of(sub, stages) if sub is not None else None)
        if stage is None:
            continue
        stage_of_run[run.id] = stage
        if sub is not None:
            stage_of_run[sub.id] = stage
        by_stage[stage].append(sub if sub is not None else run)
    for sub in subflows:  # a subflow whose tracking task run this read did not return yet
        stage = stage_of(sub, stages)
        if stage is not None and sub.id not in stage_of_run:
            stage_of_run[sub.id] = stage
            by_stage[stage].append(sub)

    latest: dict[str, dict[str, Any]] = {s: {} for s in stages}  # stage -> key -> newest artifact
    for art in artifacts:
        if str(getattr(art, "type", "progress")) != "progress":
            continue
        stage = stage_of_run.get(art.task_run_id) or stage_of_run.get(art.flow_run_id)
        if stage is None:
            continue
        key = art.key or str(art.id)
        seen = latest[stage].get(key)
        if seen is None or _updated(art) >= _updated(seen):
            latest[stage][key] = art

    final = flow_state is not None and _state_type(flow_state) in (
        "COMPLETED", "FAILED", "CRASHED", "CANCELLED")
    views = []
    for name in stages:
        runs = by_stage[name]
        view = StageView(name, combine([status_of(r.state) for r in runs]))
        if runs:
            view.seconds = sum(_run_seconds(r) for r in runs)
        arts = sorted(latest[name].values(), key=_updated)
        values = [v for v in (_progress_value(a) for a in arts) if v is not None]
        if values:
            view.fraction = sum(values) / len(values)
        if arts:
            view.detail = (arts[-1].description or "").strip()
            for art in reversed(arts):  # the newest artifact that counts candidates
                figures = Progress.fields(getattr(art, "metadata_", None))
                if figures:
                    view.done, view.total, view.best = figures["done"], figures["total"], figures.get("best")
                    break
        if view.status in (DONE, CACHED):
            view.fraction = 1.0
        if view.status == CACHED and not arts:
            view.detail = "reused from an earlier run"
        if final and view.status == WAITING:
            view.status = SKIPPED if not runs else view.status
        views.append(view)
    return views


def _updated(artifact: Any) -> datetime:
    value = getattr(artifact, "updated", None) or getattr(artifact, "created", None)
    if value is None:
        return datetime.min.replace(tzinfo=timezone.utc)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# ------------------------------------------------------------------ rendering


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}:{seconds:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def _percent(view: StageView) -> str:
    return "   -" if view.fraction is None else f"{round(100 * view.fraction):3d}%"


def plain_line(view: StageView, elapsed: float) -> str:
    """One stage as a line of text (non-TTY mode)."""
    width = 12
    return f"[{_duration(elapsed):>7}] {view.name:<{width}} {view.status:<9} {_percent(view)}  {view.text()}".rstrip()


def live_table(flow_name: str, flow_state: str, views: Sequence[StageView], elapsed: float) -> Group:
    """The terminal view: a header line and one row per stage."""
    grid = Table.grid(padding=(0, 2))
    for _ in range(5):
        grid.add_column()
    for view in views:
        bar = ProgressBar(total=None if view.status == RUNNING and view.fraction is None else 1.0,
                          completed=view.fraction or 0.0, width=30)
        grid.add_row(Text(view.name, style="bold"), Text(view.status, style=_STYLE.get(view.status, "")), bar,
                     Text(_percent(view)), Text(view.text(), overflow="ellipsis", no_wrap=True))
    header = Text.assemble(("flow run ", "dim"), (flow_name, "bold"), ("  ", ""), (flow_state, "bold"),
                           (f"  {_duration(elapsed)}", "dim"))
    return Group(header, grid)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def summary_table(summary: Mapping[str, Any], title: str = "summary") -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for key, value in summary.items():
        table.add_row(str(key), _format_value(value))
    return table


def read_summary(run_dir: Path | None, artifacts: Iterable[Any] = ()) -> dict[str, Any] | None:
    """The flow's summary: summary.json in its run folder, else its "<pipeline>-summary" table
    artifact (rows of metric/value; e.g. when the worker's disk is not this machine's)."""
    if run_dir is not None:
        path = run_dir / "summary.json"
        if path.is_file():
            return json.loads(path.read_text())
    for art in artifacts:
        if str(getattr(art, "type", "")) != "table" or not (art.key or "").endswith("-summary"):
            continue
        rows = json.loads(art.data) if isinstance(art.data, str) else art.data
        if isinstance(rows, list) and rows and all(isinstance(r, dict) and {"metric", "value"} <= set(r) for r in rows):
            return {r["metric"]: r["value"] for r in rows}
    return None


# ------------------------------------------------------------------ polling


def _artifacts(client: Any, flow_run_ids: list[Any], kind: str) -> list[Any]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    return client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=flow_run_ids), type=ArtifactFilterType(any_=[kind])))


def poll(client: Any, flow_run_id: Any, stages: Sequence[str]) -> tuple[Any, list[StageView]]:
    """One read of the flow run, its task runs, subflow runs and their progress artifacts."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    flow_run = client.read_flow_run(flow_run_id)
    task_runs = client.read_task_runs(
        task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])))
    subflows = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
    progress = _artifacts(client, [flow_run_id, *[s.id for s in subflows]], "progress")
    return flow_run, build_stages(stages, task_runs, subflows, progress, flow_run.state)


class PlainPrinter:
    """Non-TTY output: a line when the flow's state or a stage's status changes, and a stage's
    progress at most every PLAIN_REPEAT_SECONDS."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._flow_state: str | None = None
        self._last: dict[str, tuple[str, str, float]] = {}  # stage -> (status, progress text, printed at)

    def show(self, flow_state: str, views: Sequence[StageView], elapsed: float, final: bool = False) -> None:
        """`final`: the flow's last state, printed after the stages' last lines."""
        if not final:
            self._show_flow(flow_state, elapsed)
        self._show_stages(views, elapsed)
        if final:
            self._show_flow(flow_state, elapsed)

    def _show_flow(self, flow_state: str, elapsed: float) -> None:
        if flow_state != self._flow_state:
            self._flow_state = flow_state
            self._write(f"[{_duration(elapsed):>7}] flow run: {flow_state}")

    def _show_stages(self, views: Sequence[StageView], elapsed: float) -> None:
        now = time.monotonic()
        for view in views:
            key = (view.status, f"{_percent(view)} {view.text()}")
            last = self._last.get(view.name)
            if last is None and view.status == WAITING:
                continue  # every stage waits at first: no need to list them all
            if last is not None and last[:2] == key:
                continue
            if last is None or last[0] != view.status or now - last[2] >= PLAIN_REPEAT_SECONDS:
                self._last[view.name] = (*key, now)
                self._write(plain_line(view, elapsed))

    def _write(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()


def watch_flow_run(client: Any, flow_run: Any, stages: Sequence[str], *, output_root: Path | None,
                   console: Console, interval: float = POLL_SECONDS, live: bool | None = None,
                   cancel_hint: str = "") -> int:
    """Follow `flow_run` to a final state; print the summary. 0 only if it COMPLETED."""
    started = time.monotonic()
    live = console.is_terminal if live is None else live
    printer = PlainPrinter(console.file) if not live else None
    hinted = False
    state = flow_run.state
    display = Live(console=console, refresh_per_second=4, transient=False) if live else None
    try:
        if display is not None:
            display.start()
        failing_since: float | None = None
        while True:
            try:
                current, views = poll(client, flow_run.id, stages)
            except Exception as exc:  # a server restarting or busy: keep trying for a while
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    console.print(f"Prefect API did not answer ({type(exc).__name__}: {exc}); retrying",
                                  highlight=False, markup=False, soft_wrap=True)
                if now - failing_since > API_PATIENCE_SECONDS:
                    raise
                time.sleep(interval)
                continue
            failing_since = None
            state = current.state
            elapsed = time.monotonic() - started
            state_name = state.name if state is not None else "?"
            if display is not None:
                display.update(live_table(flow_run.name, state_name, views, elapsed))
            else:
                printer.show(state_name, views, elapsed, final=state is not None and state.is_final())
            if state is not None and state.is_final():
                break
            if not hinted and elapsed > WORKER_HINT_SECONDS and _state_type(state) == "SCHEDULED":
                hinted = True
                console.print(f"still {state_name} after {_duration(elapsed)}: is a worker polling the pool? "
                              "(`spnas status`, `spnas up`)", highlight=False, soft_wrap=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        if display is not None:
            display.stop()
        console.print(f"\nstopped watching; flow run {flow_run.name} goes on. {cancel_hint}".rstrip(),
                      highlight=False, soft_wrap=True)
        return 130
    finally:
        if display is not None:
            display.stop()

    run_dir = output_root / flow_run.name if output_root is not None else None
    summary = read_summary(run_dir, _artifacts(client, [flow_run.id], "table"))
    if summary is not None:
        console.print(summary_table(summary, f"{flow_run.name} summary"))
    if run_dir is not None and run_dir.is_dir():
        console.print(f"outputs: {run_dir}", highlight=False, soft_wrap=True)
    message = f" ({state.message})" if state.message and not state.is_completed() else ""
    console.print(f"final state: {state.name}{message}", highlight=False, soft_wrap=True)
    return 0 if state.is_completed() else 1


def run_and_watch(cfg: Any, deployment: str, parameters: Mapping[str, Any], stages: Sequence[str],
                  output_root: Path | None, console: Console | None = None, live: bool | None = None,
                  interval: float = POLL_SECONDS) -> int:
    """Create a flow run of `deployment` with `parameters`, say where to see it, watch it."""
    from prefect.exceptions import ObjectNotFound

    console = console or Console(file=sys.stdout)
    with _client(cfg) as client:
        try:
            dep = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise InputError("deployment", f"{deployment!r} is not deployed on {cfg.prefect_ui_url}; "
                                           "run `spnas deploy` first") from None
        flow_run = client.create_flow_run_from_deployment(dep.id, parameters=dict(parameters))
        url = f"{cfg.prefect_ui_url}/runs/flow-run/{flow_run.id}"
        console.print(f"flow run {flow_run.name} of {deployment}: {url}", highlight=False, soft_wrap=True)
        hint = (f"Cancel it with: eval \"$(spnas env)\"; prefect flow-run cancel {flow_run.id}")
        return watch_flow_run(client, flow_run, stages, output_root=output_root, console=console,
                              interval=interval, live=live, cancel_hint=hint)


__all__ = ["StageView", "build_stages", "combine", "plain_line", "read_summary", "run_and_watch", "stack_environ",
           "stage_of", "status_of", "summary_table", "watch_flow_run"]
