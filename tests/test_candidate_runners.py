"""Candidates spread by a task runner chosen by parameters: one at a time by default, threads
when asked, or an existing Dask cluster (here a real in-process distributed LocalCluster)."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tasks.pipeline import candidate_runner


def _max_concurrency(workers: int) -> int:
    """Run 4 sleeping tasks through the runner candidate_runner picks; how many overlapped."""
    from prefect import flow, task

    lock, state = threading.Lock(), {"now": 0, "max": 0}

    @task
    def work(i: int) -> int:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.3)
        with lock:
            state["now"] -= 1
        return i

    runner, _ = candidate_runner(workers, None)

    @flow(task_runner=runner)
    def spread() -> list[int]:
        return [f.result() for f in work.map(list(range(4)))]

    assert spread() == [0, 1, 2, 3]
    return state["max"]


@pytest.mark.slow
def test_default_runner_is_one_candidate_at_a_time(prefect_api) -> None:
    assert _max_concurrency(1) == 1


@pytest.mark.slow
def test_thread_workers_run_candidates_together(prefect_api) -> None:
    assert _max_concurrency(2) == 2


def test_thread_workers_split_the_cores() -> None:
    assert candidate_runner(1, None)[1] is None  # one candidate: every core (torch's default)
    assert candidate_runner(2, None)[1] == max(1, (os.cpu_count() or 1) // 2)


@pytest.mark.slow
def test_serial_search_on_a_dask_cluster(prefect_api, tmp_path: Path) -> None:
    from distributed import LocalCluster

    from params.models import Runtime, SpnasParams
    from tasks.fine_tune import fine_tune_detector
    from tasks.prepare_data import detection_sources
    from tasks.serial_search import serial_search
    from tasks.split_detection import split_detection
    from tasks.tables import read_table
    from tracking import tracker

    p = SpnasParams.model_validate({
        "data": {"num_train_images": 20, "num_val_images": 5}, "fine_tune": {"epochs": 0},
        "optimizer": {"eval_max_images": 2}, "serial": {"max_sample": 3, "batch": 2, "candidate_steps": 1}})
    for d in ("split", "fine_tune", "serial"):
        (tmp_path / d).mkdir()
    data = split_detection(detection_sources(p.data, p.model.image_size, p.seed), p.data, p.seed, tmp_path / "split")
    start = fine_tune_detector(data, p.model, p.optimizer, p.fine_tune, p.seed, Runtime(), tmp_path / "fine_tune")
    parent = tracker.start_run(tracker.ensure_experiment("dask-test"), "dask")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        runner, _ = candidate_runner(1, cluster.scheduler_address)
        assert type(runner).__name__ == "DaskTaskRunner"
        out = serial_search.with_options(task_runner=runner)(
            data=data, start=start, model=p.model, optimizer=p.optimizer, serial=p.serial, seed=p.seed,
            work_dir=str(tmp_path / "serial"), parent_run_id=parent, runtime=Runtime())
    rows = read_table(tmp_path / "serial/output.csv")
    assert len(rows) == 3 and set(rows["status"]) == {"ok"}
    assert out["best"]["code"] in set(rows["code"])
