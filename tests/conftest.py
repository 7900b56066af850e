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


@pytest.fixture(scope="session")
def spnas_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def prefect_api():
    """A throwaway real Prefect server for flow tests (one per session: it takes seconds to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
