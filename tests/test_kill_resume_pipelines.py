"""Resume, proven for every pipeline beside spnas/full (tests/test_kill_resume.py): through the real
stack, each flow-run process is killed by pid in the middle of its longest stage (the search of
prune-ea, spos and sanas; the training of lcnet), then run again with the same parameters. The
stages that had finished come back Cached, candidates that had finished are not evaluated again,
the training continues from its checkpoint, every MLflow run ends FINISHED or KILLED, and every
exported model's files agree with eager torch and with each other."""
from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from export_checks import assert_files_agree, assert_reported_parity
from spnas import stack
from spnas.stack import StackConfig
from test_kill_resume import _top_runs, _wait

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _newest(state: Path, pattern: str, since: float) -> Path | None:
    """The newest file matching `pattern` under the stack's work folders written after `since`
    (other tests' runs of the same pipeline on the shared stack left older ones)."""
    found = [p for p in (state / "work").glob(pattern) if p.stat().st_mtime >= since]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def searched(stage_glob: str) -> Callable[[Path, float], int]:
    """Candidates told and saved by the search whose state files match `stage_glob`."""
    def told(state: Path, since: float) -> int:
        path = _newest(state, f"{stage_glob}/search_state.json", since)
        try:
            return len(json.loads(path.read_text())["results"]) if path else 0
        except (OSError, ValueError, KeyError):  # being replaced this instant
            return 0
    return told


def trained_epochs(state: Path, since: float) -> int:
    """lcnet: a checkpoint exists once the first epoch finished."""
    return 1 if _newest(state, "lcnet/train/*/checkpoint.pth", since) else 0


@dataclass(frozen=True)
class KillCase:
    deployment: str
    overrides: dict
    progress: Callable[[Path, float], int]  # how far the stage under test got
    kill_at: int                            # progress at which the flow-run process is killed
    cached: tuple[str, ...]                 # stages that finished before the kill: Cached when run again
    candidate_prefix: str | None            # candidates' MLflow run names: FINISHED once each
    exports: tuple[str, ...]                # inference folders (relative to the run folder)
    tol: float = 1e-4


CASES = [
    KillCase("prune-ea/full",
             {"data": {"embedded": "digits"}, "base": {"epochs": 1}, "retrain": {"epochs": 1, "count": 1},
              "search": {"num_generation": 2, "num_individual": 4, "random_models": 4, "finetune_steps": 4}},
             searched("prune-ea/prune_search/*"), 4, ("data", "train_base"), "prune-",
             ("export/baseline/inference_model",)),
    KillCase("spos/full",
             {"supernet": {"steps": 20, "warm_start": {"reference_steps": 4, "align_steps": 3}},
              "search": {"population": 4, "topk": 2, "mutation_count": 2, "crossover_count": 2, "generations": 3,
                         "recalib_batches": 2},
              "rank_check": {"count": 0}, "retrain": {"epochs": 1, "baselines": False}},
             searched("spos/search/*"), 4, ("data", "supernet"), "path-",
             ("export/winner/inference_model",), 1e-3),
    KillCase("sanas/full",
             {"data": {"num_train_images": 24, "num_val_images": 12},
              "search": {"search_steps": 5, "candidate_steps": 8}, "train": {"steps": 3, "batch_size": 4},
              "latency": {"fit_architectures": 12, "holdout_architectures": 100}},
             searched("sanas/search/*"), 2, ("data", "latency_table"), "sa-",
             ("export/found/inference_model", "export/initial/inference_model"), 1e-3),
    KillCase("lcnet/full",
             {"model": {"scale": 0.25, "input_size": 16}, "train": {"epochs": 3, "batch_size": 32},
              "predict": {"count": 2, "repeats": 1}},
             trained_epochs, 1, ("data", "split"), None, ("export/inference_model",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.deployment.split("/")[0] for c in CASES])
def test_killed_pipeline_resumes(case: KillCase, running_stack: StackConfig, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    cfg = running_stack
    name = case.deployment.split("/")[0]
    out = tmp_path / "out"
    params = {"overrides": {**case.overrides, "output_root": str(out)}, "refresh_from": None}
    started = time.time()
    assert stack.run_deployment(cfg, case.deployment, params, watch=False) == 0

    with temporary_settings({PREFECT_API_URL: cfg.prefect_api_url}), get_client(sync_client=True) as client:
        def ours() -> list:
            return [r for r in _top_runs(client) if r.deployment_id and r.created.timestamp() >= started - 5]

        run = _wait("the worker to start the flow run",
                    lambda: (runs := ours()) and runs[0].infrastructure_pid and runs[0], 180)

        def far_enough() -> bool:
            if case.progress(cfg.state, started) >= case.kill_at:
                return True
            state = client.read_flow_run(run.id).state
            assert not state.is_final(), f"the flow run ended before it could be killed: {state}"
            return False

        _wait(f"{name} to reach the stage under test", far_enough, 600, every=0.1)
        os.kill(int(run.infrastructure_pid), signal.SIGKILL)
        crashed = _wait("the killed run to be marked crashed",
                        lambda: (r := client.read_flow_run(run.id)).state.is_final() and r, 180)
        assert crashed.state.name == "Crashed", crashed.state
        progress_at_kill = case.progress(cfg.state, started)

    mlflow = MlflowClient(cfg.mlflow_url)
    experiment = mlflow.get_experiment_by_name(name).experiment_id

    def closed():
        found = mlflow.search_runs([experiment], max_results=1000)
        return found if not any(r.info.status == "RUNNING" for r in found) else None

    # The worker runs the flow's on_crashed hook, which ends the dead run's MLflow runs as KILLED.
    assert any(r.info.status == "KILLED" for r in _wait("the dead run's MLflow runs to be closed", closed, 180))

    assert stack.run_deployment(cfg, case.deployment, params, watch=True) == 0

    with temporary_settings({PREFECT_API_URL: cfg.prefect_api_url}), get_client(sync_client=True) as client:
        second = _top_runs(client)[0]
        assert second.id != run.id and second.state.name == "Completed", second.state
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[second.id])))
        states = {t.name.rsplit("-", 1)[0]: t.state.name for t in tasks}
    for stage in case.cached:
        assert states[stage] == "Cached", (stage, states)

    runs = mlflow.search_runs([experiment], max_results=1000)
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    second_root = next(r for r in runs if r.data.tags.get("prefect.flow_run_id") == str(second.id))
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == second_root.info.run_id}
    if case.candidate_prefix:
        finished = Counter(r.info.run_name for r in runs
                           if r.info.run_name.startswith(case.candidate_prefix) and r.info.status == "FINISHED")
        assert finished and set(finished.values()) == {1}, finished  # none evaluated twice to the end
        assert len(finished) >= progress_at_kill
    else:  # lcnet: the second run's training logged only the epochs after the checkpoint's
        history = mlflow.get_metric_history(children["train"].info.run_id, "val_top1")
        epochs = sorted(m.step for m in history if m.step > 0)  # step 0: the final figure
        assert epochs and epochs[0] >= 2 and epochs[-1] == case.overrides["train"]["epochs"], epochs

    run_dirs = [d for d in out.iterdir() if (d / "summary.json").exists()]
    assert [d.name for d in run_dirs] == [second.name]  # only the second run got to the end
    report = json.loads((run_dirs[0] / "export/export_report.json").read_text())
    assert_reported_parity(report.get("rows", [report]), case.tol)
    for rel in case.exports:
        assert_files_agree(run_dirs[0] / rel, case.tol)
