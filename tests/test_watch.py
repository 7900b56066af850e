"""`spnas run`'s per-stage view (spnas/watch.py): stage mapping by `stage:<name>` tags, progress
figures read from artifact metadata, and the summary, from API objects shaped like the ones a real
lcnet/full run returned (names, ids, descriptions copied from one); Pipeline's tags on a real
Prefect API; and one real run through a stack watched by `spnas run` with stdout piped."""
from __future__ import annotations

import io
import json
import os
import re
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect.client.schemas.objects import Artifact, FlowRun, State, StateType, TaskRun
from rich.console import Console

from params.models import Runtime
from params.registry import LCNET, PRUNE_EA, SANAS, SPNAS, SPOS, stage_tag
from spnas import watch
from spnas.cli import main
from tasks.orchestration.context import StageContext
from tracking.tracker import Progress

T0 = datetime(2026, 11, 24, 2, 0, 10, tzinfo=timezone.utc)
FLOW_ID = UUID("a87c0713-cdad-4a3f-a027-fd67c7c5311f")


def _state(kind: str, name: str | None = None, message: str | None = None) -> State:
    return State(type=StateType[kind], name=name or kind.title(), message=message)


def _task(name: str, kind: str, start: float | None = None, seconds: float = 0.0, state_name: str | None = None,
          flow_run_id: UUID = FLOW_ID, id: str | None = None, stage: str | None = None) -> TaskRun:
    """A task run; `stage` None: the stage is the name up to its last dash ("train-73a": train)."""
    stage = name.rsplit("-", 1)[0] if stage is None else stage
    return TaskRun(id=UUID(id) if id else uuid4(), name=name, task_key=f"{name}-key", dynamic_key="0",
                   flow_run_id=flow_run_id, state=_state(kind, state_name), tags=[stage_tag(stage)] if stage else [],
                   start_time=None if start is None else T0 + timedelta(seconds=start),
                   expected_start_time=None if start is None else T0 + timedelta(seconds=start),
                   total_run_time=timedelta(seconds=seconds))


def _progress(key: str, percent: float, description: str, task_run: Any = None, flow_run_id: UUID = FLOW_ID,
              at: float = 0.0, metadata: dict[str, str] | None = None) -> Artifact:
    return Artifact(key=key, type="progress", data=percent, description=description, metadata_=metadata,
                    task_run_id=getattr(task_run, "id", None), flow_run_id=flow_run_id,
                    created=T0, updated=T0 + timedelta(seconds=at))


# The lcnet/full run the shapes come from (ninja-squirrel), 70 s in: data and split done,
# train at epoch 1 of 2.
def _lcnet_at_70s() -> tuple[list[TaskRun], list[Artifact]]:
    train = _task("train-73a", "RUNNING", 5.5, id="01a20b48-4656-73f7-affb-aaf9eb175750")
    runs = [train, _task("split-cfc", "COMPLETED", 4.8, 0.6), _task("data-347", "COMPLETED", 0.0, 4.74)]
    return runs, [_progress("train-progress", 50, "epoch 1/2: val top-1 0.1014", train, at=60)]


# ------------------------------------------------------------------ stage mapping


@pytest.mark.parametrize("name, tags, stages, stage", [
    ("data-347", ["stage:data"], LCNET.stages, "data"),
    ("train-73a", ["stage:train"], LCNET.stages, "train"),
    ("serial-search-0", ["stage:serial"], SPNAS.stages, "serial"),
    ("parallel-search-0", ["stage:parallel"], SPNAS.stages, "parallel"),
    ("fine_tune-1a2", ["stage:fine_tune"], SPNAS.stages, "fine_tune"),
    ("fully_train-baseline", ["stage:fully_train"], SPNAS.stages, "fully_train"),
    ("compare-0", ["stage:fully_train"], SPNAS.stages, "fully_train"),  # the tag, not the name, decides
    ("compare-0", [], SPNAS.stages, None),                                # untagged: no stage's run
    ("train_base-0", ["other", "stage:train_base"], PRUNE_EA.stages, "train_base"),
    ("prune-search-0", ["stage:prune_search"], PRUNE_EA.stages, "prune_search"),
    ("retrain-3", ["stage:retrain"], PRUNE_EA.stages, "retrain"),
    ("spos-search-0", ["stage:search"], SPOS.stages, "search"),
    ("rank_check-9f0", ["stage:rank_check"], SPOS.stages, "rank_check"),
    ("sanas-search-0", ["stage:search"], SANAS.stages, "search"),
    ("latency_table-0", ["stage:latency_table"], SANAS.stages, "latency_table"),
    ("train-found", ["stage:train"], SANAS.stages, "train"),
    ("train-found", ["stage:serial"], SANAS.stages, None),               # a stage this pipeline lacks
])
def test_runs_map_to_the_stage_their_tag_names(name: str, tags: list[str], stages: tuple[str, ...],
                                               stage: str | None) -> None:
    run = _task(name, "RUNNING", stage="").model_copy(update={"tags": tags})
    assert watch.stage_of(run, stages) == stage


@pytest.mark.parametrize("kind, name, status", [
    ("COMPLETED", "Completed", "done"), ("COMPLETED", "Cached", "cached"), ("RUNNING", "Running", "running"),
    ("FAILED", "Failed", "failed"), ("CRASHED", "Crashed", "failed"), ("PENDING", "Pending", "waiting"),
    ("SCHEDULED", "Late", "waiting"), ("CANCELLED", "Cancelled", "cancelled"),
])
def test_prefect_states_in_the_views_words(kind: str, name: str, status: str) -> None:
    assert watch.status_of(_state(kind, name)) == status


def test_a_stage_with_several_runs_is_as_far_as_its_least_finished() -> None:
    assert watch.combine([]) == "waiting"
    assert watch.combine(["cached", "cached"]) == "cached"
    assert watch.combine(["cached", "done"]) == "done"
    assert watch.combine(["done", "waiting"]) == "running"   # fully_train done, compare about to run
    assert watch.combine(["done", "failed"]) == "failed"


def test_lcnet_mid_run_view() -> None:
    runs, arts = _lcnet_at_70s()
    views = {v.name: v for v in watch.build_stages(LCNET.stages, runs, [], arts, _state("RUNNING"))}
    assert list(views) == list(LCNET.stages)
    assert [views[s].status for s in LCNET.stages] == ["done", "done", "running", "waiting", "waiting",
                                                               "waiting"]
    assert views["data"].fraction == 1.0 and views["data"].seconds == pytest.approx(4.74)
    assert views["train"].fraction == 0.5 and views["train"].text() == "epoch 1/2: val top-1 0.1014"
    assert views["evaluate"].fraction is None and views["evaluate"].text() == ""


def test_search_subflow_shows_candidates_and_best_from_its_progress() -> None:
    """spnas/full in its serial search: data cached, the search subflow running (its tracking task
    run in the parent is still Pending; the subflow's own state wins), its progress artifact
    created in the subflow (no task run id)."""
    stages = SPNAS.stages
    tracking = _task("serial-search-0", "PENDING", 30, stage="serial")
    sub = FlowRun(id=uuid4(), name="clever-fox", flow_id=uuid4(), parent_task_run_id=tracking.id,
                  state=_state("RUNNING"), tags=[stage_tag("serial")])
    candidate = _task("serial-3-111-2111", "RUNNING", 40, flow_run_id=sub.id, stage="serial")  # a subflow's task: not listed here
    runs = [_task("data-0a1", "COMPLETED", 0, state_name="Cached"), _task("split-b2c", "COMPLETED", 1, 2.0),
            _task("fine_tune-c3d", "COMPLETED", 3, 20.0, state_name="Cached"), tracking]
    best = Progress.best_of([{"id": 1, "mAP": 0.31, "status": "ok"}, {"id": 5, "mAP": 0.412, "status": "ok"},
                             {"id": 6, "mAP": None, "status": "failed"}], "mAP")
    arts = [_progress("serial-search-progress", 0, "serial search: candidates evaluated", flow_run_id=sub.id, at=31),
            _progress("serial-search-progress", 37.5, Progress.describe(3, 8, best), flow_run_id=sub.id, at=90,
                      metadata=Progress.metadata(3, 8, best))]
    arts[0].id = arts[1].id = uuid4()
    arts[0].key = "old-version"  # an earlier artifact with another key: the newest description wins
    views = {v.name: v for v in watch.build_stages(stages, runs, [sub], arts, _state("RUNNING"))}
    assert candidate.flow_run_id == sub.id
    assert [views[s].status for s in stages] == ["cached", "done", "cached", "running", "waiting", "waiting",
                                                 "waiting", "waiting"]
    serial = views["serial"]
    assert (serial.done, serial.total, serial.best) == (3, 8, "mAP 0.412 (#5)")
    assert serial.text() == "candidates 3/8, best mAP 0.412 (#5)"
    assert serial.fraction == pytest.approx((0 + 0.375) / 2)  # two keys: mean of their fractions
    assert views["data"].text() == "reused from an earlier run"


def test_fully_train_two_runs_then_compare_and_a_failed_flow() -> None:
    stages = SPNAS.stages
    final = _task("fully_train-final", "COMPLETED", 100, 60.0)
    base = _task("fully_train-baseline", "COMPLETED", 160, 50.0)
    compare = _task("compare-0", "FAILED", 210, 1.0, stage="fully_train")  # run by pipe.run("fully_train", ...)
    earlier = [_task(f"{s}-0", "COMPLETED", i, 1.0) for i, s in enumerate(stages[:6])]
    arts = [_progress("fully-train-final-progress", 100, "done", final, at=160),
            _progress("fully-train-baseline-progress", 100, "done", base, at=210)]
    views = {v.name: v for v in watch.build_stages(stages, earlier + [compare, base, final], [], arts,
                                                   _state("FAILED"))}
    assert views["fully_train"].status == "failed"
    assert views["fully_train"].seconds == pytest.approx(111.0)
    assert views["fully_train"].text() == "done  (1:51)"
    assert views["export"].status == "skipped"  # the flow ended before it


# ------------------------------------------------------------------ progress figures


def test_progress_figures_round_trip_as_data() -> None:
    """The UI reads the description; the watcher reads the same figures from the metadata."""
    assert Progress.describe(3, 8, "mAP 0.412 (#5)") == "3/8 candidates, best mAP 0.412 (#5)"
    metadata = Progress.metadata(3, 8, "mAP 0.412 (#5)")
    assert all(isinstance(k, str) and isinstance(v, str) and len(v) <= 500 for k, v in metadata.items())
    assert Progress.fields(metadata) == {"done": 3, "total": 8, "best": "mAP 0.412 (#5)"}
    assert Progress.fields(Progress.metadata(0, 8)) == {"done": 0, "total": 8}
    assert Progress.fields({"other": "epoch 1/2: val top-1 0.1014"}) == {}
    assert Progress.fields({Progress.METADATA_KEY: "not json"}) == {}
    assert Progress.fields({Progress.METADATA_KEY: '{"done": true, "total": 8}'}) == {}
    assert Progress.fields(None) == {}
    assert len(Progress.fields(Progress.metadata(1, 2, "x" * 1000))["best"]) < 500  # Prefect's limit per value


def test_best_of_skips_failed_and_non_finite() -> None:
    rows = [{"id": 0, "acc": float("nan"), "status": "ok"}, {"id": 1, "acc": 0.9, "status": "failed"},
            {"id": 2, "acc": 0.81234567, "status": "ok"}, {"id": 3, "acc": True, "status": "ok"}]
    assert Progress.best_of(rows, "acc") == "acc 0.8123 (#2)"
    assert Progress.best_of([{"id": 1, "status": "failed"}], "acc") is None


# ------------------------------------------------------------------ output


def test_plain_printer_prints_changes_only() -> None:
    out = io.StringIO()
    printer = watch.PlainPrinter(out)
    runs, arts = _lcnet_at_70s()
    views = watch.build_stages(LCNET.stages, runs, [], arts, _state("RUNNING"))
    printer.show("Running", views, 70)
    printer.show("Running", views, 71.5)  # nothing changed: nothing printed
    lines = out.getvalue().splitlines()
    assert lines == ["[   1:10] flow run: Running",
                     "[   1:10] data         done      100%  (5 s)",
                     "[   1:10] split        done      100%  (1 s)",
                     "[   1:10] train        running    50%  epoch 1/2: val top-1 0.1014"]


def test_live_table_renders_every_stage() -> None:
    runs, arts = _lcnet_at_70s()
    views = watch.build_stages(LCNET.stages, runs, [], arts, _state("RUNNING"))
    console = Console(record=True, width=140, force_terminal=True)
    console.print(watch.live_table("ninja-squirrel", "Running", views, 70))
    text = console.export_text()
    assert "ninja-squirrel" in text and "Running" in text
    for stage in LCNET.stages:
        assert re.search(rf"^{stage}\s", text, re.M), stage
    assert "epoch 1/2: val top-1 0.1014" in text and " 50%" in text


SUMMARY = {"val_top1": 0.4253521126760563, "test_top1": 0.4375, "macs": 499520, "params": 252994,
           "onnx_max_abs_diff": 4.410743713378906e-06, "predict_latency_ms": 0.16985300135274883,
           "wall_seconds": 217.9}


def test_summary_from_the_run_folder_or_the_table_artifact(tmp_path: Path) -> None:
    run_dir = tmp_path / "ninja-squirrel"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps(SUMMARY))
    assert watch.read_summary(run_dir) == SUMMARY
    table = Artifact(key="lcnet-summary", type="table", flow_run_id=FLOW_ID,
                     data=json.dumps([{"metric": k, "value": v} for k, v in SUMMARY.items()]))
    other = Artifact(key="evaluation", type="table", flow_run_id=FLOW_ID, data='[{"subset": "val", "top1": 0.4}]')
    assert watch.read_summary(tmp_path / "elsewhere", [other, table]) == SUMMARY
    assert watch.read_summary(None, [other]) is None
    console = Console(record=True, width=100)
    console.print(watch.summary_table(SUMMARY))
    text = console.export_text()
    assert "onnx_max_abs_diff" in text and "4.41074e-06" in text and "499520" in text


class _Recorded:
    """Replays API answers of one flow run (the sync client's read methods the watcher uses)."""

    def __init__(self, flow_run: FlowRun, steps: list[tuple[State, list[TaskRun], list[Artifact]]]) -> None:
        self.flow_run, self.steps, self.i = flow_run, steps, -1

    def read_flow_run(self, flow_run_id: UUID) -> FlowRun:
        assert flow_run_id == self.flow_run.id
        self.i = min(self.i + 1, len(self.steps) - 1)
        return self.flow_run.model_copy(update={"state": self.steps[self.i][0]})

    def read_task_runs(self, task_run_filter: Any) -> list[TaskRun]:
        return self.steps[self.i][1]

    def read_flow_runs(self, flow_run_filter: Any) -> list[FlowRun]:
        return []

    def read_artifacts(self, artifact_filter: Any) -> list[Artifact]:
        kinds = artifact_filter.type.any_
        return [a for a in self.steps[self.i][2] if a.type in kinds]


def test_watch_to_the_end_prints_stages_summary_and_final_state(tmp_path: Path) -> None:
    runs, arts = _lcnet_at_70s()
    done = [_task(f"{s}-0", "COMPLETED", i, 1.0) for i, s in enumerate(LCNET.stages)]
    table = Artifact(key="lcnet-summary", type="table", flow_run_id=FLOW_ID,
                     data=json.dumps([{"metric": k, "value": v} for k, v in SUMMARY.items()]))
    flow_run = FlowRun(id=FLOW_ID, name="ninja-squirrel", flow_id=uuid4(), state=_state("SCHEDULED"))
    client = _Recorded(flow_run, [(_state("SCHEDULED"), [], []), (_state("RUNNING"), runs, arts),
                                  (_state("COMPLETED"), done, arts + [table])])
    out = io.StringIO()
    code = watch.watch_flow_run(client, flow_run, LCNET.stages, output_root=tmp_path,
                                console=Console(file=out, width=120), interval=0, live=False)
    text = out.getvalue()
    assert code == 0
    for stage in LCNET.stages:
        assert re.search(rf"\] {stage}\s+done\b", text), stage
    assert "flow run: Scheduled" in text and "flow run: Completed" in text
    assert "predict_latency_ms" in text and text.rstrip().endswith("final state: Completed")

    failed = _Recorded(flow_run, [(_state("FAILED", message="Flow run encountered an exception"), runs, arts)])
    out = io.StringIO()
    assert watch.watch_flow_run(failed, flow_run, LCNET.stages, output_root=None,
                                console=Console(file=out, width=120), interval=0, live=False) == 1
    assert "final state: Failed (Flow run encountered an exception)" in out.getvalue()


def test_poll_reads_stages_subflows_and_progress_from_a_real_api(prefect_api, tmp_path: Path, monkeypatch) -> None:
    """A tiny flow shaped like ours on a real Prefect API, its stages run through Pipeline.run /
    search / map: a "data" task, a "serial" search subflow and two mapped "retrain" tasks, with
    Progress in the task and the subflow. Every run of a stage carries its `stage:<name>` tag
    (the subflow's tracking task run in the parent and the subflow run both), and the watcher's
    reads map them to their stages by it and read the search's figures from artifact metadata."""
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    from tasks.orchestration.pipeline import Pipeline

    @task(name="load")  # named unlike its stage: only the tag maps it
    def data_task(ctx: StageContext) -> dict[str, Any]:
        progress = Progress("data-progress", "data")
        progress.update(0.5, "epoch 1/2")
        return {}

    @flow(name="serial-search")
    def serial_search(ctx: StageContext, refresh: bool) -> None:
        progress = Progress("serial-search-progress", "serial search: candidates evaluated")
        progress.update(0.375, done=3, total=8, best="mAP 0.412 (#5)")

    @task(name="fit")
    def retrain_task(candidate: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        return {"id": candidate["id"]}

    stages = ("data", "serial", "retrain", "export")
    # Work folders by stage and candidate: this test is about tags, not stage cache keys.
    monkeypatch.setattr(Pipeline, "work_dir", lambda self, stage, fn, inputs:
                        tmp_path / "work" / stage / str(inputs.get("candidate", {}).get("id", "")))

    @flow(name="watch-shape")
    def shaped() -> None:
        pipe = Pipeline("watch-shape", "shape", tmp_path / "run", "no-mlflow-run", "0", Runtime(), stages)
        pipe.run("data", data_task)
        pipe.search("serial", serial_search)
        pipe.map("retrain", retrain_task, [{"id": 0}, {"id": 1}])

    state = shaped(return_state=True)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        flow_run, views = watch.poll(client, flow_run_id, stages)
        task_runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])))
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
    assert flow_run.state.is_completed()
    assert sorted((r.name.split("-")[0], r.tags) for r in task_runs) == [
        ("fit", ["stage:retrain"]), ("fit", ["stage:retrain"]), ("load", ["stage:data"]),
        ("serial", ["stage:serial"])]
    tracking = next(r for r in task_runs if r.name.startswith("serial-search"))
    assert [(s.parent_task_run_id, s.tags) for s in subflows] == [(tracking.id, ["stage:serial"])]
    assert [(v.name, v.status) for v in views] == [("data", "done"), ("serial", "done"), ("retrain", "done"),
                                                   ("export", "skipped")]
    assert views[0].detail == "epoch 1/2" and views[0].fraction == 1.0
    assert (views[1].done, views[1].total, views[1].best) == (3, 8, "mAP 0.412 (#5)")
    assert views[1].text().startswith("candidates 3/8, best mAP 0.412 (#5)")


class _Interrupted(_Recorded):
    def read_task_runs(self, task_run_filter: Any) -> list[TaskRun]:
        raise KeyboardInterrupt


class _Flaky(_Recorded):
    """The API fails once (a busy server), then answers."""

    failed = False

    def read_task_runs(self, task_run_filter: Any) -> list[TaskRun]:
        if not self.failed:
            self.failed = True
            raise ConnectionError("server busy")
        return super().read_task_runs(task_run_filter)


def test_ctrl_c_stops_watching_only_and_a_busy_api_is_retried() -> None:
    flow_run = FlowRun(id=FLOW_ID, name="ninja-squirrel", flow_id=uuid4(), state=_state("RUNNING"))
    out = io.StringIO()
    code = watch.watch_flow_run(_Interrupted(flow_run, [(_state("RUNNING"), [], [])]), flow_run, LCNET.stages,
                                output_root=None, console=Console(file=out, width=80), interval=0, live=False,
                                cancel_hint=f"Cancel it with: prefect flow-run cancel {FLOW_ID}")
    assert code == 130
    assert f"stopped watching; flow run ninja-squirrel goes on. Cancel it with: prefect flow-run cancel {FLOW_ID}" \
        in out.getvalue()

    out = io.StringIO()
    flaky = _Flaky(flow_run, [(_state("COMPLETED"), [_task(f"{s}-0", "COMPLETED", 0) for s in LCNET.stages], [])])
    assert watch.watch_flow_run(flaky, flow_run, LCNET.stages, output_root=None,
                                console=Console(file=out, width=80), interval=0, live=False) == 0
    text = out.getvalue()
    assert "Prefect API did not answer (ConnectionError: server busy); retrying" in text
    assert text.index("predict      done") < text.index("flow run: Completed")  # the final state comes last


def test_stack_environ_is_the_stacks_and_is_restored(tmp_path: Path, monkeypatch) -> None:
    from spnas.stack import StackConfig

    monkeypatch.setenv("PREFECT_API_KEY", "a-users-cloud-key")
    before = dict(os.environ)
    cfg = StackConfig(state=tmp_path, prefect_port=40001, mlflow_port=40002)
    with watch.stack_environ(cfg):
        assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:40001/api"
        assert "PREFECT_API_KEY" not in os.environ
    assert dict(os.environ) == before


def test_the_client_talks_to_the_stack_whatever_prefect_was_imported_with(tmp_path: Path) -> None:
    from prefect.settings import get_current_settings
    from spnas.stack import StackConfig

    cfg = StackConfig(state=tmp_path, prefect_port=40003, mlflow_port=40004)
    with watch._client(cfg) as client:  # no request is made until the first read
        assert str(client.api_url) == "http://127.0.0.1:40003/api/"
        assert get_current_settings().api.key is None


def test_no_watch_and_raw_watch_exclude_each_other(capsys) -> None:
    assert main(["run", "lcnet/full", "--no-watch", "--raw-watch"]) == 2
    assert capsys.readouterr().err.startswith("error: --raw-watch: ")


# ------------------------------------------------------------------ a real run


@pytest.mark.slow
def test_spnas_run_watches_a_real_lcnet_run(lcnet_watched_run) -> None:
    """`spnas run lcnet/full` with stdout piped (as in CI): plain lines, every stage reaching
    done, the summary table, exit code 0 (the session's shared run, tests/conftest.py)."""
    cfg, out, proc = lcnet_watched_run
    text = proc.stdout
    assert proc.returncode == 0, text + proc.stderr
    name = re.search(rf"flow run (\S+) of lcnet/full: {cfg.prefect_ui_url}/runs/flow-run/[0-9a-f-]+", text)
    assert name, text
    for stage in LCNET.stages:
        assert re.search(rf"^\[[ 0-9:s]+\] {stage}\s+done\s+100%", text, re.M), (stage, text)
    summary = json.loads((out / name.group(1) / "summary.json").read_text())
    assert {"val_top1", "test_top1", "macs", "params", "onnx_max_abs_diff", "predict_latency_ms",
            "wall_seconds"} <= set(summary)
    for key in summary:
        assert re.search(rf"│ {key}\s+│", text), (key, text)
    assert f"outputs: {out / name.group(1)}" in text
    assert text.rstrip().endswith("final state: Completed")
    assert "\x1b[" not in text  # no terminal codes in a pipe
