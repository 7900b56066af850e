"""What the servers need to enforce the credentials (spnas/auth.py has the rules): Prefect's auth
string, MLflow's basic-auth app with an ini written here (mode 0600) whose admin user is the
SPNAS_AUTH user, and that admin's password kept in step when SPNAS_AUTH changes."""
from __future__ import annotations

import configparser
import os
import secrets
from pathlib import Path

from spnas.auth import Credentials, is_loopback, is_wildcard, url_host
from spnas.config import MLFLOW, PREFECT, StackConfig
from spnas.supervise import http_request


def auth_dir(cfg: StackConfig) -> Path:
    path = cfg.state / "auth"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # mkdir's mode is masked by umask and ignored for an existing folder
    return path


def mlflow_ini(cfg: StackConfig) -> Path:
    return cfg.state / "auth" / "mlflow-auth.ini"


def _write_private(path: Path, text: str) -> None:
    """Write a file nobody else can read, not even for a moment (created 0600, then renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _read_ini_admin(path: Path) -> Credentials | None:
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
        user = parser["mlflow"].get("admin_username")
        password = parser["mlflow"].get("admin_password")
    except (configparser.Error, KeyError):
        return None
    return Credentials(user, password, str(path)) if user and password else None


def _write_ini(cfg: StackConfig, admin: Credentials) -> None:
    def esc(value: str) -> str:  # MLflow reads the ini with configparser, which expands '%'
        return value.replace("%", "%%")

    _write_private(mlflow_ini(cfg), "\n".join([
        "[mlflow]",
        # Users other than the admin get this on experiments they did not create.
        "default_permission = READ",
        f"database_uri = sqlite:///{esc(str(cfg.state / 'auth' / 'mlflow-auth.db'))}",
        f"admin_username = {esc(admin.username)}",
        # Read by MLflow only when it creates the admin user; a later change of SPNAS_AUTH is
        # applied through the running server (sync_mlflow_admin).
        f"admin_password = {esc(admin.password)}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
    ]) + "\n")


def _flask_secret(cfg: StackConfig) -> str:
    """The basic-auth app's CSRF key: static across restarts so open browser forms stay valid."""
    path = auth_dir(cfg) / "flask-secret"
    try:
        value = path.read_text().strip()
    except OSError:
        value = ""
    if not value:
        value = secrets.token_hex(32)
        _write_private(path, value + "\n")
    return value


def _allowed_hosts(cfg: StackConfig) -> str:
    # MLflow rejects requests whose Host header is not a local or private address (DNS
    # rebinding guard); setting the list replaces its defaults, so they are repeated here.
    local = ["localhost", "127.0.0.1", "[::1]", "0.0.0.0"]
    names = local + [f"{h}:*" for h in local]
    names[names.index("[::1]:*")] = "[[]::1]:*"  # fnmatch: '[' must be escaped
    names += ["192.168.*", "10.*", *[f"172.{i}.*" for i in range(16, 32)], "fc00:*"]
    for host in {cfg.host, cfg.public}:
        if not is_wildcard(host):
            shown = url_host(host)
            names += [shown, f"{shown.replace('[', '[[]', 1)}:*"]
    return ",".join(dict.fromkeys(names))


def apply_server_env(cfg: StackConfig, service: str, env: dict[str, str]) -> None:
    """Add what a server needs to enforce the credentials (no-op without them)."""
    creds = cfg.credentials
    if creds is None:
        return
    if service == PREFECT:
        env["PREFECT_SERVER_API_AUTH_STRING"] = creds.auth_string
    elif service == MLFLOW:
        # The ini names the admin the auth store already has (same user: keep the password it
        # was created with, the change is applied once the server runs); otherwise SPNAS_AUTH's.
        auth_dir(cfg)
        old = _read_ini_admin(mlflow_ini(cfg))
        _write_ini(cfg, old if old is not None and old.username == creds.username else creds)
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(mlflow_ini(cfg))
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = _flask_secret(cfg)
        # These would override the ini's admin user.
        env.pop("MLFLOW_AUTH_ADMIN_USERNAME", None)
        env.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)
        if not is_loopback(cfg.host) or cfg.public_host:
            env["MLFLOW_SERVER_ALLOWED_HOSTS"] = _allowed_hosts(cfg)


def _call(method: str, url: str, creds: Credentials, body: dict[str, str] | None = None) -> int:
    return http_request(method, url, body, timeout=10, creds=creds)[0]


def sync_mlflow_admin(cfg: StackConfig) -> str | None:
    """Make MLflow accept SPNAS_AUTH; returns why it does not (None when it does).

    MLflow reads the ini's admin password only when it creates the user, so after a password
    change the running server is asked to update it, authenticated with the old one."""
    creds = cfg.credentials
    if creds is None:
        return None
    api = f"{cfg.mlflow_url}/api/2.0/mlflow/users"
    old = _read_ini_admin(mlflow_ini(cfg))
    if old is not None and old.username == creds.username and old.password != creds.password:
        code = _call("PATCH", f"{api}/update-password", old, {
            "username": creds.username, "password": creds.password,
            "current_password": old.password})
        if code == 200:
            _write_ini(cfg, creds)
    code = _call("GET", f"{api}/current", creds)
    if code == 200:
        if old is None or (old.username, old.password) != (creds.username, creds.password):
            _write_ini(cfg, creds)
        return None
    return (f"MLflow at {cfg.mlflow_url} rejects the {creds.source} credentials of user "
            f"{creds.username!r} (HTTP {code}): its user store "
            f"{cfg.state / 'auth' / 'mlflow-auth.db'} holds another password for that user. "
            f"Use that password, or change it in the MLflow UI, or stop the stack and delete the "
            f"store to recreate the admin user from {creds.source}.")
