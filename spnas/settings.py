"""The stack's environment variables, read and checked in one place.

Every SPNAS_* setting of the stack is a field of `Settings` (a pydantic-settings model over
os.environ); a bad value is one InputError naming the variable. An empty (or blank) variable
means its default, as if it were unset. SPNAS_HOME is the exception: it is read by
core.paths.state_dir, which code outside the stack uses too.
"""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import InputError
from spnas import auth as authn

URL_VAR = "SPNAS_DATABASE_URL"
PORT_VAR = "SPNAS_POSTGRES_PORT"


@dataclass(frozen=True)
class Server:
    """Where a PostgreSQL server is and who we log in as."""

    user: str
    password: str
    host: str
    port: int

    def url(self, driver: str, database: str) -> str:
        quote = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731
        login = quote(self.user) + (f":{quote(self.password)}" if self.password else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql+{driver}://{login}@{host}:{self.port}/{database}"

    @property
    def address(self) -> str:
        """user@host:port: what is shown and remembered (never the password)."""
        return f"{self.user}@{self.host}:{self.port}"


def parse_database_url(raw: str) -> Server:
    """SPNAS_DATABASE_URL (postgresql://user:password@host:port) -> Server, or one InputError."""
    def bad(why: str) -> InputError:
        return InputError(URL_VAR, f"{why}; expected postgresql://USER:PASSWORD@HOST:PORT "
                                   f"(the server only: spnas uses its databases prefect and mlflow)")

    try:
        parts = urllib.parse.urlsplit(raw.strip())
        port = parts.port or 5432
    except ValueError as exc:  # e.g. a port that is not a number
        raise bad(f"cannot be parsed ({exc})") from None
    if parts.scheme not in {"postgresql", "postgres"}:
        raise bad(f"must start with postgresql://, got {parts.scheme + '://' if parts.scheme else raw!r}")
    if not parts.hostname:
        raise bad("has no host")
    if not parts.username:
        raise bad("has no user name")
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise bad(f"must not name a database or options (got {parts.path + ('?' + parts.query if parts.query else '')!r})")
    return Server(urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""),
                  parts.hostname, port)


class Settings(BaseSettings):
    """SPNAS_<FIELD> for each field; `credentials` and `database` are derived."""

    model_config = SettingsConfigDict(env_prefix="SPNAS_", case_sensitive=False)

    # Bind address; anything but loopback needs credentials (spnas/auth.py).
    host: str = authn.DEFAULT_HOST
    # What URLs shown to others say ("" = derived from the bind address).
    public_host: str = ""
    auth: str = Field("", repr=False)  # user:password
    auth_file: str = ""  # a file holding user:password, mode 600
    prefect_port: int = 4200
    mlflow_port: int = 5000
    postgres_port: int = 5433
    # One flow run at a time: on 2 cores two trainings only fight over the same CPUs.
    worker_limit: int = 1
    # MLflow's job runner (GenAI scorers); off unless 1/true/yes/on.
    mlflow_jobs: bool = False
    database_url: str = Field("", repr=False)  # postgresql://user:password@host:port of an existing server

    _credentials: authn.Credentials | None = PrivateAttr(default=None)
    _database: Server | None = PrivateAttr(default=None)

    @staticmethod
    def var(field: str) -> str:
        return f"SPNAS_{field.upper()}"

    @field_validator("prefect_port", "mlflow_port", "postgres_port", mode="before")
    @classmethod
    def _port(cls, value: Any, info: ValidationInfo) -> int:
        var, allowed = cls.var(info.field_name), "must be a TCP port number 1-65535"
        try:
            port = int(value)
        except (TypeError, ValueError):
            raise InputError(var, f"{allowed}, got {value!r}") from None
        if not 1 <= port <= 65535:
            raise InputError(var, f"{allowed}, got {port}")
        return port

    @field_validator("worker_limit", mode="before")
    @classmethod
    def _count(cls, value: Any, info: ValidationInfo) -> int:
        if isinstance(value, int) and value >= 1:
            return value
        if not isinstance(value, str) or not value.isdigit() or int(value) < 1:
            raise InputError(cls.var(info.field_name), f"must be a whole number >= 1, got {value!r}")
        return int(value)

    @field_validator("mlflow_jobs", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> bool:
        # Anything but a yes leaves the job runner off, as before this was a setting.
        return value if isinstance(value, bool) else str(value).lower() in {"1", "true", "yes", "on"}

    # Defined after the other "before" validators so it runs first (pydantic runs them last-first).
    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and not value.strip():
            return cls.model_fields[info.field_name].default
        return value.strip() if isinstance(value, str) and info.field_name != "auth" else value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return authn.parse_host(value, authn.HOST_VAR)

    @field_validator("public_host")
    @classmethod
    def _public_host(cls, value: str) -> str:
        return authn.parse_public_host(value) if value else ""

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if value:
            parse_database_url(value)
        return value

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        if self.auth.strip() and self.auth_file:
            raise InputError(authn.AUTH_VAR, f"set {authn.AUTH_VAR} or {authn.AUTH_FILE_VAR}, not both")
        if self.auth.strip():
            self._credentials = authn.parse_credentials(self.auth, authn.AUTH_VAR)
        elif self.auth_file:
            self._credentials = authn.read_credentials_file(self.auth_file)
        self._database = parse_database_url(self.database_url) if self.database_url else None
        return self

    @property
    def credentials(self) -> authn.Credentials | None:
        return self._credentials

    @property
    def database(self) -> Server | None:
        return self._database


def load() -> Settings:
    """The settings from os.environ now; the first bad variable is one InputError."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        cause = first.get("ctx", {}).get("error")
        if isinstance(cause, InputError):
            raise cause from None
        field = str(first["loc"][0]) if first["loc"] else ""
        raise InputError(Settings.var(field) if field else "environment", first["msg"]) from None
