"""Load a deployment's YAML defaults, apply overrides, validate with pydantic.

Every failure becomes one `InputError` naming the field and what is allowed, raised before a
flow does any work.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from core.errors import InputError
from core.paths import REPO_ROOT

P = TypeVar("P", bound=BaseModel)
PARAMS_DIR = Path(__file__).resolve().parent


def resolve_params_file(path: str | Path) -> Path:
    """Relative paths are taken from the cwd, then from the repo root (the worker's cwd)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return REPO_ROOT / p


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = resolve_params_file(path)
    if p.is_dir():
        raise InputError("params_file", f"{path} is a folder; give a YAML file such as params/lcnet.yaml")
    if not p.is_file():
        raise InputError("params_file", f"{path} does not exist (give a YAML file such as params/lcnet.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise InputError("params_file", f"{p} is not a text file; give a YAML file of parameter names and values") from None
    except yaml.YAMLError as exc:
        raise InputError("params_file", f"{p} is not valid YAML ({_yaml_problem(exc)})") from None
    if not isinstance(data, dict):
        raise InputError("params_file", f"{p} must hold a mapping of parameter names to values")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or exc.__class__.__name__
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else str(problem)


def _field_path(model_cls: type[BaseModel] | None, loc: tuple[Any, ...]) -> tuple[str, ...]:
    """The part of an error location that names fields: pydantic appends union-member tags
    (`int`, `literal['start']`) after the field, which are no parameter names."""
    path: list[str] = []
    current: Any = model_cls
    for part in loc:
        fields = getattr(current, "model_fields", None) if isinstance(current, type) else None
        if fields is None:
            if model_cls is None:
                path.append(str(part))
                continue
            break
        if part not in fields:
            path.append(str(part))  # an unknown key: name it as given
            break
        path.append(str(part))
        current = fields[part].annotation
    return tuple(path)


def describe_validation_error(exc: ValidationError, model_cls: type[BaseModel] | None = None) -> tuple[str, str]:
    """(field, message) of the first error, phrased for a user: the field is the dotted path
    (`serial.max_sample`), also when a validator names a sub-field in its message."""
    errors = exc.errors()
    err = errors[0]
    path = _field_path(model_cls, tuple(err["loc"]))
    loc = ".".join(path)
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return loc, "is not a known parameter"
    if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return loc, f"must be a section of key: value pairs (got {err['input']!r})"
    if len(path) < len(err["loc"]) and model_cls is not None:  # a union: say every allowed form once
        alternatives = [e["msg"] for e in errors if _field_path(model_cls, tuple(e["loc"])) == path]
        message = " or ".join(dict.fromkeys(a.removeprefix("Input should be ") for a in alternatives))
        return loc, f"should be {message} (got {err['input']!r})"
    return locate(loc, message, err["input"])


def locate(loc: str, message: str, value: Any) -> tuple[str, str]:
    """(field, message) of a check that failed at `loc` (dotted; "" = the whole model) with
    `message`, worded alike whether pydantic or a pipeline's preflight ran the check."""
    named = re.match(r"^([A-Za-z_][\w.]*): (.*)$", message, re.S)
    if named:  # raised as "<field>: <what is allowed>" (InputError or a model-level check)
        name, message = named.groups()
        if not loc or name == loc or name.startswith(loc + "."):
            return name, message
        if name == loc.rsplit(".", 1)[-1]:
            return loc, message
        return f"{loc}.{name}", message
    if not loc:
        return "params", message
    return loc, f"{message} (got {value!r})"


def validate(model_cls: type[P], values: dict[str, Any]) -> P:
    try:
        return model_cls.model_validate(values)
    except ValidationError as exc:
        field, message = describe_validation_error(exc, model_cls)
        raise InputError(field, message) from None


def merge_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides on top of the YAML: nested mappings merge key by key, and a dotted key
    (`serial.max_sample`, as `--set` gives it) addresses one nested field."""
    merged = dict(values)
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest:
            value, key = {rest: value}, head
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_params(model_cls: type[P], params_file: str | Path, overrides: dict[str, Any] | None = None) -> P:
    return validate(model_cls, merge_overrides(read_yaml(params_file), overrides or {}))


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise InputError("--set", f"expected key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise InputError("--set", f"expected key=value, got {text!r}")
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise InputError(key, f"{raw!r} is not a valid value ({_yaml_problem(exc)}); quote text, "
                              "write lists as [1, 2]") from None
