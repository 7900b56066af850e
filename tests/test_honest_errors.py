"""Honest refusals: each is one line that says what is really wrong, never a traceback.

The stack being down (`spnas run` with no Prefect server, `spnas compare` against a tracking
server nobody answers at) is said in seconds, with how to start it. A weights file whose pickle
asks for a forbidden global says so (not "damaged"), and its code never runs. A missing field
says "missing"; a device given as the params file is "not a regular file"."""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from core.errors import InputError
from nas_models.convert import check_weights_file, load_weights_file
from params.loader import validate
from spnas.cli import main

FAST = 15.0  # seconds: the bound on every refusal of a stack or server that does not answer


def _one_line(err: str) -> str:
    err = err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- servers that do not answer


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _closed() -> Iterator[int]:
    """A port nothing listens on."""
    yield _free_port()


@contextlib.contextmanager
def _silent() -> Iterator[int]:
    """A port that accepts connections and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _not_prefect() -> Iterator[int]:
    """An HTTP server that is not Prefect: 404 to everything."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _stack_at(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, port: int) -> str:
    """The environment `spnas run` reads, pointing the stack's Prefect API at `port`."""
    url = f"http://127.0.0.1:{port}/api"
    monkeypatch.setenv("SPNAS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPNAS_PREFECT_PORT", str(port))  # the stack's API address comes from here
    monkeypatch.setenv("PREFECT_API_URL", url)  # inherited PREFECT_* are dropped, but point it there too
    for var in ("SPNAS_AUTH", "SPNAS_AUTH_FILE", "SPNAS_HOST", "SPNAS_PUBLIC_HOST"):
        monkeypatch.delenv(var, raising=False)
    return url


RUN_CASES = [
    # (id, server, extra argv, words in the line)
    ("closed-port-watched", _closed, [], ("no Prefect server answers at", "start the stack with `spnas up`")),
    ("closed-port-no-watch", _closed, ["--no-watch"], ("no Prefect server answers at", "`spnas up`")),
    ("closed-port-raw-watch", _closed, ["--raw-watch"], ("no Prefect server answers at", "`spnas up`")),
    ("silent-port", _silent, ["--no-watch"], ("no Prefect server answers at", "`spnas up`")),
    ("not-prefect", _not_prefect, ["--no-watch"], ("does not answer like a Prefect server", "HTTP 404")),
]


@pytest.mark.parametrize("server, extra, words", [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_run_says_the_stack_is_down(server: Callable, extra: list[str], words: tuple[str, ...], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    with server() as port:
        url = _stack_at(monkeypatch, tmp_path, port)
        start = time.monotonic()
        code = main(["run", "lcnet/full", *extra, "--set", f"output_root={out}"])
        seconds = time.monotonic() - start
    err = _one_line(capsys.readouterr().err)
    assert code != 0
    assert seconds < FAST, seconds
    assert err.startswith("error: stack: "), err
    assert url in err and all(w in err for w in words), err
    assert not out.exists()
    assert [p for p in (tmp_path / "home").rglob("*") if p.is_file()] == []  # nothing started, no state


COMPARE_CASES = [
    # (id, server, uri template, extra argv, reason)
    ("closed-port", _closed, "http://127.0.0.1:{port}", [], "connection refused"),
    ("closed-port-no-log", _closed, "http://127.0.0.1:{port}/", ["--no-log"], "connection refused"),
    ("silent-port", _silent, "http://127.0.0.1:{port}", [], "no answer within"),
    ("password-not-shown", _closed, "http://ann:s3cret@127.0.0.1:{port}", [], "connection refused"),
]


@pytest.mark.parametrize("server, template, extra, reason", [c[1:] for c in COMPARE_CASES],
                         ids=[c[0] for c in COMPARE_CASES])
def test_compare_against_a_server_nobody_answers_at(server: Callable, template: str, extra: list[str], reason: str,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "compare"
    with server() as port:
        uri = template.format(port=port)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        start = time.monotonic()
        code = main(["compare", "polar-ermine", "brave-otter", "--out", str(out), *extra])
        seconds = time.monotonic() - start
    err = _one_line(capsys.readouterr().err)
    assert code != 0
    assert seconds < FAST, seconds
    assert err.startswith("error: MLFLOW_TRACKING_URI: no MLflow tracking server answers at "), err
    assert f"127.0.0.1:{port}" in err and reason in err and "`spnas up`" in err, err
    assert "s3cret" not in err
    assert not out.exists()


# --------------------------------------------------------------------------- weights files


@dataclasses.dataclass
class TrainingConfig:  # module level: a pickled instance names this class as its global
    lr: float = 0.1


class FancyDict(collections.OrderedDict):
    pass


class RunsCode:
    """Unpickling this runs a shell command: it must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def _marker(path: Path) -> Path:
    return path.parent / "PWNED"


def _truncated(path: Path) -> None:
    torch.save({"w": torch.zeros(64)}, path)
    path.write_bytes(path.read_bytes()[:120])


WEIGHTS_CASES = [
    # (id, writer, words in the message, a forbidden global?)
    ("dataclass-in-state-dict", lambda p: torch.save({"w": torch.zeros(2), "cfg": TrainingConfig()}, p),
     "TrainingConfig", True),
    ("ordereddict-subclass", lambda p: torch.save(FancyDict(w=torch.zeros(2)), p), "FancyDict", True),
    ("os-system-pickle-dumps", lambda p: p.write_bytes(pickle.dumps(RunsCode(_marker(p)))), "system", True),
    ("os-system-protocol-2", lambda p: p.write_bytes(pickle.dumps({"w": RunsCode(_marker(p))}, protocol=2)),
     "system", True),
    ("os-system-protocol-0-text-like", lambda p: p.write_bytes(pickle.dumps(RunsCode(_marker(p)), protocol=0)),
     "system", True),
    ("os-system-torch-save", lambda p: torch.save({"w": RunsCode(_marker(p))}, p), "system", True),
    ("os-system-torch-save-protocol-4", lambda p: torch.save({"w": RunsCode(_marker(p))}, p, pickle_protocol=4),
     "system", True),
    ("truncated-archive", _truncated, "damaged or truncated", False),
]


@pytest.mark.parametrize("write, words, forbidden", [c[1:] for c in WEIGHTS_CASES], ids=[c[0] for c in WEIGHTS_CASES])
def test_weights_refusal_says_why(write: Callable[[Path], None], words: str, forbidden: bool, tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    write(path)
    field = "model.pretrained_weights"
    for load in (lambda: load_weights_file(path, field), lambda: check_weights_file(path, field)):
        with pytest.raises(InputError) as err:
            load()
        message = err.value.message
        assert err.value.field == field
        assert "\n" not in message and words in message, message
        assert "weights_only" not in message and "add_safe_globals" not in message, message
        if forbidden:
            assert "asks to load" in message and "which is not allowed" in message, message
            assert "pickled code never runs" in message and "damaged" not in message, message
        else:
            assert "asks to load" not in message, message
    assert not _marker(path).exists()  # the pickled command never ran


def test_cli_names_the_forbidden_global(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(pickle.dumps(RunsCode(_marker(path))))
    assert main(["check-params", "lcnet/full", "--set", f"model.pretrained_weights={path}"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("error: model.pretrained_weights: "), err
    assert "asks to load posix.system" in err or "asks to load nt.system" in err, err
    assert not _marker(path).exists()


# --------------------------------------------------------------------------- params


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    size: int = 1


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top: int
    inner: _Inner = _Inner(path="x")
    optional: _Inner | None = None


MISSING_CASES = [
    ("top-level", {}, "top"),
    ("nested", {"top": 1, "inner": {"size": 2}}, "inner.path"),
    ("inside-a-union", {"top": 1, "optional": {"size": 2}}, "optional.path"),
]


@pytest.mark.parametrize("values, field", [c[1:] for c in MISSING_CASES], ids=[c[0] for c in MISSING_CASES])
def test_missing_field_says_missing(values: dict, field: str) -> None:
    with pytest.raises(InputError) as err:
        validate(_Outer, values)
    assert err.value.field == field
    assert err.value.message == "is missing (required)"
    assert "Field required" not in str(err.value)


DEVICE_CASES = [
    ("check-params-dev-null", ["check-params", "lcnet/full"], "/dev/null"),
    ("check-params-dev-zero", ["check-params", "lcnet/full"], "/dev/zero"),
    ("run-dev-zero", ["run", "lcnet/full", "--no-watch"], "/dev/zero"),
]


@pytest.mark.parametrize("argv, device", [c[1:] for c in DEVICE_CASES], ids=[c[0] for c in DEVICE_CASES])
def test_device_as_params_file_is_not_a_regular_file(argv: list[str], device: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    if not Path(device).exists():
        pytest.skip(f"no {device} here")
    assert main([*argv, "--params-file", device]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith(f"error: params_file: {device} is not a regular file"), err
    assert "does not exist" not in err
