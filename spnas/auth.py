"""Safe serving beyond localhost: the address the servers bind and the credentials guarding them.

Rules (checked when a StackConfig is made, so nothing starts on a bad setting; the variables
are read in spnas/settings.py):
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
  and MLflow runs its `basic-auth` app with an ini (mode 0600) whose admin user is the SPNAS_AUTH
  user (both set up by spnas/server_auth.py); MLflow clients get MLFLOW_TRACKING_USERNAME/PASSWORD.

The password is never put in a repr, a log line or an error message.
"""
from __future__ import annotations

import base64
import ipaddress
import re
import socket
import stat
from dataclasses import dataclass, field
from collections.abc import Mapping
from pathlib import Path

from core.errors import InputError

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


def parse_host(raw: str, var: str) -> str:
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


def parse_public_host(raw: str) -> str:
    """SPNAS_PUBLIC_HOST ("" if unset): the host name printed URLs use for others."""
    host = parse_host(raw, PUBLIC_HOST_VAR)
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


def read_credentials_file(path: str) -> Credentials:
    """SPNAS_AUTH_FILE: one line user:password in a file only its owner can read."""
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


def same_credentials(environ: Mapping[str, str] | bytes | None, creds: Credentials | None) -> bool:
    """Whether a process started by the stack (its environment, or the raw bytes of
    /proc/<pid>/environ) got these credentials.

    Every process of ours carries PREFECT_API_AUTH_STRING when auth is on, none when off."""
    if environ is None:
        return True  # cannot tell: trust it, as the pid checks do
    if isinstance(environ, bytes):
        environ = dict(v.decode(errors="replace").partition("=")[::2]
                       for v in environ.split(b"\0") if v)
    have = environ.get("PREFECT_API_AUTH_STRING")
    return have == (None if creds is None else creds.auth_string)
