"""Load a deployment's YAML defaults, apply overrides, validate with pydantic.

Every failure becomes one `InputError` naming the field and what is allowed, raised before a
flow does any work.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from spnas.errors import InputError
from spnas.paths import REPO_ROOT

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
    if not p.is_file():
        raise InputError("params_file", f"{path} does not exist (give a YAML file such as params/lcnet.yaml)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError("params_file", f"{p} is not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise InputError("params_file", f"{p} must hold a mapping of parameter names to values")
    return data


def describe_validation_error(exc: ValidationError) -> tuple[str, str]:
    """(field, message) of the first error, phrased for a user."""
    err = exc.errors()[0]
    field = ".".join(str(part) for part in err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if not field:
        # Model-level checks phrase their message as "<field>: <what is allowed>".
        field, _, message = message.partition(": ") if ": " in message else ("params", "", message)
        return field, message
    if err["type"] == "extra_forbidden":
        return field, "is not a known parameter"
    return field, f"{message} (got {err['input']!r})"


def validate(model_cls: type[P], values: dict[str, Any]) -> P:
    try:
        return model_cls.model_validate(values)
    except ValidationError as exc:
        field, message = describe_validation_error(exc)
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
    return key.strip(), yaml.safe_load(raw)
