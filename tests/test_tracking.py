"""The tracking module against a real (SQLite) MLflow store."""
from __future__ import annotations

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
