"""The tracking module against a real (SQLite) MLflow store."""
from __future__ import annotations

import time

import pytest

from tracking import tracker


def test_parent_child_tree_and_crash_cleanup() -> None:
    exp = tracker.ensure_experiment("tracking-test")
    assert tracker.ensure_experiment("tracking-test") == exp
    parent = tracker.start_run(exp, "flow", params={"a": 1, "nested": {"b": 2}},
                               tags={"prefect.flow_run_id": "fr-123"})
    stage = tracker.start_child_run(parent, "stage", {"lr": 0.1})
    candidate = tracker.start_child_run(stage, "candidate-0")
    tracker.log_metrics(candidate, {"mAP": 0.5, "code": "11-21", "bad": float("nan")}, step=3)
    done = tracker.start_child_run(parent, "finished-stage")
    tracker.finish_run(done)

    run = tracker.client().get_run(candidate)
    assert run.data.metrics == {"mAP": 0.5}  # strings and NaN are not metrics
    assert tracker.client().get_run(parent).data.params == {"a": "1", "nested.b": "2"}
    assert {r.info.run_name for r in tracker.child_runs(parent)} == {"stage", "finished-stage"}

    # The flow process died: everything still RUNNING under that flow run ends as KILLED.
    assert tracker.end_open_runs("fr-123") == 3
    statuses = {r: tracker.client().get_run(r).info.status for r in (parent, stage, candidate, done)}
    assert statuses == {parent: "KILLED", stage: "KILLED", candidate: "KILLED", done: "FINISHED"}
    assert tracker.end_open_runs("fr-123") == 0


def test_artifact_keys_are_prefect_safe() -> None:
    assert tracker.artifact_key("Serial Search: Candidates!") == "serial-search-candidates"
    assert tracker.artifact_key("___") == "artifact"


def test_progress_is_silent_outside_a_prefect_run() -> None:
    """Stage functions called plainly (tests, benchmarks) publish nothing and need no API; the
    figures a search reports are data (metadata), the description only shows them."""
    progress = tracker.Progress("serial-search-progress", "serial search")
    progress.update(0.5, done=4, total=8, best="mAP 0.3 (#2)")
    progress.update(1.0, "finished")
    meta = tracker.Progress.metadata(4, 8, "mAP 0.3 (#2)")
    assert tracker.Progress.fields(meta) == {"done": 4, "total": 8, "best": "mAP 0.3 (#2)"}
    assert tracker.Progress.describe(4, 8, "mAP 0.3 (#2)") == "4/8 candidates, best mAP 0.3 (#2)"


def _make_children(parent: str, n: int) -> set[str]:
    """n child runs of `parent`, created straight through the client (no params/metrics: fast)."""
    c = tracker.client()
    experiment_id = c.get_run(parent).info.experiment_id
    return {c.create_run(experiment_id, tags={tracker.PARENT_TAG: parent}, run_name=f"child-{i}").info.run_id
            for i in range(n)}


def test_child_runs_pages_through_every_result(monkeypatch: pytest.MonkeyPatch) -> None:
    exp = tracker.ensure_experiment("tracking-paging")
    parent = tracker.start_run(exp, "flow", tags={"prefect.flow_run_id": "fr-paging"})
    children = _make_children(parent, 25)
    other = tracker.start_run(exp, "other-flow")  # runs of another parent must not leak in
    _make_children(other, 3)

    for page_size in (1, 7, 25, 1000):
        listed = [r.info.run_id for r in tracker.child_runs(parent, page_size=page_size)]
        assert len(listed) == 25 and set(listed) == children, page_size

    # the module-level page size is the default, and end_open_runs pages too
    monkeypatch.setattr(tracker, "SEARCH_PAGE_SIZE", 4)
    assert {r.info.run_id for r in tracker.child_runs(parent)} == children
    assert tracker.end_open_runs("fr-paging") == 26  # the parent and its 25 children
    assert tracker.end_open_runs("fr-paging", page_size=3) == 0
    with pytest.raises(ValueError):
        tracker.child_runs(parent, page_size=0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_child_runs_beyond_mlflows_default_1000() -> None:
    # ~28 ms per create_run on SQLite (2 shared cores): about 30 s, hence "slow"
    exp = tracker.ensure_experiment("tracking-paging-1000")
    parent = tracker.start_run(exp, "flow")
    start = time.monotonic()
    children = _make_children(parent, 1003)
    created_s = time.monotonic() - start
    listed = [r.info.run_id for r in tracker.child_runs(parent)]  # default page size: 1000 + 3
    assert len(listed) == 1003 and set(listed) == children, f"created in {created_s:.1f} s"
