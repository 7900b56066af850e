"""Safe serving beyond localhost: the address the servers bind and the credentials guarding them.

Rules (checked when a StackConfig is made, so nothing starts on a bad setting):
- SPNAS_HOST is the bind address, 127.0.0.1 by default. A loopback address (127.0.0.0/8, ::1,
  localhost) needs nothing else; any other address (0.0.0.0, a LAN IP, a host name) is refused
  unless credentials are set.
- Credentials come from SPNAS_AUTH="user:password" or SPNAS_AUTH_FILE=<file holding
  user:password>. The file is the safer choice: the password stays out of shell history and
  out of the environment of every program the user's shell starts; a file readable by group or
  others is refused. (The stack's own processes still carry it in their environment: Prefect
  reads its auth string from there. /proc/<pid>/environ is readable by the same user only.)
- With credentials, the Prefect server gets PREFECT_SERVER_API_AUTH_STRING and every client
  PREFECT_API_AUTH_STRING (the same "user:password"; Prefect sends it as an HTTP Basic header),
  and MLflow runs its `basic-auth` app with an ini written here (mode 0600) whose admin user is
  the SPNAS_AUTH user; MLflow clients get MLFLOW_TRACKING_USERNAME/PASSWORD.

The password is never put in a repr, a log line or an error message.
"""
from __future__ import annotations

import base64
import configparser
import ipaddress
import json
import os
import re
import secrets
import socket
import stat
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import InputError

if TYPE_CHECKING:
    from spnas.stack import StackConfig

DEFAULT_HOST = "127.0.0.1"
HOST_VAR = "SPNAS_HOST"
PUBLIC_HOST_VAR = "SPNAS_PUBLIC_HOST"
AUTH_VAR = "SPNAS_AUTH"
AUTH_FILE_VAR = "SPNAS_AUTH_FILE"
# MLflow's basic-auth app refuses shorter admin passwords (mlflow.utils.validation) and the
# one older MLflow versions shipped as default; checked here so the error names SPNAS_AUTH.
MIN_PASSWORD = 12
_MLFLOW_LEGACY_PASSWORD = "password1234"

# Client-side variables carrying the credentials (what `eval "$(spnas env)"` exports).
CLIENT_VARS = ("PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_LOOPBACK_HELP = "127.0.0.1 (the default), another 127.x.y.z, ::1 or localhost"


# --------------------------------------------------------------------------- hosts


def _parse_host(raw: str, var: str) -> str:
    host = raw.strip()
    if host.startswith("[") and host.endswith("]"):  # accept the URL form of an IPv6 address
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise InputError(var, f"must be an IP address or host name to bind/announce (no scheme, "
                              f"port or path), e.g. 127.0.0.1 or 0.0.0.0; got {raw!r}")
    return host.lower()


def bind_host_from_env() -> str:
    raw = os.environ.get(HOST_VAR, "").strip()
    return _parse_host(raw, HOST_VAR) if raw else DEFAULT_HOST


def public_host_from_env() -> str:
    """SPNAS_PUBLIC_HOST as given ("" if unset): the host name printed URLs use for others."""
    raw = os.environ.get(PUBLIC_HOST_VAR, "").strip()
    if not raw:
        return ""
    host = _parse_host(raw, PUBLIC_HOST_VAR)
    if is_wildcard(host):
        raise InputError(PUBLIC_HOST_VAR, f"must be a name or address others can reach, not the "
                                          f"wildcard {host}")
    return host


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other host name may resolve anywhere: treat it as exposed


def is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def connect_host(bind: str) -> str:
    """Where clients on this machine reach a server bound to `bind` (a wildcard is not an
    address to connect to)."""
    if is_wildcard(bind):
        return "::1" if ":" in bind else "127.0.0.1"
    return bind


def public_host(bind: str, announced: str = "") -> str:
    """The host others should use: SPNAS_PUBLIC_HOST, else the bind address, else (wildcard
    bind) this machine's host name."""
    if announced:
        return announced
    if is_wildcard(bind):
        return socket.gethostname() or connect_host(bind)
    return bind


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str = AUTH_VAR  # the variable they came from, for messages

    @property
    def auth_string(self) -> str:
        return f"{self.username}:{self.password}"

    @property
    def basic_header(self) -> str:
        return "Basic " + base64.b64encode(self.auth_string.encode()).decode()


def parse_credentials(raw: str, var: str = AUTH_VAR) -> Credentials:
    """`user:password` (split at the first colon; the password may contain colons)."""
    value = raw.strip()
    user, colon, password = value.partition(":")
    what = "must be user:password"
    if not colon:
        raise InputError(var, f"{what}; the value has no ':'")
    if not user:
        raise InputError(var, f"{what}; the user name is empty")
    if not password:
        raise InputError(var, f"{what}; the password is empty")
    if any(not c.isprintable() for c in value):
        raise InputError(var, f"{what} on one line, without control characters")
    if len(password) < MIN_PASSWORD:
        raise InputError(var, f"the password must be at least {MIN_PASSWORD} characters "
                              f"(MLflow's basic-auth rule); it has {len(password)}")
    if password == _MLFLOW_LEGACY_PASSWORD:
        raise InputError(var, "that password is MLflow's old published default; choose another")
    return Credentials(user, password, var)


def credentials_from_env() -> Credentials | None:
    inline = os.environ.get(AUTH_VAR, "")
    path = os.environ.get(AUTH_FILE_VAR, "").strip()
    if inline.strip() and path:
        raise InputError(AUTH_VAR, f"set {AUTH_VAR} or {AUTH_FILE_VAR}, not both")
    if inline.strip():
        return parse_credentials(inline, AUTH_VAR)
    if not path:
        return None
    file = Path(path).expanduser()
    try:
        mode = file.stat().st_mode
        text = file.read_text()
    except OSError as e:
        raise InputError(AUTH_FILE_VAR, f"cannot read {file}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(AUTH_FILE_VAR, f"{file} is accessible to other users (mode "
                                        f"{stat.S_IMODE(mode):04o}); run chmod 600 {file}")
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise InputError(AUTH_FILE_VAR, f"{file} must hold one line user:password")
    return parse_credentials(lines[0], AUTH_FILE_VAR)


def check_exposure(host: str, creds: Credentials | None) -> None:
    """Refuse to serve beyond this machine without credentials."""
    if creds is None and not is_loopback(host):
        raise InputError(
            HOST_VAR,
            f"{host} is not a loopback address, so the servers would be reachable from other "
            f"machines; set {AUTH_VAR}=user:password (password at least {MIN_PASSWORD} "
            f"characters) or {AUTH_FILE_VAR}=<file with user:password, mode 600> to switch on "
            f"authentication, or bind {_LOOPBACK_HELP}")


def describe(creds: Credentials | None) -> str:
    if creds is None:
        return "off (servers reachable from this machine only)"
    return (f"on: user {creds.username!r} from {creds.source} (Prefect UI login: user:password; "
            "MLflow: browser prompt)")


def client_env(creds: Credentials | None) -> dict[str, str]:
    if creds is None:
        return {}
    return {"PREFECT_API_AUTH_STRING": creds.auth_string,
            "MLFLOW_TRACKING_USERNAME": creds.username,
            "MLFLOW_TRACKING_PASSWORD": creds.password}


def same_credentials(environ: bytes | None, creds: Credentials | None) -> bool:
    """Whether a process started by the stack (its raw /proc environ) got these credentials.

    Every process of ours carries PREFECT_API_AUTH_STRING when auth is on, none when off."""
    if environ is None:
        return True  # cannot tell: trust it, as the pid checks do
    want = None if creds is None else f"PREFECT_API_AUTH_STRING={creds.auth_string}".encode()
    have = [v for v in environ.split(b"\0") if v.startswith(b"PREFECT_API_AUTH_STRING=")]
    return have == ([] if want is None else [want])


# --------------------------------------------------------------------------- servers


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
    if service == "prefect":
        env["PREFECT_SERVER_API_AUTH_STRING"] = creds.auth_string
    elif service == "mlflow":
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


_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _call(method: str, url: str, creds: Credentials, body: dict[str, str] | None = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", "Authorization": creds.basic_header})
    try:
        with _HTTP.open(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return 0


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
