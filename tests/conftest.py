"""Test session isolation: all state (embedded data, MLflow store, Prefect results) goes to a
temporary SPNAS_HOME, never to the repo's .spnas/ or the user's ~/.prefect."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

_HOME = Path(tempfile.mkdtemp(prefix="spnas-tests-"))
os.environ["SPNAS_HOME"] = str(_HOME)
os.environ["PREFECT_HOME"] = str(_HOME / "prefect")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_HOME / "prefect" / "storage")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_HOME / 'mlflow.db'}"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A full run leaves ~5 GB of weights and stores here; keep it only when asked to."""
    if not os.environ.get("SPNAS_KEEP_TEST_HOME"):
        import shutil

        shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (modules that compare weights bit for bit use it):
    bitwise-repeatable CPU kernels, and a fair share of the machine's cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def spnas_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def prefect_api():
    """A throwaway real Prefect server for flow tests (one per session: it takes seconds to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# --- real prune-ea runs, made once: the flow tests check them, `spnas compare` compares them ----

PRUNE_EA_D20 = {"base": {"epochs": 1}, "retrain": {"epochs": 1, "count": 2},
                "search": {"num_generation": 2, "num_individual": 4, "random_models": 6, "finetune_steps": 3}}
# D20 runs on the default data (photo_digits); D56, three times the compute per image, on the plain digits.
PRUNE_EA_D56 = {"depth": 56, "data": {"embedded": "digits"}, "base": {"epochs": 1}, "retrain": {"epochs": 1, "count": 1},
                "search": {"num_generation": 1, "num_individual": 2, "random_models": 2, "finetune_steps": 1,
                           "control": "random"}}


@pytest.fixture(scope="session")
def prune_ea_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prune-ea-out")


@pytest.fixture(scope="session")
def prune_ea_d20(prefect_api, prune_ea_out: Path) -> dict:
    """A tiny real prune-ea/full run of ResNet-20 (its summary)."""
    from flows.prune_ea import prune_ea

    return prune_ea(params_file="params/prune_ea.yaml", overrides={**PRUNE_EA_D20, "output_root": str(prune_ea_out)})


@pytest.fixture(scope="session")
def prune_ea_d56(prefect_api, prune_ea_out: Path) -> dict:
    """The same flow on ResNet-56, smaller search (its summary)."""
    from flows.prune_ea import prune_ea

    return prune_ea(params_file="params/prune_ea.yaml", overrides={**PRUNE_EA_D56, "output_root": str(prune_ea_out)})


# --- one real stack for the tests that only need one running ------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def running_stack(tmp_path_factory: pytest.TempPathFactory):
    """Prefect server + process worker + MLflow server, every deployment registered, shared by
    the deployment/browser, watch and kill-resume tests (starting it is most of their time).
    Tests that check the stack itself (up/reuse/down, auth, PostgreSQL, worker limits) start their own."""
    from spnas import stack
    from spnas.stack import StackConfig

    tmp = tmp_path_factory.mktemp("stack")
    cfg = StackConfig(state=tmp / "state", prefect_port=free_port(), mlflow_port=free_port())
    try:
        stack.up(cfg)
        assert stack.deploy_all(cfg) == 0
        yield cfg
    finally:
        stack.down(cfg)
    assert not any(s["alive"] for s in stack.status(cfg).values())


LCNET_WATCH_SETS = ("train.epochs=1", "train.batch_size=64", "model.scale=0.25", "model.input_size=16",
                    "predict.count=2", "predict.repeats=1")


@pytest.fixture(scope="session")
def lcnet_watched_run(running_stack, tmp_path_factory: pytest.TempPathFactory):
    """One small lcnet/full run started as a user does — `spnas run lcnet/full --set …` with stdout
    piped — on the shared stack: the watch test reads its terminal output, the deployment and
    browser tests the run it left in both servers. Returns (cfg, output root, completed process)."""
    import subprocess
    import sys

    from spnas import stack

    out = tmp_path_factory.mktemp("lcnet-out")
    sets = [*LCNET_WATCH_SETS, f"output_root={out}"]
    argv = [sys.executable, "-m", "spnas.cli", "run", "lcnet/full"] + [a for s in sets for a in ("--set", s)]
    proc = subprocess.run(argv, env=stack.process_env(running_stack), capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parent.parent)
    print(proc.stdout)
    return running_stack, out, proc


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests on the shared stack run last, so its idle servers do not share the 2 cores with
    every training test after the first of them (the stack lives until the session ends)."""
    items.sort(key=lambda item: "running_stack" in getattr(item, "fixturenames", ()) or
               "lcnet_watched_run" in getattr(item, "fixturenames", ()))
