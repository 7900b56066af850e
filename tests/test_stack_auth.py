"""Serving beyond localhost: bind address and credential rules, and one slow test showing both
servers reject unauthenticated requests when SPNAS_AUTH is set."""
from __future__ import annotations

import base64
import configparser
import contextlib
import io
import json
import os
import shlex
import socket
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from core.errors import InputError
from spnas import auth, cli, mlflow_server, server_auth, stack
from spnas.stack import StackConfig, StackError

PASSWORD = "s3cret%pass:with-colon"  # '%' and ':' on purpose (ini escaping, first-colon split)
AUTH = f"alice:{PASSWORD}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("SPNAS_HOST", "SPNAS_PUBLIC_HOST", "SPNAS_AUTH", "SPNAS_AUTH_FILE",
                "SPNAS_DATABASE_URL", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SPNAS_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("SPNAS_PREFECT_PORT", "14321")
    monkeypatch.setenv("SPNAS_MLFLOW_PORT", "15321")
    return tmp_path


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.7", "nas.example.org"])
def test_non_loopback_without_credentials_is_refused(clean_env: Path, host: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPNAS_HOST", host)
    with pytest.raises(InputError) as err:
        StackConfig()
    msg = str(err.value)
    assert err.value.field == "SPNAS_HOST"
    assert host in msg and "SPNAS_AUTH=user:password" in msg and "SPNAS_AUTH_FILE" in msg
    assert "127.0.0.1" in msg and "localhost" in msg  # says what is allowed without auth
    # The same through the CLI: one line on stderr, exit 2, nothing started.
    err_out = io.StringIO()
    with contextlib.redirect_stderr(err_out):
        assert cli.main(["env"]) == 2
    assert err_out.getvalue().startswith("error: SPNAS_HOST: ") and err_out.getvalue().count("\n") == 1


@pytest.mark.parametrize("host,connect", [("127.0.0.1", "127.0.0.1"), ("127.0.0.2", "127.0.0.2"),
                                          ("localhost", "localhost"), ("::1", "[::1]"),
                                          ("[::1]", "[::1]"), ("", "127.0.0.1")])
def test_loopback_needs_no_credentials(clean_env: Path, host: str, connect: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPNAS_HOST", host)
    cfg = StackConfig()
    assert cfg.credentials is None
    assert cfg.prefect_api_url == f"http://{connect}:14321/api"
    assert cfg.mlflow_url == f"http://{connect}:15321"
    env = stack.stack_env(cfg)
    assert not set(auth.CLIENT_VARS) & set(env)
    assert "--app-name" not in mlflow_server.argv(cfg)
    server_env: dict[str, str] = {}
    server_auth.apply_server_env(cfg, stack.PREFECT, server_env)
    server_auth.apply_server_env(cfg, stack.MLFLOW, server_env)
    assert server_env == {}


@pytest.mark.parametrize("raw,why", [
    ("alice", "no ':'"),
    (":longenoughpassword", "user name is empty"),
    ("alice:", "password is empty"),
    ("alice:short-pw", "at least 12 characters"),
    ("alice:password1234", "published default"),
    ("alice:tab\there-password", "control characters"),
])
def test_bad_spnas_auth_is_one_clear_error(clean_env: Path, raw: str, why: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPNAS_HOST", "0.0.0.0")
    monkeypatch.setenv("SPNAS_AUTH", raw)
    with pytest.raises(InputError) as err:
        StackConfig()
    assert err.value.field == "SPNAS_AUTH" and why in str(err.value)
    password = raw.partition(":")[2]
    if password:
        assert password not in str(err.value)


def test_bad_host_values(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for raw in ("http://0.0.0.0", "0.0.0.0:4200", "my host", "host/path"):
        monkeypatch.setenv("SPNAS_HOST", raw)
        with pytest.raises(InputError, match="SPNAS_HOST"):
            StackConfig()
    monkeypatch.setenv("SPNAS_HOST", "127.0.0.1")
    monkeypatch.setenv("SPNAS_PUBLIC_HOST", "0.0.0.0")
    with pytest.raises(InputError, match="SPNAS_PUBLIC_HOST"):
        StackConfig()


def test_auth_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = clean_env / "creds"
    path.write_text(f"{AUTH}\n")
    path.chmod(0o644)
    monkeypatch.setenv("SPNAS_HOST", "0.0.0.0")
    monkeypatch.setenv("SPNAS_AUTH_FILE", str(path))
    with pytest.raises(InputError, match="SPNAS_AUTH_FILE.*chmod 600"):
        StackConfig()
    path.chmod(0o600)
    cfg = StackConfig()
    assert cfg.credentials is not None
    assert (cfg.credentials.username, cfg.credentials.password) == ("alice", PASSWORD)
    assert cfg.credentials.source == "SPNAS_AUTH_FILE"
    monkeypatch.setenv("SPNAS_AUTH", AUTH)
    with pytest.raises(InputError, match="not both"):
        StackConfig()
    monkeypatch.delenv("SPNAS_AUTH")
    monkeypatch.setenv("SPNAS_AUTH_FILE", str(clean_env / "missing"))
    with pytest.raises(InputError, match="SPNAS_AUTH_FILE: cannot read"):
        StackConfig()


def test_env_with_credentials(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPNAS_HOST", "0.0.0.0")
    monkeypatch.setenv("SPNAS_PUBLIC_HOST", "nas.example.org")
    monkeypatch.setenv("SPNAS_AUTH", AUTH)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "someone-elses-admin-pw")
    cfg = StackConfig()
    env = stack.stack_env(cfg)
    # Clients on this machine connect over loopback and carry the credentials.
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:14321/api"
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:15321"
    assert env["PREFECT_API_AUTH_STRING"] == AUTH
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("alice", PASSWORD)
    # The server binds the wildcard; the UI (maybe in another machine's browser) uses the public name.
    assert env["PREFECT_SERVER_API_HOST"] == "0.0.0.0"
    assert env["PREFECT_UI_API_URL"] == "http://nas.example.org:14321/api"
    assert env["PREFECT_UI_URL"] == "http://nas.example.org:14321"
    assert "nas.example.org" in env["NO_PROXY"].split(",")
    assert cfg.service_url(stack.MLFLOW) == "http://nas.example.org:15321"
    # Server-only settings stay out of the client environment.
    assert "PREFECT_SERVER_API_AUTH_STRING" not in env and "MLFLOW_AUTH_CONFIG_PATH" not in env

    argv = mlflow_server.argv(cfg)
    assert argv[-2:] == ["--app-name", "basic-auth"] and PASSWORD not in " ".join(argv)
    prefect_env: dict[str, str] = {}
    server_auth.apply_server_env(cfg, stack.PREFECT, prefect_env)
    assert prefect_env == {"PREFECT_SERVER_API_AUTH_STRING": AUTH}

    mlflow_env = stack.process_env(cfg)
    server_auth.apply_server_env(cfg, stack.MLFLOW, mlflow_env)
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in mlflow_env  # the ini's admin wins
    ini = Path(mlflow_env["MLFLOW_AUTH_CONFIG_PATH"])
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600
    assert stat.S_IMODE(ini.parent.stat().st_mode) == 0o700
    assert len(mlflow_env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == 64
    assert stat.S_IMODE((ini.parent / "flask-secret").stat().st_mode) == 0o600
    parsed = configparser.ConfigParser()
    parsed.read(ini)  # as MLflow reads it (with interpolation)
    assert parsed["mlflow"]["admin_username"] == "alice"
    assert parsed["mlflow"]["admin_password"] == PASSWORD
    assert parsed["mlflow"]["database_uri"] == f"sqlite:///{cfg.state / 'auth' / 'mlflow-auth.db'}"
    assert parsed["mlflow"]["default_permission"] == "READ"
    allowed = mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert {"nas.example.org", "nas.example.org:*", "127.0.0.1:*", "localhost:*"} <= set(allowed)

    # `eval "$(spnas env)"` gets the client credentials.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["env"]) == 0
    exported = dict(shlex.split(line)[1].split("=", 1) for line in out.getvalue().splitlines())
    assert exported["PREFECT_API_AUTH_STRING"] == AUTH
    assert exported["MLFLOW_TRACKING_PASSWORD"] == PASSWORD


def test_password_never_shown(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPNAS_HOST", "0.0.0.0")
    monkeypatch.setenv("SPNAS_AUTH", AUTH)
    cfg = StackConfig()
    text = stack.StackInfo(cfg, {}).describe()
    assert "auth on: user 'alice' from SPNAS_AUTH" in text and "bound to 0.0.0.0" in text
    assert PASSWORD not in text and PASSWORD not in repr(cfg)
    assert PASSWORD not in repr(cfg.credentials) and PASSWORD not in str(cfg.credentials)


def test_same_credentials() -> None:
    creds = auth.parse_credentials(AUTH)
    env = b"A=1\0PREFECT_API_AUTH_STRING=" + AUTH.encode() + b"\0B=2\0"
    assert auth.same_credentials(env, creds)
    assert not auth.same_credentials(env, auth.parse_credentials("alice:another-password"))
    assert not auth.same_credentials(env, None)
    assert not auth.same_credentials(b"A=1\0", creds)
    assert auth.same_credentials(b"A=1\0", None)
    assert auth.same_credentials(None, creds)  # no procfs: cannot tell


# --------------------------------------------------------------------------- real servers

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _status(method: str, url: str, creds: str | None = None, body: dict | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if creds is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.slow
def test_servers_reject_unauthenticated_requests(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SPNAS_HOST", "SPNAS_PUBLIC_HOST", "SPNAS_AUTH_FILE", "SPNAS_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SPNAS_AUTH", AUTH)
    cfg = StackConfig(state=tmp_path / "state", prefect_port=_free_port(),
                      mlflow_port=_free_port())
    flows = f"{cfg.prefect_api_url}/flow_runs/filter"
    experiments = f"{cfg.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        info = stack.up(cfg)
        assert PASSWORD not in info.describe()
        # No credentials, or wrong ones: both servers refuse.
        assert _status("POST", flows, body={}) == 401
        assert _status("POST", flows, "alice:wrong-password-123", body={}) == 401
        assert _status("GET", experiments) == 401
        assert _status("GET", experiments, "alice:wrong-password-123") == 401
        # With them: both answer.
        assert _status("POST", flows, AUTH, body={}) == 200
        assert _status("GET", experiments, AUTH) == 200
        # Health probes stay open (status checks, load balancers).
        assert _status("GET", f"{cfg.prefect_api_url}/health") == 200
        assert _status("GET", f"{cfg.mlflow_url}/health") == 200
        # The worker checked in through the guarded API: it got the auth string.
        report = stack.status(cfg)
        assert all(report[svc]["healthy"] for svc in stack.SERVICES), report
        ini = cfg.state / "auth" / "mlflow-auth.ini"
        assert stat.S_IMODE(ini.stat().st_mode) == 0o600
        for log in cfg.logs_dir.glob("*.log"):
            assert PASSWORD not in log.read_text(errors="replace"), log
        # A running stack is not silently reused with other credentials.
        monkeypatch.setenv("SPNAS_AUTH", "alice:another-password-1")
        other = StackConfig(state=cfg.state, prefect_port=cfg.prefect_port,
                            mlflow_port=cfg.mlflow_port)
        with pytest.raises(StackError, match="other credentials"):
            stack.up(other)
    finally:
        stack.down(cfg)
    assert not any(r["alive"] for r in stack.status(cfg).values())
    assert not os.listdir(cfg.pids_dir)
