"""Candidates spread by a task runner chosen by parameters: one at a time by default, threads
when asked, or an existing Dask cluster (a real 2-worker LocalCluster: tests/test_dask_cluster.py)."""
from __future__ import annotations

import os
import threading
import time

import pytest

from tasks.orchestration.pipeline import candidate_runner


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
