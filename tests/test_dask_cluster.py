"""Search candidates on a Dask cluster: `dask_address` is a setting of every pipeline, checked to
answer before any work, and each candidate records the worker that evaluated it.

The slow test starts a real 2-worker `distributed.LocalCluster` (processes, 1 thread each, on
127.0.0.1) and runs a real serial search through Prefect's DaskTaskRunner on it: candidates
reach the workers by pickling, data and weights by path (the workers share this file system)."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from core.errors import InputError
from params.models import LcnetParams, PruneEaParams, SanasParams, SposParams, SpnasParams
from params.registry import PRUNE_EA
from tasks.orchestration.pipeline import check_dask_address, pipeline
from tasks.orchestration.search import candidate_task, dask_worker_address


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_every_pipeline_has_the_candidate_settings() -> None:
    for model in (SpnasParams, PruneEaParams, SposParams, SanasParams, LcnetParams):
        assert model.model_fields["dask_address"].default is None, model
        assert model.model_fields["candidate_workers"].default == 1, model
    p = PruneEaParams.model_validate({"candidate_workers": 2, "dask_address": "tcp://10.0.0.5:8786"})
    assert (p.candidate_workers, p.dask_address) == (2, "tcp://10.0.0.5:8786")
    with pytest.raises(ValueError, match="dask_address"):
        SposParams.model_validate({"dask_address": "10.0.0.5:8786"})  # the scheme is required


def test_the_flow_refuses_a_dead_scheduler_before_any_stage(tmp_path: Path) -> None:
    """`pipeline(...)` (what every flow opens first) fails before a folder or MLflow run exists."""
    address = f"tcp://127.0.0.1:{_closed_port()}"
    p = PruneEaParams(dask_address=address, output_root=str(tmp_path / "out"))
    with pytest.raises(InputError) as err:
        with pipeline(PRUNE_EA.name, p, PRUNE_EA.stages):
            pytest.fail("a stage would run")
    assert err.value.field == "dask_address"
    assert str(err.value).startswith(f"dask_address: no Dask scheduler answers at {address}: ")
    assert not (tmp_path / "out").exists()


def test_a_non_scheduler_is_refused(tmp_path: Path) -> None:
    """Something listening that is not a Dask scheduler is refused too (here: a plain HTTP-ish server)."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello\n")

    threading.Thread(target=answer, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    with pytest.raises(InputError, match="dask_address: no Dask scheduler answers at .*: the server there"):
        check_dask_address(address)


def test_no_address_is_not_checked() -> None:
    check_dask_address(None)  # the default: candidates run in the flow's own process


def test_candidate_results_record_no_worker_outside_dask() -> None:
    @candidate_task(name="probe", task_run_name=lambda: "probe")
    def probe(candidate: dict) -> dict:
        return {"id": candidate["id"]}

    assert dask_worker_address() is None
    assert probe.fn({"id": 3}) == {"id": 3, "worker": None}  # .fn: the body without a Prefect run


@pytest.mark.slow
def test_serial_search_spreads_over_two_dask_workers(prefect_api, tmp_path: Path) -> None:
    from distributed import LocalCluster

    from params.models import Runtime
    from tasks.orchestration.context import StageContext
    from tasks.orchestration.files import read_json
    from tasks.spnas.fine_tune import fine_tune_detector
    from tasks.orchestration.pipeline import candidate_runner
    from tasks.spnas.data import detection_sources
    from tasks.orchestration.search import STATE_FILE
    from tasks.spnas.serial import serial_search
    from tasks.spnas.split import split_detection
    from tasks.orchestration.tables import read_table
    from tracking import tracker

    p = SpnasParams.model_validate({
        "data": {"num_train_images": 20, "num_val_images": 5}, "fine_tune": {"epochs": 0},
        "optimizer": {"eval_max_images": 2}, "serial": {"max_sample": 5, "batch": 2, "candidate_steps": 1}})
    for d in ("split", "fine_tune", "serial"):
        (tmp_path / d).mkdir()
    data = split_detection(detection_sources(p.data, p.model.image_size, p.seed), p.data, p.seed, tmp_path / "split")
    start = fine_tune_detector(data, p.model, p.optimizer, p.fine_tune, p.seed, Runtime(), tmp_path / "fine_tune")
    parent = tracker.start_run(tracker.ensure_experiment("dask-cluster-test"), "dask")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        workers = set(cluster.scheduler_info["workers"])
        check_dask_address(cluster.scheduler_address)  # a live scheduler passes
        runner, _ = candidate_runner(1, cluster.scheduler_address)
        assert type(runner).__name__ == "DaskTaskRunner"
        out = serial_search.with_options(task_runner=runner)(
            data=data, start=start, model=p.model, optimizer=p.optimizer, serial=p.serial, seed=p.seed,
            ctx=StageContext("serial", str(tmp_path / "serial"), parent, Runtime(num_threads=1)))
    assert len(workers) == 2
    results = read_json(tmp_path / "serial" / STATE_FILE)["results"]
    assert len(results) == 5 and all(r.get("performance") for r in results.values())
    used = {r["worker"] for r in results.values()}
    assert used == workers  # both workers evaluated candidates, and nothing ran outside them
    rows = read_table(tmp_path / "serial/output.csv")
    assert len(rows) == 5 and set(rows["status"]) == {"ok"} and set(rows["worker"]) == workers
    assert out.best["code"] in set(rows["code"])
