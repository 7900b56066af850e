"""Load a deployment's YAML defaults, apply overrides, validate with pydantic.

Every failure becomes one `InputError` naming the field and what is allowed, raised before a
flow does any work. Every YAML read of user params (a params file, a `--set` value) goes
through `load_yaml_text`: safe loading (no `!!python/...` tags) that also refuses what costs
more than it says (aliases that expand too far, nesting deeper than `MAX_DEPTH`, integers of
more than `MAX_INT_DIGITS` digits, duplicate keys) while composing, before it costs anything.
"""
from __future__ import annotations

import os
import re
import stat
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from core.errors import InputError
from core.paths import REPO_ROOT
from core.text import EXCERPT_CHARS, clean_line, excerpt, printable

P = TypeVar("P", bound=BaseModel)
PARAMS_DIR = Path(__file__).resolve().parent

MAX_YAML_BYTES = 64 * 1024   # params files are ~1 KiB; PyYAML (pure Python) parses ~50 KB/s of dense flow YAML
MAX_DEPTH = 64                # nesting levels; params are 2-3 deep
MAX_ALIAS_NODES = 10_000      # values that aliases may add in all, after expansion
MAX_INT_DIGITS = 30           # beyond any count, seed or size a parameter holds (2**64 has 20 digits)
MAX_MESSAGE_CHARS = 280       # one terminal line or two; a quoted value in it is at most EXCERPT_CHARS
MAX_FIELD_CHARS = 80

_INT_TAG = "tag:yaml.org,2002:int"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_WHERE = "\0where\0"  # stands for the document's name in a _Refused message (no excerpt holds a NUL)


class _Refused(Exception):
    """Raised while composing: `key` is the dotted key inside the document ("" = none);
    `message` holds `_WHERE` where the document is named."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class _ParamsLoader(yaml.SafeLoader):
    """SafeLoader that counts while it composes: nesting depth, the values aliases add
    (an alias costs the expanded size of what it names), integer lengths and duplicate keys,
    and stops at the first excess, before the document is built or expanded."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._keys: list[str | None] = []
        self._expanded = 0          # expanded nodes composed so far (aliases at full size)
        self._alias_added = 0       # of which added by aliases
        self._sizes: dict[int, tuple[yaml.Node, int]] = {}  # finished node -> expanded size

    def _key(self) -> str:
        return ".".join(k for k in self._keys if k is not None)

    def compose_node(self, parent: Any, index: Any) -> yaml.Node:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:
                done = self._sizes.get(id(node))
                if done is None or done[0] is not node:
                    raise _Refused(self._key(), f"alias *{clean_line(event.anchor, 30)} at line {line} of {_WHERE} refers "
                                                f"to the collection that holds it (a loop)")
                self._alias_added += done[1]
                self._expanded += done[1]
                if self._alias_added > MAX_ALIAS_NODES:
                    raise _Refused("", f"aliases in {_WHERE} expand too far (more than {MAX_ALIAS_NODES:,} values "
                                       f"by line {line}); write the values out instead of repeating anchors")
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise _Refused("", f"{_WHERE} nests deeper than {MAX_DEPTH} levels (at line {line}); flatten it")
        self._depth += 1
        self._keys.append(index.value if isinstance(index, yaml.ScalarNode) else None)
        start = self._expanded
        node = super().compose_node(parent, index)
        if isinstance(node, yaml.ScalarNode) and node.tag == _INT_TAG:
            self._check_int(node)
        elif isinstance(node, yaml.MappingNode):
            self._check_duplicates(node)
        self._keys.pop()
        self._depth -= 1
        self._expanded += 1
        self._sizes[id(node)] = (node, self._expanded - start)
        return node

    def _check_int(self, node: yaml.ScalarNode) -> None:
        digits = len(re.sub(r"[-+_:\s]", "", node.value))
        if digits > MAX_INT_DIGITS:
            sign = "negative " if node.value.lstrip().startswith("-") else ""
            line = node.start_mark.line + 1
            raise _Refused(self._key(), f"{sign}integer of {digits:,} digits at line {line} of {_WHERE} is too long "
                                        f"(at most {MAX_INT_DIGITS} digits; got {excerpt(node.value, 24)})")

    def _check_duplicates(self, node: yaml.MappingNode) -> None:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable: the constructor says so later
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise _Refused(".".join(filter(None, [self._key(), str(key)])),
                               f"key {excerpt(key, 40)} appears twice in one mapping of {_WHERE} (lines {first} "
                               f"and {line}); keep one")
            seen[key] = line


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        char = exc.character
        shown = f"#x{char:04x}" if isinstance(char, int) else excerpt(char, 10)
        return f"{exc.reason}: character {shown} at position {exc.position}"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or exc.__class__.__name__
    problem = clean_line(str(problem), 120)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def load_yaml_text(text: str, *, field: str, where: str, under: str = "") -> Any:
    """Safe-load one YAML document of user params: the one loader of params files and `--set`
    values. What costs more than it says is one `InputError` with a short printable message
    naming the document as `where` ("/path/p.yaml", "the --set value"): on `field` for the
    whole document (size, aliases, nesting), on the dotted key (below `under`, the `--set`
    key) for a too-long integer or a duplicate key. Raises yaml.YAMLError for plain syntax
    errors and refused tags, for the caller to word."""
    if len(text) > MAX_YAML_BYTES:
        raise InputError(field, f"{where} is longer than {MAX_YAML_BYTES:,} characters; params are a few lines")
    loader = _ParamsLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as refused:
        named = clean_line(".".join(filter(None, [under, refused.key])), MAX_FIELD_CHARS) or field
        raise InputError(named, clean_line(refused.message.replace(_WHERE, where), MAX_MESSAGE_CHARS)) from None
    except RecursionError:  # cannot happen below MAX_DEPTH; never let it out as a traceback
        raise InputError(field, f"{where} nests too deep") from None
    finally:
        loader.dispose()


def resolve_params_file(path: str | Path) -> Path:
    """Relative paths are taken from the cwd, then from the repo root (the worker's cwd)."""
    p = Path(path).expanduser()
    try:
        if p.is_absolute() or p.exists():
            return p
    except (OSError, ValueError):
        return p  # read_params_file says what is wrong with it
    return REPO_ROOT / p


def _read_params_bytes(p: Path, shown: str) -> bytes:
    """The bytes of a regular file of at most MAX_YAML_BYTES, read without blocking on a FIFO
    or reading a device or a huge file."""
    example = "give a YAML file such as params/lcnet.yaml"
    try:
        st = os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError("params_file", f"{shown} does not exist ({example})") from None
    except ValueError:
        raise InputError("params_file", f"{shown} is not a valid path ({example})") from None
    except OSError as exc:
        raise InputError("params_file", f"{shown} cannot be read ({exc.strerror}); {example}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError("params_file", f"{shown} is a folder; {example}")
    if not stat.S_ISREG(st.st_mode):
        raise InputError("params_file", f"{shown} is not a regular file (a device, pipe or socket); {example}")
    if st.st_size > MAX_YAML_BYTES:
        raise InputError("params_file", f"{shown} is {st.st_size:,} bytes, over the {MAX_YAML_BYTES:,}-byte limit "
                                        "for a params file")
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise InputError("params_file", f"{shown} cannot be read ({exc.strerror}); {example}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the stat above
            raise InputError("params_file", f"{shown} is not a regular file; {example}")
        data = f.read(MAX_YAML_BYTES + 1)
    if len(data) > MAX_YAML_BYTES:
        raise InputError("params_file", f"{shown} is over the {MAX_YAML_BYTES:,}-byte limit for a params file")
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = resolve_params_file(path)
    shown = clean_line(str(path), 120)
    data = _read_params_bytes(p, shown)
    shown = clean_line(str(p), 120)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("params_file", f"{shown} is not a text file; give a YAML file of parameter names and "
                                        "values") from None
    try:
        data = load_yaml_text(text, field="params_file", where=shown) or {}
    except yaml.YAMLError as exc:
        raise InputError("params_file", f"{shown} is not valid YAML ({_yaml_problem(exc)})") from None
    if not isinstance(data, dict):
        raise InputError("params_file", f"{shown} must hold a mapping of parameter names to values")
    return data


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
        current = _section_type(fields[part].annotation)
    return tuple(path)


def _section_type(annotation: Any) -> Any:
    """A field's type for walking on: an optional section (`Section | None`) is that section,
    so an error inside it is named down to its own field (`serial.fidelity.eta`)."""
    models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(models) == 1 else annotation


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
    if err["type"] == "missing":  # pydantic says "Field required"; inside a union, "should be Field required"
        return _missing_path(model_cls, tuple(err["loc"])), "is missing (required)"
    if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return loc, f"must be a section of key: value pairs (got {excerpt(err['input'])})"
    if len(path) < len(err["loc"]) and model_cls is not None:  # a union: say every allowed form once
        alternatives = [e["msg"] for e in errors if _field_path(model_cls, tuple(e["loc"])) == path]
        message = " or ".join(dict.fromkeys(a.removeprefix("Input should be ") for a in alternatives))
        return loc, f"should be {message} (got {excerpt(err['input'])})"
    return locate(loc, message, err["input"])


def _missing_path(model_cls: type[BaseModel] | None, loc: tuple[Any, ...]) -> str:
    """The dotted name of a missing field, without the union-member tags pydantic puts in its
    location (`warm_start.SupernetWarmStart.align_lr` -> `warm_start.align_lr`)."""
    import types
    import typing

    path: list[str] = []
    current: Any = model_cls
    for part in loc:
        is_union = typing.get_origin(current) in (typing.Union, types.UnionType)
        members = typing.get_args(current) if is_union else (current,)
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        owner = next((m for m in models if part in m.model_fields), None)
        if owner is not None:
            current = owner.model_fields[part].annotation
        elif any(m.__name__ == part for m in models):
            continue  # a union-member tag, no parameter name
        else:
            current = None
        path.append(str(part))
    return clean_line(".".join(path), MAX_FIELD_CHARS)


def locate(loc: str, message: str, value: Any) -> tuple[str, str]:
    """(field, message) of a check that failed at `loc` (dotted; "" = the whole model) with
    `message`, worded alike whether pydantic or a pipeline's preflight ran the check."""
    field, message = _locate(loc, message, value)
    return clean_line(field, MAX_FIELD_CHARS), clean_line(message, MAX_MESSAGE_CHARS)


def _locate(loc: str, message: str, value: Any) -> tuple[str, str]:
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
    return loc, f"{message} (got {excerpt(value)})"


def validate(model_cls: type[P], values: dict[str, Any]) -> P:
    try:
        return model_cls.model_validate(values)
    except ValidationError as exc:
        field, message = describe_validation_error(exc, model_cls)
        raise InputError(clean_line(field, MAX_FIELD_CHARS), clean_line(message, MAX_MESSAGE_CHARS)) from None


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
        raise InputError("--set", f"expected key=value, got {excerpt(text)}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise InputError("--set", f"expected key=value, got {excerpt(text)}")
    field = clean_line(key, MAX_FIELD_CHARS)
    try:
        return key, load_yaml_text(raw, field=field, where="the --set value", under=field)
    except yaml.YAMLError as exc:
        raise InputError(field, f"{excerpt(raw)} is not a valid value ({_yaml_problem(exc)}); quote text, "
                                "write lists as [1, 2]") from None
