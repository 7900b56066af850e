"""YAML that costs more than it says, in a params file or a `--set` value: each is refused as
one short, printable line naming the field (an `InputError`), while the document is composed,
before any work: alias bombs, deep nesting, huge integers, duplicate keys, escape sequences in
quoted values, files that are no regular files or are too big. Every case is bounded by a
timeout, so a regression fails instead of hanging."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from core.errors import InputError
from core.paths import REPO_ROOT
from params.loader import (MAX_ALIAS_NODES, MAX_DEPTH, MAX_INT_DIGITS, MAX_YAML_BYTES, excerpt, load_params,
                           load_yaml_text, parse_override)
from params.models import LcnetParams
from tasks.lcnet.preflight import preflight


def _load_and_check(params_file: str | Path, overrides: dict | None = None) -> None:
    """What `spnas check-params lcnet/full` does: load the params, then check what they point at."""
    preflight(load_params(LcnetParams, params_file, overrides))

DEMO = "params/lcnet.yaml"
pytestmark = pytest.mark.timeout(20)


def _laughs(levels: int = 9, width: int = 9) -> str:
    """The classic "billion laughs": each anchor a list of `width` aliases of the one before."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _laughs_in_list(levels: int = 9) -> str:
    items = ["&l0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"] + [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "train: [" + ", ".join(items) + "]\n"


def _merge_bomb(levels: int = 8) -> str:
    """Merge keys (`<<`) copy the pairs they name: nested merges multiply them."""
    lines = ["m0: &m0 {" + ", ".join(f"k{i}: {i}" for i in range(10)) + "}"]
    lines += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}]}}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _block_nesting(depth: int) -> str:
    return "".join(" " * i + f"k{i}:\n" for i in range(depth)) + " " * depth + "leaf\n"


# (id, params-file text, expected field, fragments the message must hold)
FILE_CASES: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("alias-bomb-9-levels", _laughs(), "params_file", ("aliases", "expand too far", "p.yaml")),
    ("alias-bomb-in-a-list", _laughs_in_list(), "params_file", ("aliases", "expand too far", "p.yaml")),
    ("alias-bomb-wide-shallow", _laughs(levels=3, width=200), "params_file", ("aliases", "expand too far")),
    ("alias-bomb-merge-keys", _merge_bomb(), "params_file", ("aliases", "expand too far")),
    ("alias-loop", "train: &t [1, *t]\n", "train", ("alias *t", "loop")),
    ("nesting-100-flow", "train: " + "[" * 100 + "]" * 100 + "\n", "params_file",
     (f"deeper than {MAX_DEPTH}", "line 1")),
    ("nesting-10000-flow", "train: " + "[" * 10_000 + "]" * 10_000 + "\n", "params_file", ("deeper than",)),
    ("nesting-20000-sequences", "- " * 20_000 + "x\n", "params_file", ("deeper than",)),
    ("nesting-100-block-mappings", _block_nesting(100), "params_file", ("deeper than", f"line {MAX_DEPTH}")),
    ("nesting-unclosed", "{a: " * 5000, "params_file", ("deeper than",)),
    ("int-31-digits", "seed: " + "9" * 31 + "\n", "seed", ("31 digits", f"at most {MAX_INT_DIGITS}", "line 1")),
    ("int-5000-digits-nested", "train:\n  epochs: " + "1" * 5000 + "\n", "train.epochs", ("5,000 digits", "line 2")),
    ("int-negative-huge", "seed: -" + "7" * 5000 + "\n", "seed", ("negative integer", "5,000 digits")),
    ("int-huge-in-a-list", "train:\n  lr_steps: [1, 2, " + "3" * 400 + "]\n", "train.lr_steps", ("400 digits",)),
    ("int-huge-hex", "seed: 0x" + "f" * 200 + "\n", "seed", ("digits",)),
    ("int-huge-underscored", "seed: " + "1_000" * 100 + "\n", "seed", ("digits",)),
    ("int-huge-explicit-tag", 'seed: !!int "' + "5" * 5000 + '"\n', "seed", ("digits",)),
    ("int-huge-as-key", "train:\n  " + "8" * 5000 + ": 1\n", "train", ("digits",)),
    ("duplicate-top-section", "train:\n  epochs: 2\nseed: 1\ntrain:\n  batch_size: 8\n", "train",
     ("'train'", "twice", "lines 1 and 4")),
    ("duplicate-nested-key", "train:\n  epochs: 2\n  batch_size: 8\n  epochs: 3\n", "train.epochs",
     ("'epochs'", "twice", "lines 2 and 4")),
    ("duplicate-quoted-and-plain", 'seed: 1\n"seed": 2\n', "seed", ("twice", "lines 1 and 2")),
    ("duplicate-in-flow-mapping", "train: {epochs: 1, epochs: 2}\n", "train.epochs", ("twice",)),
    ("escape-sequence-in-value", 'device: "\\e[31mcuda\\e[0m"\n', "device", ("\\x1b[31mcuda",)),
    ("escape-sequence-in-key", '"\\e[2Jevil": 1\n', "\\x1b[2Jevil", ("not a known parameter",)),
    ("newline-in-value", 'device: "cu\\nda\\r\\u2028x"\n', "device", ("\\n", "\\r", "\\u2028")),
    ("huge-string-value", 'device: "' + "A" * 50_000 + '"\n', "device", ("AAAA", "...")),
    ("huge-section-quoted", "train: [" + ", ".join(["12345"] * 5000) + "]\n", "train", ("section", "...")),
    ("python-tag-stays-refused", "seed: !!python/object/apply:os.system ['echo pwned']\n", "params_file",
     ("not valid YAML", "constructor")),
]


def _check_one_line(err: InputError, field: str, fragments: tuple[str, ...]) -> None:
    message = str(err)
    assert err.field == field, message
    assert "\n" not in message and "\r" not in message and "\x1b" not in message, repr(message)
    assert message.isprintable(), repr(message)
    assert len(message) < 300, (len(message), message[:400])
    assert message.startswith(f"{field}: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("text, field, fragments", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_params_file_is_refused_in_one_short_line(text: str, field: str, fragments: tuple[str, ...],
                                                  tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        _load_and_check(path)
    _check_one_line(err.value, field, fragments)


# (id, --set argument, expected field, fragments)
SET_CASES: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("huge-int", "seed=" + "1" * 5000, "seed", ("5,000 digits", "--set value")),
    ("negative-huge-int", "seed=-" + "2" * 4400, "seed", ("negative integer", "4,400 digits")),
    ("huge-int-in-a-section", "train={epochs: " + "3" * 50 + "}", "train.epochs", ("50 digits",)),
    ("int-31-digits", "train.epochs=" + "4" * 31, "train.epochs", ("31 digits",)),
    ("alias-bomb", "train=" + "[" + _laughs_in_list().removeprefix("train: [").strip(), "train",
     ("aliases", "expand too far", "--set value")),
    ("deep", "train=" + "[" * 10_000, "train", ("deeper than",)),
    ("duplicate-key", "train={epochs: 1, epochs: 2}", "train.epochs", ("twice",)),
    ("escape-sequence", 'device="\\e]0;pwned\\a\\e[31m"', "device", ("\\x1b]0;pwned\\x07",)),
    ("escape-sequence-unparsable", "seed=[\x1b[31m", "seed", ("\\x1b", "not a valid value")),
    ("huge-unparsable", "seed=[" + "x, " * 5_000, "seed", ("not a valid value", "...")),
    ("huge-string", "device=" + "d" * 50_000, "device", ("...",)),
    ("over-the-size-limit", "train=[" + "1," * MAX_YAML_BYTES + "]", "train", ("longer than", "--set value")),
    ("escape-in-key", "\x1b[2J=1", "\\x1b[2J", ("not a known parameter",)),
]


@pytest.mark.parametrize("arg, field, fragments", [c[1:] for c in SET_CASES], ids=[c[0] for c in SET_CASES])
def test_set_value_is_refused_in_one_short_line(arg: str, field: str, fragments: tuple[str, ...]) -> None:
    with pytest.raises(InputError) as err:
        _load_and_check(DEMO, dict([parse_override(arg)]))
    _check_one_line(err.value, field, fragments)


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "fifo.yaml")
    return tmp / "fifo.yaml"


def _sparse(tmp: Path, size: int) -> Path:
    path = tmp / "big.yaml"
    with path.open("wb") as f:
        f.truncate(size)
    return path


def _linked(tmp: Path, target: str) -> Path:
    (tmp / "link.yaml").symlink_to(target)
    return tmp / "link.yaml"


# (id, path builder, fragments)
PATH_CASES: list[tuple[str, Callable[[Path], Path], tuple[str, ...]]] = [
    ("dev-zero", lambda t: Path("/dev/zero"), ("not a regular file",)),
    ("dev-urandom-via-link", lambda t: _linked(t, "/dev/urandom"), ("not a regular file",)),
    ("fifo", _fifo, ("not a regular file",)),
    ("over-the-size-limit", lambda t: _sparse(t, MAX_YAML_BYTES + 1), (f"{MAX_YAML_BYTES + 1:,} bytes", "limit")),
    ("huge-sparse-file", lambda t: _sparse(t, 1 << 40), ("bytes", "limit")),
    ("folder", lambda t: t, ("is a folder",)),
    ("missing", lambda t: t / "nope.yaml", ("does not exist",)),
    ("escape-in-name", lambda t: t / "\x1b[31mred.yaml", ("does not exist", "\\x1b[31mred.yaml")),
]


@pytest.mark.parametrize("build, fragments", [c[1:] for c in PATH_CASES], ids=[c[0] for c in PATH_CASES])
@pytest.mark.timeout(5)
def test_params_file_that_is_no_small_regular_file(build: Callable[[Path], Path], fragments: tuple[str, ...],
                                                    tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        _load_and_check(build(tmp_path))
    _check_one_line(err.value, "params_file", fragments)


@pytest.mark.parametrize("text, expected", [
    ("a: &a {x: 1, y: 2}\nb: *a\nc: *a\n", {"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 2}, "c": {"x": 1, "y": 2}}),
    ("base: &b {x: 1, y: 2}\nmine:\n  <<: *b\n  y: 3\n", {"base": {"x": 1, "y": 2}, "mine": {"x": 1, "y": 3}}),
    ("n: " + "9" * MAX_INT_DIGITS + "\n", {"n": int("9" * MAX_INT_DIGITS)}),
    ("n: -" + "9" * MAX_INT_DIGITS + "\n", {"n": -int("9" * MAX_INT_DIGITS)}),
    ("f: 1" + "0" * 5000 + ".5\n", {"f": float("inf")}),  # a long float is cheap: it only overflows
    ("s: '" + "1" * 5000 + "'\n", {"s": "1" * 5000}),  # quoted digits are text
    ("x: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n", None),  # the deepest allowed
    ("a: &a [" + ", ".join(["1"] * 99) + "]\nb: [" + ", ".join(["*a"] * (MAX_ALIAS_NODES // 100)) + "]\n", None),
], ids=["shared-section", "merge-then-override", "30-digits", "minus-30-digits", "long-float", "quoted-digits",
        "depth-limit", "aliases-at-the-limit"])
def test_what_costs_what_it_says_still_loads(text: str, expected: dict | None) -> None:
    data = load_yaml_text(text, field="params_file", where="p.yaml")
    if expected is not None:
        assert data == expected


def test_excerpt_is_short_and_printable() -> None:
    assert excerpt("cpu") == "'cpu'"
    for value in ("\x1b[2J" * 1000, list(range(10_000)), {str(i): i for i in range(10_000)}, 10 ** 5000,
                  -(10 ** 5000), b"\x1b" * 100, [[[[["deep"]]]]]):
        shown = excerpt(value)
        assert len(shown) <= 60 and shown.isprintable() and "\x1b" not in shown, shown


# (id, extra argv, expected field, fragment) through the CLI exactly as a user runs it
def _cli_bomb(tmp: Path) -> list[str]:
    (tmp / "bomb.yaml").write_text(_laughs())
    return ["--params-file", str(tmp / "bomb.yaml")]


def _cli_deep(tmp: Path) -> list[str]:
    (tmp / "deep.yaml").write_text("train: " + "[" * 20_000 + "]" * 20_000 + "\n")
    return ["--params-file", str(tmp / "deep.yaml")]


def _cli_duplicate(tmp: Path) -> list[str]:
    (tmp / "dup.yaml").write_text("train:\n  epochs: 2\ntrain:\n  batch_size: 8\n")
    return ["--params-file", str(tmp / "dup.yaml")]


CLI_CASES: list[tuple[str, Callable[[Path], list[str]], str, str]] = [
    ("alias-bomb-file", _cli_bomb, "params_file", "expand too far"),
    ("deep-file", _cli_deep, "params_file", "deeper than"),
    ("huge-int-set", lambda t: ["--set", "seed=" + "1" * 5000], "seed", "5,000 digits"),
    ("duplicate-key-file", _cli_duplicate, "train", "lines 1 and 3"),
    ("dev-zero", lambda t: ["--params-file", "/dev/zero"], "params_file", "not a regular file"),
]


@pytest.mark.parametrize("build, field, fragment", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_prints_one_error_line(build: Callable[[Path], list[str]], field: str, fragment: str,
                                   tmp_path: Path) -> None:
    env = {**os.environ, "SPNAS_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "spnas.cli", "check-params", "lcnet/full", *build(tmp_path)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=15)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    err = done.stderr.strip()
    assert "Traceback" not in err and "\x1b" not in err, err[-2000:]
    assert len(err.splitlines()) == 1, err[-2000:]
    assert err.startswith(f"error: {field}: ") and fragment in err and len(err) < 300, err
    assert done.stdout == ""
