"""Latency tables in PaddleSlim's text format (SANAS, source document 000).

A table maps one primitive-op configuration to its measured latency; a network's table
latency is the sum over the ops it runs. File layout (the seed's `latency_855.txt`):

    op_type<TAB><device><TAB><unit>                      header, e.g. `op_type\t855\tus`
    <op key><TAB><latency>                               one line per op configuration

`unit` is `ms` (what we write) or `us` (the seed's table); lookups always return ms.
Op keys are comma-separated fields, the first naming the op type (field orders as in
PaddleSlim's "硬件延时评估表" / hardware latency table document):

    conv,flag_bias,flag_relu,n,c_in,h,w,c_out,groups,k,pad,stride,dilation
    <act>,n,c_in,h,w                                     activation, e.g. relu,1,16,40,40
    batch_norm,active_type,n,c_in,h,w                    active_type `None` or an activation
    eltwise,n,c_in,h,w
    pooling,flag_global_pooling,n,c_in,h,w,k,pad,stride,ceil_mode,pool_type
    softmax,axis,n,c_in,h,w
    fc,flag_bias,n,c_in,c_out                            fully connected (a classifier head)
    concat,n,c_in,h,w,inputs                             c_in: channels of the result, split evenly
    slice,n,c_in,h,w,c_out,stride                        every `stride`-th channel, c_out of them
    resize,n,c_in,h,w,scale                              nearest-neighbour upsampling by `scale`
    gather,n,c_in,h,w,c_out                              c_out channels picked by index

The last five are ours (PaddleSlim's document lists only the first six): the op lists that
`latency.trace` reads off any network need them for classifier heads, ShuffleNet's channel
split and concat, FPN's upsampling and a pruned ResNet's shortcut channel selection.

`pool_type` is 1 max, 2 average counting padding, 3 average excluding padding. h, w are the
op's *input* height and width, c_in its input channels.

Op dicts (what `nas_models` describe a network with, e.g. `nas_models.blazeface.ops_of_model`,
and what `key_of` turns into keys) use the same names:

    {"op": "conv", "flag_bias", "flag_relu", "n", "c_in", "h", "w", "c_out", "groups", "k",
     "pad", "stride", "dilation"}
    {"op": "activation", "act", "n", "c_in", "h", "w"}      or "op": "<act>" (PaddleSlim's spelling)
    {"op": "batch_norm", "active_type", "n", "c_in", "h", "w"}   active_type None / "none" / "relu"...
    {"op": "eltwise", "n", "c_in", "h", "w"}
    {"op": "pooling", "flag_global_pooling", "n", "c_in", "h", "w", "k", "pad", "stride",
     "ceil_mode", "pool_type"}                               pool_type 1-3, or "max" / "avg" (= 2,
                                                             torch's count_include_pad) / "avg_exclusive"
    {"op": "softmax", "axis", "n", "c_in", "h", "w"}
    {"op": "fc", "flag_bias", "n", "c_in", "c_out"}   and the other four likewise, by their fields

Names are case-insensitive (`none` and `None` give the same key). Extra keys in a dict (a
module name, `elt_type`) are ignored; a missing or malformed field is an InputError.
"""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from core.errors import InputError

__all__ = [
    "ACTIVATIONS",
    "FIELDS",
    "OP_TYPES",
    "UNITS",
    "LatencyTable",
    "key_of",
    "op_type_of",
    "parse_key",
]

# Activation names accepted as an activation op's type (PaddleSlim's list plus the ones
# torch networks use); `None` is only meaningful as batch_norm's fused activation.
ACTIVATIONS = ("relu", "relu6", "prelu", "leaky_relu", "sigmoid", "tanh", "elu", "hardswish",
               "hardsigmoid", "swish", "gelu")

# Field names after the op type, in file order. `active_type` is the one string field.
FIELDS: dict[str, tuple[str, ...]] = {
    "conv": ("flag_bias", "flag_relu", "n", "c_in", "h", "w", "c_out", "groups", "k", "pad",
             "stride", "dilation"),
    "activation": ("n", "c_in", "h", "w"),
    "batch_norm": ("active_type", "n", "c_in", "h", "w"),
    "eltwise": ("n", "c_in", "h", "w"),
    "pooling": ("flag_global_pooling", "n", "c_in", "h", "w", "k", "pad", "stride", "ceil_mode",
                "pool_type"),
    "softmax": ("axis", "n", "c_in", "h", "w"),
    "fc": ("flag_bias", "n", "c_in", "c_out"),
    "concat": ("n", "c_in", "h", "w", "inputs"),
    "slice": ("n", "c_in", "h", "w", "c_out", "stride"),
    "resize": ("n", "c_in", "h", "w", "scale"),
    "gather": ("n", "c_in", "h", "w", "c_out"),
}
OP_TYPES = tuple(FIELDS)
_STRING_FIELDS = {"active_type"}
_POOL_TYPES = {"max": 1, "avg": 2, "avg_exclusive": 3}
# Fields that may be 0 (flags, padding) or any integer (softmax axis); every other is a size >= 1.
_ZERO_OK = {"flag_bias", "flag_relu", "pad", "flag_global_pooling", "ceil_mode"}
_FLAGS = {"flag_bias", "flag_relu", "flag_global_pooling", "ceil_mode"}
UNITS = {"ms": 1.0, "us": 1e-3}  # unit -> factor to milliseconds


def op_type_of(op: Mapping[str, Any]) -> str:
    """Table op type of an op dict: one of OP_TYPES (an activation's name maps to `activation`)."""
    if not isinstance(op, Mapping) or "op" not in op:
        raise InputError("op", f"must be a dict with an 'op' entry naming one of "
                               f"{', '.join(OP_TYPES)}; got {op!r}.")
    name = op["op"]
    if name in FIELDS:
        return name
    if isinstance(name, str) and name.lower() in ACTIVATIONS:
        return "activation"
    raise InputError("op", f"op type {name!r} is not one of {', '.join(OP_TYPES)} "
                           f"or an activation ({', '.join(ACTIVATIONS)}).")


def _int_field(value: Any, name: str, where: str) -> int:
    # bool is an int subclass; True/False in a flag field is fine, elsewhere suspicious.
    if isinstance(value, bool):
        value = int(value)
    if name == "pool_type" and isinstance(value, str) and value.lower() in _POOL_TYPES:
        value = _POOL_TYPES[value.lower()]
    if isinstance(value, numbers.Integral):  # numpy / torch integer scalars too
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise InputError(where, f"field {name} must be an integer; got {value!r}.")
    if name == "axis":
        return value
    low = 0 if name in _ZERO_OK else 1
    if value < low or (name in _FLAGS and value > 1):
        allowed = "0 or 1" if name in _FLAGS else f"an integer >= {low}"
        raise InputError(where, f"field {name} must be {allowed}; got {value}.")
    if name == "pool_type" and value not in (1, 2, 3):
        raise InputError(where, f"field pool_type must be 1 (max), 2 (avg incl. padding) or "
                                f"3 (avg excl. padding); got {value}.")
    return value


def _act_field(value: Any, where: str, name: str = "active_type") -> str:
    text = "none" if value is None else str(value).strip().lower()
    if text == "none":
        return "None"  # PaddleSlim's spelling of "no fused activation"
    if text not in ACTIVATIONS:
        raise InputError(where, f"field {name} must be None or one of {', '.join(ACTIVATIONS)}; "
                                f"got {value!r}.")
    return text


def key_of(op: Mapping[str, Any]) -> str:
    """Table key string of one op dict (module docstring lists the keys each type needs)."""
    kind = op_type_of(op)
    if kind == "activation":
        act = op["op"] if op["op"] != "activation" else op.get("act")
        head = _act_field(act, "op", "act")
        if head == "None":
            raise InputError("op", f"an activation op needs 'act' naming one of "
                                   f"{', '.join(ACTIVATIONS)}; got {dict(op)!r}.")
    else:
        head = kind
    parts = [head]
    for name in FIELDS[kind]:
        if name not in op:
            raise InputError("op", f"{kind} op is missing field {name!r} (needs "
                                   f"{', '.join(FIELDS[kind])}); got {dict(op)!r}.")
        value = op[name]
        parts.append(_act_field(value, "op") if name in _STRING_FIELDS
                     else str(_int_field(value, name, "op")))
    return ",".join(parts)


def parse_key(key: str, where: str = "key") -> dict[str, Any]:
    """Op dict of a key string (inverse of `key_of`); `where` names the source in errors."""
    fields = [f.strip() for f in key.split(",")]
    head = fields[0].lower()
    if head in FIELDS and head != "activation":
        kind = head
    elif head in ACTIVATIONS:
        kind = "activation"
    else:
        named = ", ".join(k for k in OP_TYPES if k != "activation")
        raise InputError(where, f"op type {head!r} is not one of {named} or an activation "
                                f"({', '.join(ACTIVATIONS)}).")
    names = FIELDS[kind]
    if len(fields) - 1 != len(names):
        raise InputError(where, f"a {head} key has {len(names)} fields after the op type "
                                f"({','.join(names)}); got {len(fields) - 1} in {key!r}.")
    op: dict[str, Any] = {"op": kind}
    if kind == "activation":
        op["act"] = head
    for name, text in zip(names, fields[1:]):
        if name in _STRING_FIELDS:
            op[name] = _act_field(text, where)
            continue
        try:
            value = int(text)
        except ValueError:
            raise InputError(where, f"field {name} must be an integer; got {text!r}.") from None
        op[name] = _int_field(value, name, where)
    return op


def _format_ms(value: float) -> str:
    # repr() round-trips a float exactly; whole numbers (the seed's µs) stay without ".0".
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


class LatencyTable:
    """Op key -> latency, with the header's device name and unit.

    `entries` hold latencies in the table's own `unit` (so a table reads back and saves
    byte-identically); `lookup`/`sum` return milliseconds.
    """

    def __init__(self, entries: Mapping[str, float], device: str = "cpu", unit: str = "ms",
                 path: Path | None = None) -> None:
        if unit not in UNITS:
            raise InputError("unit", f"must be one of {', '.join(UNITS)}; got {unit!r}.")
        if not device or any(c in device for c in "\t\r\n"):
            raise InputError("device", f"must be a non-empty name without tabs or newlines; "
                                       f"got {device!r}.")
        self.device = device
        self.unit = unit
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, float] = {}
        for key, value in entries.items():
            canonical = key_of(parse_key(key))  # one spelling per op: no " 3" vs "3" misses
            latency = float(value)
            if not math.isfinite(latency) or latency < 0:
                raise InputError("entries", f"latency of {key} must be a finite number >= 0; "
                                            f"got {value!r}.")
            self._entries[canonical] = latency

    # -- mapping-like access -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __contains__(self, op: object) -> bool:
        key = op if isinstance(op, str) else key_of(op)  # type: ignore[arg-type]
        return key in self._entries

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyTable):
            return NotImplemented
        return (self.device, self.unit, self._entries) == (other.device, other.unit, other._entries)

    def __repr__(self) -> str:
        return f"LatencyTable({len(self)} ops, device={self.device!r}, unit={self.unit!r})"

    @property
    def entries(self) -> dict[str, float]:
        """A copy of key -> latency in the table's unit."""
        return dict(self._entries)

    @property
    def scale_ms(self) -> float:
        return UNITS[self.unit]

    def _where(self) -> str:
        return f" {self.path}" if self.path is not None else ""

    # -- queries ---------------------------------------------------------------------------
    def lookup(self, op: Mapping[str, Any] | str) -> float:
        """Latency of one op (dict or key) in ms; an op the table lacks is an InputError."""
        key = op if isinstance(op, str) else key_of(op)
        try:
            return self._entries[key] * self.scale_ms
        except KeyError:
            raise InputError("ops", f"op {key} is not in latency table{self._where()}; build the "
                                    "table over this network's search space (latency.measure."
                                    "build_table).") from None

    def missing(self, ops: Iterable[Mapping[str, Any] | str]) -> list[str]:
        """Keys of the ops the table lacks, each once, in first-seen order."""
        seen: dict[str, None] = {}
        for op in ops:
            key = op if isinstance(op, str) else key_of(op)
            if key not in self._entries:
                seen.setdefault(key, None)
        return list(seen)

    def sum(self, ops: Iterable[Mapping[str, Any] | str]) -> float:
        """Table latency of a network: the sum over its ops, in ms. Every op must be present."""
        ops = list(ops)
        gaps = self.missing(ops)
        if gaps:
            more = f" (and {len(gaps) - 1} more)" if len(gaps) > 1 else ""
            raise InputError("ops", f"op {gaps[0]}{more} is not in latency table{self._where()}; "
                                    "build the table over this network's search space "
                                    "(latency.measure.build_table).")
        return sum(self.lookup(op) for op in ops)

    # -- files -----------------------------------------------------------------------------
    def to_text(self) -> str:
        lines = [f"op_type\t{self.device}\t{self.unit}"]
        lines += [f"{key}\t{_format_ms(value)}" for key, value in self._entries.items()]
        return "\n".join(lines) + "\n"

    def save(self, path: Path) -> Path:
        """Write the table (through a temporary file renamed into place); returns `path`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(self.to_text(), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.path = path
        return path

    @classmethod
    def read(cls, path: Path) -> LatencyTable:
        """Read a table file; any malformed line is an InputError naming `file:line`."""
        path = Path(path)
        if not path.is_file():
            raise InputError("table_file", f"no latency table at {path}.")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError("table_file", f"{path} is not UTF-8 text; a latency table is a "
                                           "text file (header op_type<TAB>device<TAB>unit).") from None
        return cls.from_text(text, source=str(path), path=path)

    @classmethod
    def from_text(cls, text: str, source: str = "<table>", path: Path | None = None) -> LatencyTable:
        lines = text.splitlines()
        if not lines or not lines[0].strip():
            raise InputError(f"{source}:1", "the first line must be the header "
                                            "op_type<TAB>device<TAB>unit; the file starts empty.")
        header = lines[0].rstrip("\r").split("\t")
        if len(header) != 3 or header[0] != "op_type":
            raise InputError(f"{source}:1", "the first line must be the header "
                                            f"op_type<TAB>device<TAB>unit; got {lines[0]!r}.")
        device, unit = header[1].strip(), header[2].strip()
        if unit not in UNITS:
            raise InputError(f"{source}:1", f"the header's unit must be one of {', '.join(UNITS)}; "
                                            f"got {unit!r}.")
        if not device:
            raise InputError(f"{source}:1", "the header's device name is empty.")
        entries: dict[str, float] = {}
        first_line: dict[str, int] = {}
        for number, raw in enumerate(lines[1:], start=2):
            line = raw.rstrip("\r")
            where = f"{source}:{number}"
            if not line.strip():
                continue  # blank lines (e.g. a trailing one) carry nothing
            parts = line.split("\t")
            if len(parts) != 2:
                raise InputError(where, "each line must be <op key><TAB><latency> (one tab); "
                                        f"got {line!r}.")
            key = key_of(parse_key(parts[0].strip(), where))
            try:
                latency = float(parts[1].strip())
            except ValueError:
                raise InputError(where, f"latency must be a number; got {parts[1]!r}.") from None
            if not math.isfinite(latency) or latency < 0:
                raise InputError(where, f"latency must be a finite number >= 0; got {parts[1]!r}.")
            if key in first_line:
                raise InputError(where, f"op {key} is already listed on line {first_line[key]}; "
                                        "each op appears once.")
            first_line[key] = number
            entries[key] = latency
        return cls(entries, device=device, unit=unit, path=path)
