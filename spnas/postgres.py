"""The stack's database: SQLite files in the state folder, or PostgreSQL.

- `sqlite` (default): Prefect's `prefect/prefect.db` (Prefect itself turns on WAL and a 60 s
  busy timeout; its server is started through spnas/prefect_server.py, which makes the one
  transaction that still failed with "database is locked" under two flow runs wait instead) and MLflow's `mlflow.db`, which is switched to WAL before the
  MLflow server opens it, so readers never block the writer when several flow runs log at
  once (MLflow sets a 20 s busy timeout on each session itself).
- `postgres`: `spnas up --db postgres` runs a PostgreSQL server from Debian's packages with
  its data, Unix socket and password under `<state>/postgres`, listening on 127.0.0.1 only
  (port `SPNAS_POSTGRES_PORT`, 5433), and points Prefect and MLflow at its databases
  `prefect` and `mlflow`. `SPNAS_DATABASE_URL=postgresql://user:password@host:port` points
  them at an existing server instead (the two databases are created there when missing).

The choice is remembered in `<state>/database.json`, so `up` again, `down` and `status` agree
without repeating it; switching while the stack runs is refused (run `spnas down` first).
spnas/stack.py calls in here for everything about the database.
"""
from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import procs
from core.errors import InputError, StackError
from spnas import supervise
from spnas.config import CHOICES, MLFLOW, POSTGRES, PREFECT, SERVICES, SQLITE, StackConfig, process_env
# Server and parse_database_url are read with the other settings; used from here too.
from spnas.settings import PORT_VAR, URL_VAR, Server, parse_database_url
from spnas.supervise import ServiceInfo

SERVICE = "postgres"  # pidfile/log name of the local server
DATABASES = ("prefect", "mlflow")
LOCAL_HOST = "127.0.0.1"  # the local server never listens beyond loopback
LOCAL_USER = "spnas"
SERVER_USER = "postgres"  # who runs initdb/postgres when we are root (both refuse root)


# --------------------------------------------------------------------------- the choice


@dataclass(frozen=True)
class Database:
    kind: str  # sqlite | postgres
    local: bool  # postgres: a server under the state folder (else SPNAS_DATABASE_URL's)
    server: Server | None  # postgres; None for sqlite, or external with the URL unset now
    address: str = ""  # user@host:port, known even when `server` is not

    def record(self) -> dict[str, Any]:
        if self.kind == SQLITE:
            return {"db": SQLITE}
        return {"db": POSTGRES, "server": "local" if self.local else "external",
                "address": self.address}


def _record_file(cfg: StackConfig) -> Path:
    return cfg.state / "database.json"


def saved(cfg: StackConfig) -> dict[str, Any] | None:
    try:
        data = json.loads(_record_file(cfg).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("db") in CHOICES else None


def _local_server(cfg: StackConfig) -> Server:
    try:
        password = _password_file(cfg).read_text().strip()
    except OSError:
        password = ""  # not initialised yet: `up` creates it
    return Server(LOCAL_USER, password, LOCAL_HOST, cfg.postgres_port)


def resolve(cfg: StackConfig) -> Database:
    """What the stack uses: --db, else SPNAS_DATABASE_URL (postgres), else what this state
    folder last ran with, else sqlite. `postgres` with SPNAS_DATABASE_URL set is that server."""
    old = saved(cfg) or {}
    kind = cfg.db or (POSTGRES if cfg.database else None) or old.get("db") or SQLITE
    if kind == SQLITE:
        return Database(SQLITE, False, None)
    if cfg.database is not None:
        return Database(POSTGRES, False, cfg.database, cfg.database.address)
    if cfg.db is None and old.get("server") == "external":
        # Remembered, but the URL (with its password) is only ever in the environment.
        return Database(POSTGRES, False, None, str(old.get("address", "")))
    server = _local_server(cfg)
    return Database(POSTGRES, True, server, server.address)


def describe(cfg: StackConfig) -> str:
    db = resolve(cfg)
    if db.kind == SQLITE:
        return f"SQLite, WAL ({cfg.prefect_home / 'prefect.db'}, {cfg.state / 'mlflow.db'})"
    where = f"server under {_pg_dir(cfg)}" if db.local else URL_VAR
    return f"PostgreSQL {db.address} ({where}; databases {', '.join(DATABASES)})"


def mlflow_store_args(cfg: StackConfig) -> list[str]:
    """MLflow server arguments for its store. PostgreSQL's URI goes through the environment
    instead (service_env), which keeps the password off the process list."""
    if resolve(cfg).kind == SQLITE:
        # SQLite: MLflow 3.13+ refuses a plain file store for the server.
        return ["--backend-store-uri", f"sqlite:///{cfg.state / 'mlflow.db'}"]
    return []


def service_env(cfg: StackConfig, service: str) -> dict[str, str]:
    """Extra environment of a server about to start (and SQLite WAL for MLflow's file)."""
    db = resolve(cfg)
    if db.kind == SQLITE:
        if service == MLFLOW:
            enable_wal(cfg.state / "mlflow.db")
        return {}  # Prefect: its default SQLite file under PREFECT_HOME
    if db.server is None:
        raise _url_needed(db)
    if service == PREFECT:
        return {"PREFECT_API_DATABASE_CONNECTION_URL": db.server.url("asyncpg", "prefect")}
    if service == MLFLOW:
        return {"MLFLOW_BACKEND_STORE_URI": db.server.url("psycopg", "mlflow")}
    return {}


def enable_wal(path: Path) -> None:
    """WAL is stored in the file: set once (before the server opens it), it stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, timeout=60)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def _url_needed(db: Database) -> InputError:
    return InputError(URL_VAR, f"this state folder's stack uses the existing PostgreSQL server "
                               f"{db.address}; set {URL_VAR} again (with its password), or pass "
                               f"--db sqlite / --db postgres for a database of its own")


# --------------------------------------------------------------------------- local server


def _pg_dir(cfg: StackConfig) -> Path:
    return cfg.state / "postgres"


def _data_dir(cfg: StackConfig) -> Path:
    return _pg_dir(cfg) / "data"


def _socket_dir(cfg: StackConfig) -> Path:
    return _pg_dir(cfg) / "socket"


def _password_file(cfg: StackConfig) -> Path:
    return _pg_dir(cfg) / "password"


def bin_dir() -> Path:
    """Debian's /usr/lib/postgresql/<version>/bin (newest), else the folder of `postgres` on PATH."""
    def version(p: str) -> tuple[int, ...]:
        raw = Path(p).parent.parent.name
        return tuple(int(x) for x in raw.split(".") if x.isdigit())

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path and (Path(on_path).parent / "postgres").exists():
        return Path(on_path).parent
    raise StackError(
        "PostgreSQL's server programs (initdb, postgres) are not installed: looked in "
        "/usr/lib/postgresql/*/bin and on PATH. Install Debian's `postgresql` package "
        f"(scripts/system_deps.sh does), or point {URL_VAR} at an existing server.")


def _run_as() -> pwd.struct_passwd | None:
    """The account initdb/postgres run as: `postgres` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise StackError(
            f"Running as root, but PostgreSQL refuses to run as root and there is no "
            f"{SERVER_USER!r} system user to run it as; install Debian's `postgresql` package "
            "(it creates that user) or run spnas as a normal user.") from None


def _user_kwargs(account: pwd.struct_passwd | None) -> dict[str, Any]:
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _own_dir(path: Path, account: pwd.struct_passwd | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)
    path.chmod(0o700)  # PostgreSQL insists on 0700 for its data folder


def _check_reachable(cfg: StackConfig, account: pwd.struct_passwd | None) -> None:
    """As root the server runs as `postgres`, which must be able to walk into the state folder."""
    if account is None:
        return
    probe = subprocess.run(["test", "-w", str(_data_dir(cfg))], **_user_kwargs(account))
    if probe.returncode != 0:
        raise StackError(
            f"PostgreSQL runs as the {SERVER_USER!r} user (it refuses root), which cannot reach "
            f"{_data_dir(cfg)}: a parent folder is closed to other users. Make the parents "
            "searchable (chmod o+x) or use a state folder elsewhere (SPNAS_HOME).")


def _initdb(cfg: StackConfig, account: pwd.struct_passwd | None) -> None:
    data = _data_dir(cfg)
    if (data / "PG_VERSION").exists():
        return
    password_file = _password_file(cfg)
    if not password_file.exists():
        password_file.write_text(secrets.token_urlsafe(24) + "\n")
        password_file.chmod(0o600)
    # initdb reads the password from a file it can open; this copy lives only while it runs.
    pwfile = _pg_dir(cfg) / "initdb.pw"
    pwfile.write_text(password_file.read_text())
    pwfile.chmod(0o600)
    if account is not None:
        os.chown(pwfile, account.pw_uid, account.pw_gid)
    try:
        done = subprocess.run(
            [str(bin_dir() / "initdb"), "-D", str(data), "-U", LOCAL_USER, "--pwfile", str(pwfile),
             # Password logins only, also over the socket (its folder is the server user's).
             "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
             "-E", "UTF8", "--no-locale", "--no-instructions"],
            cwd=_pg_dir(cfg), capture_output=True, text=True, timeout=300, **_user_kwargs(account))
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        raise StackError(f"initdb failed for {data} (exit {done.returncode}):\n"
                               f"{(done.stderr or done.stdout).strip()[-2000:]}")


def _argv(cfg: StackConfig) -> list[str]:
    return [str(bin_dir() / "postgres"), "-D", str(_data_dir(cfg)),
            "-c", f"listen_addresses={LOCAL_HOST}", "-c", f"port={cfg.postgres_port}",
            "-c", f"unix_socket_directories={_socket_dir(cfg)}"]


def local_pid(cfg: StackConfig) -> int | None:
    """The postmaster's pid if our pidfile names a live server of this state folder.

    Only the postmaster keeps its environment readable (its children overwrite theirs with
    their process titles), so ownership is checked on it; the children die with it."""
    pid = supervise.read_pid(cfg, SERVICE)
    if pid is None:
        return None
    if supervise.live_pid(pid, cfg):
        return pid
    cfg.pid_file(SERVICE).unlink(missing_ok=True)
    return None


def local_healthy(cfg: StackConfig) -> bool:
    try:
        done = subprocess.run([str(bin_dir() / "pg_isready"), "-q", "-h", LOCAL_HOST,
                               "-p", str(cfg.postgres_port), "-t", "2"], timeout=10)
    except (StackError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _start_local(cfg: StackConfig) -> ServiceInfo:
    pid = local_pid(cfg)
    if pid is not None and supervise.await_healthy(cfg, lambda: local_healthy(cfg), pid):
        return ServiceInfo(SERVICE, pid, f"postgresql://{_local_server(cfg).address}",
                           cfg.log_file(SERVICE), True, 0.0)
    if pid is not None:  # ours but never answering: replace it
        stop_local(cfg)
    if supervise.port_in_use(LOCAL_HOST, cfg.postgres_port):
        raise StackError(
            f"Port {cfg.postgres_port} on {LOCAL_HOST} is already in use by a process this stack "
            f"did not start; stop it or set {PORT_VAR} to a free port.")
    t0 = time.monotonic()  # initdb included: the first start's real cost
    account = _run_as()
    _pg_dir(cfg).mkdir(parents=True, exist_ok=True)
    _own_dir(_data_dir(cfg), account)
    _own_dir(_socket_dir(cfg), account)
    _check_reachable(cfg, account)
    _initdb(cfg, account)
    # Our environment (SPNAS_HOME) marks it as ours; own session like every service.
    proc = supervise.spawn(cfg, SERVICE, _argv(cfg), process_env(cfg), _pg_dir(cfg),
                           **_user_kwargs(account))
    supervise.wait_started(cfg, SERVICE, proc, lambda: local_healthy(cfg))
    return ServiceInfo(SERVICE, proc.pid, f"postgresql://{_local_server(cfg).address}",
                       cfg.log_file(SERVICE), False, time.monotonic() - t0)


def stop_local(cfg: StackConfig) -> int | None:
    """Fast shutdown of our server (SIGINT: clients are disconnected, data is checkpointed),
    then SIGQUIT, then SIGKILL of its process group. Returns the pid stopped, or None."""
    pid = local_pid(cfg)
    if pid is None:
        return None

    postmaster = procs.find(pid)
    if postmaster is not None:
        for sig, seconds in ((signal.SIGINT, cfg.stop_timeout), (signal.SIGQUIT, 5.0)):
            procs.send([postmaster], sig)
            if not procs.wait_gone([postmaster], seconds):
                break
        else:
            # The group id is still held by its members, so everything in it was started by us.
            procs.send(procs.group(pid), signal.SIGKILL)
            procs.wait_gone([postmaster], 5.0)
    supervise.reap(pid, wait=1.0)
    cfg.pid_file(SERVICE).unlink(missing_ok=True)
    return pid


def group_members(pid: int) -> list[int]:
    """Live processes in the process group a postmaster led (its children)."""
    return [p.pid for p in procs.group(pid)]


# --------------------------------------------------------------------------- databases


def ensure_databases(server: Server, label: str) -> None:
    """Create `prefect` and `mlflow` on the server when missing."""
    import psycopg
    from psycopg import sql

    try:
        with psycopg.connect(host=server.host, port=server.port, user=server.user,
                             password=server.password or None, dbname="postgres",
                             connect_timeout=10, autocommit=True) as con:
            have = {row[0] for row in con.execute("SELECT datname FROM pg_database")}
            for name in DATABASES:
                if name in have:
                    continue
                try:
                    con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                except psycopg.errors.InsufficientPrivilege:
                    raise StackError(
                        f"Database {name!r} does not exist on {label} and {server.user!r} may not "
                        f"create it; create databases {' and '.join(DATABASES)} owned by "
                        f"{server.user!r} there.") from None
    except psycopg.OperationalError as exc:
        raise StackError(f"Cannot connect to PostgreSQL at {label}: "
                               f"{str(exc).strip().splitlines()[-1]}") from None


# --------------------------------------------------------------------------- up / down


def _stack_running(cfg: StackConfig) -> bool:
    for svc in (*SERVICES, SERVICE):
        if supervise.live_pid(supervise.read_pid(cfg, svc), cfg):
            return True
    return False


def check_switch(cfg: StackConfig) -> None:
    """Refuse to move a running stack to another database: its servers hold the old one.
    A state folder without a record ran on SQLite (stacks from before the choice existed)."""
    old = saved(cfg) or {"db": SQLITE}
    new = resolve(cfg).record()
    if old != new and _stack_running(cfg):
        raise StackError(
            f"The stack of {cfg.state} is running on {_label(old)}; run `spnas down` first to "
            f"switch it to {_label(new)}.")


def up(cfg: StackConfig) -> ServiceInfo | None:
    """Make the chosen database ready before the servers start; remember the choice.

    Returns the local PostgreSQL server's info, None when there is no local server."""
    check_switch(cfg)
    db = resolve(cfg)
    old = saved(cfg)
    info = None
    if db.kind == POSTGRES:
        if db.server is None:
            raise _url_needed(db)
        if db.local:
            info = _start_local(cfg)
            db = resolve(cfg)  # the password exists now
            assert db.server is not None
            ensure_databases(db.server, f"{db.address} (local server, log {cfg.log_file(SERVICE)})")
        else:
            ensure_databases(db.server, f"{db.address} ({URL_VAR})")
    if old != db.record():
        _record_file(cfg).write_text(json.dumps(db.record(), indent=2) + "\n")
    return info


def _label(record: dict[str, Any]) -> str:
    if record.get("db") == SQLITE:
        return "SQLite"
    where = "a local server" if record.get("server") == "local" else URL_VAR
    return f"PostgreSQL {record.get('address', '')} ({where})"


def status(cfg: StackConfig) -> dict[str, Any] | None:
    """The local server's status entry (like the other services'), None when there is none."""
    pid = supervise.read_pid(cfg, SERVICE)
    if pid is None and not resolve(cfg).local:
        return None
    alive = supervise.live_pid(pid, cfg)
    return {"pid": pid, "alive": alive, "healthy": alive and local_healthy(cfg),
            "url": f"postgresql://{_local_server(cfg).address}", "log": str(cfg.log_file(SERVICE))}


def uses_local(cfg: StackConfig) -> bool:
    return resolve(cfg).local
