"""Candidates spread by a task runner chosen by parameters: threads by default, or an existing
Dask cluster (here a real in-process distributed LocalCluster)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tasks.pipeline import candidate_runner


def test_default_runner_is_one_candidate_at_a_time() -> None:
    runner, values = candidate_runner({"candidate_workers": 1, "num_threads": None})
    assert type(runner).__name__ == "ThreadPoolTaskRunner" and runner._max_workers == 1
    assert values["num_threads"] is None


def test_thread_workers_split_the_cores() -> None:
    import os

    runner, values = candidate_runner({"candidate_workers": 2, "num_threads": None})
    assert runner._max_workers == 2
    assert values["num_threads"] == max(1, (os.cpu_count() or 1) // 2)


@pytest.mark.slow
def test_serial_search_on_a_dask_cluster(prefect_api, tmp_path: Path) -> None:
    from distributed import LocalCluster

    from params.loader import load_params
    from params.models import SpnasParams
    from tasks.fine_tune import fine_tune
    from tasks.serial_search import serial_search
    from tasks.split_detection import split_detection
    from tracking import tracker

    p = load_params(SpnasParams, "params/spnas.yaml", {
        "num_train_images": 20, "num_val_images": 5, "fine_tune_epochs": 0, "eval_max_images": 2,
        "serial": {"max_sample": 3, "batch": 2, "candidate_steps": 1}}).model_dump(mode="json")
    for d in ("split", "fine_tune"):
        (tmp_path / d).mkdir()
    data = split_detection(p, tmp_path / "split")
    start = fine_tune(data, p, tmp_path / "fine_tune")
    parent = tracker.start_run(tracker.ensure_experiment("dask-test"), "dask")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        runner, values = candidate_runner({**p, "dask_address": cluster.scheduler_address})
        assert type(runner).__name__ == "DaskTaskRunner"
        out = serial_search.with_options(task_runner=runner)(data=data, p=values, start=start,
                                                             run_dir=str(tmp_path), parent_run_id=parent)
    with (tmp_path / "serial/output.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and {r["status"] for r in rows} == {"ok"}
    assert out["best"]["code"] in {r["code"] for r in rows}
