"""What the local stack is: its services, ports, state folder, and the environment its processes
run with. Values not given to StackConfig come from the SPNAS_* variables (spnas/settings.py)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.errors import InputError
from core.paths import REPO_ROOT, state_dir
from spnas import auth, settings
from spnas.settings import Server

PREFECT = "prefect"
MLFLOW = "mlflow"
WORKER = "worker"
SERVICES = (PREFECT, MLFLOW, WORKER)
WORKER_NAME = "spnas-local"

# The database choice (spnas/postgres.py).
SQLITE = "sqlite"
POSTGRES = "postgres"
CHOICES = (SQLITE, POSTGRES)

# Default of the fields read from the environment: one Settings parse fills them all, so a
# bad variable is reported once, and values passed in explicitly are kept.
_FROM_ENV: Any = object()


@dataclass(frozen=True)
class StackConfig:
    # Bind address (SPNAS_HOST); anything but loopback needs credentials (spnas/auth.py).
    host: str = _FROM_ENV
    # What URLs shown to others say (SPNAS_PUBLIC_HOST; "" = derived, see `public`).
    public_host: str = _FROM_ENV
    credentials: auth.Credentials | None = field(default=_FROM_ENV, repr=False)
    prefect_port: int = _FROM_ENV
    mlflow_port: int = _FROM_ENV
    pool: str = "local"
    worker_limit: int = _FROM_ENV
    # "sqlite" or "postgres" (spnas/postgres.py); None: what this state folder last ran with.
    db: str | None = None
    postgres_port: int = _FROM_ENV
    # SPNAS_DATABASE_URL's server; None: unset.
    database: Server | None = field(default=_FROM_ENV, repr=False)
    # One uvicorn worker (threads inside) is plenty for one user; each extra costs ~250 MB.
    mlflow_workers: int = 1
    # MLflow's job runner (GenAI scorers) spawns ~8 huey processes (~700 MB) and leaves a
    # temp folder in /dev/shm per start; nothing here uses it. SPNAS_MLFLOW_JOBS=1 enables.
    mlflow_jobs: bool = _FROM_ENV
    start_timeout: float = 120.0
    stop_timeout: float = 20.0
    # Resolved when the config is made, so a test's SPNAS_HOME is captured once.
    state: Path = field(default_factory=state_dir)

    def __post_init__(self) -> None:
        missing = [f.name for f in fields(self) if getattr(self, f.name) is _FROM_ENV]
        if missing:
            env = settings.load()
            for name in missing:
                object.__setattr__(self, name, getattr(env, name))
        auth.check_exposure(self.host, self.credentials)
        if self.prefect_port == self.mlflow_port:
            raise InputError(
                "SPNAS_MLFLOW_PORT",
                f"must differ from SPNAS_PREFECT_PORT (both are {self.prefect_port})",
            )
        if self.db is not None and self.db not in CHOICES:
            raise InputError("--db", f"must be one of {', '.join(CHOICES)}, got {self.db!r}")
        if self.database is not None and self.db == SQLITE:
            raise InputError(settings.URL_VAR, "is set, which puts the stack on PostgreSQL; unset "
                                               "it to use --db sqlite")
        if self.postgres_port in (self.prefect_port, self.mlflow_port):
            raise InputError(settings.PORT_VAR, f"must differ from the Prefect and MLflow ports "
                                                f"({self.prefect_port}, {self.mlflow_port}), got "
                                                f"{self.postgres_port}")
        if self.worker_limit < 1:
            raise InputError("SPNAS_WORKER_LIMIT",
                             f"must be a whole number >= 1, got {self.worker_limit}")

    @property
    def public(self) -> str:
        return auth.public_host(self.host, self.public_host)

    def _url(self, port: int, public: bool = False) -> str:
        host = self.public if public else auth.connect_host(self.host)
        return f"http://{auth.url_host(host)}:{port}"

    @property
    def prefect_ui_url(self) -> str:
        return self._url(self.prefect_port)

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_ui_url}/api"

    @property
    def mlflow_url(self) -> str:
        return self._url(self.mlflow_port)

    def mlflow_runs_url(self, experiment_id: str | int) -> str:
        # MLflow 3.17 opens an experiment on a GenAI overview; the runs table is this route.
        return f"{self._url(self.mlflow_port, public=True)}/#/experiments/{experiment_id}/runs"

    @property
    def prefect_home(self) -> Path:
        return self.state / "prefect"

    @property
    def logs_dir(self) -> Path:
        return self.state / "logs"

    @property
    def pids_dir(self) -> Path:
        return self.state / "pids"

    def log_file(self, service: str) -> Path:
        return self.logs_dir / f"{service}.log"

    def pid_file(self, service: str) -> Path:
        return self.pids_dir / f"{service}.pid"

    def service_url(self, service: str) -> str:
        """The address shown to people (SPNAS_PUBLIC_HOST when set)."""
        if service == MLFLOW:
            return self._url(self.mlflow_port, public=True)
        ui = self._url(self.prefect_port, public=True)
        return ui if service == PREFECT else f"{ui}/work-pools/work-pool/{self.pool}"


def stack_env(cfg: StackConfig) -> dict[str, str]:
    """The variables every process of ours runs with (servers, worker, CLI calls, flows)."""
    home = cfg.prefect_home
    public_api = f"{cfg.service_url(PREFECT)}/api"
    loopback = ",".join(dict.fromkeys((auth.connect_host(cfg.host), cfg.public, "localhost")))
    no_proxy = ",".join(p for p in (os.environ.get("NO_PROXY", ""), loopback) if p)
    return {
        "SPNAS_HOME": str(cfg.state),
        # prefect.yaml's pull step runs each flow from this checkout.
        "SPNAS_REPO": str(REPO_ROOT),
        "SPNAS_PREFECT_PORT": str(cfg.prefect_port),
        "SPNAS_MLFLOW_PORT": str(cfg.mlflow_port),
        # Prefect home, profiles and DB inside the state folder: ~/.prefect is never read.
        "PREFECT_HOME": str(home),
        "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        "PREFECT_API_URL": cfg.prefect_api_url,
        # The UI is told its API address by the server; without this a non-4200 port serves
        # a UI that calls 4200 ("Can't connect to Server API") while health checks pass.
        # ... and it must be an address the browser (maybe on another machine) can reach.
        "PREFECT_UI_API_URL": public_api,
        "PREFECT_UI_URL": cfg.service_url(PREFECT),
        "PREFECT_SERVER_API_HOST": cfg.host,
        "PREFECT_SERVER_API_PORT": str(cfg.prefect_port),
        # Offline machines: telemetry only produces errors in the logs.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        # Persisted task results are what lets a crashed flow run resume from cache.
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "MLFLOW_TRACKING_URI": cfg.mlflow_url,
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
        # With credentials: PREFECT_API_AUTH_STRING, MLFLOW_TRACKING_USERNAME/PASSWORD.
        **auth.client_env(cfg.credentials),
    }


def process_env(cfg: StackConfig) -> dict[str, str]:
    """os.environ with the stack's variables on top.

    Inherited PREFECT_* variables are dropped: they configure the user's other Prefect
    setups (a Cloud key, a profile, a database URL) and would leak into this one.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(stack_env(cfg))
    return env
