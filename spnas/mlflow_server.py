"""The stack's MLflow tracking server: its command line, its environment and its health check."""
from __future__ import annotations

from spnas import postgres
from spnas.config import StackConfig
from spnas.supervise import bin_path, http_request


def argv(cfg: StackConfig) -> list[str]:
    return [bin_path("mlflow"), "server", "--host", cfg.host, "--port", str(cfg.mlflow_port),
            "--workers", str(cfg.mlflow_workers),
            *postgres.mlflow_store_args(cfg),
            # Proxied artifacts: clients upload over HTTP, files land in the state folder.
            "--serve-artifacts", "--artifacts-destination", str(cfg.state / "mlartifacts"),
            *(["--app-name", "basic-auth"] if cfg.credentials else [])]


def env(cfg: StackConfig) -> dict[str, str]:
    """What this service adds to the stack's process environment."""
    # The job runner (GenAI scorers) spawns ~8 huey processes; nothing here uses it.
    return {} if cfg.mlflow_jobs else {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def healthy(cfg: StackConfig) -> bool:
    code, body = http_request("GET", f"{cfg.mlflow_url}/health", creds=cfg.credentials)
    return code == 200 and body.strip() == b"OK"
