"""Results tables: one CSV for people and Vega-style tools, a typed Parquet twin for code.

`write_table(rows, "x/output.csv")` writes `x/output.csv` and `x/output.parquet` holding the
same rows and the same text. Column types are decided once, from the Python values, so both
files agree:

- only ints (bools excluded)            -> Int64 (pandas nullable: missing values stay ints)
- only floats, or ints mixed with floats -> float64 (missing is NaN)
- only bools                            -> bool, or nullable boolean if a value is missing
- lists, tuples and dicts               -> JSON text (string column), e.g. '[1, 2]'
- anything else, mixed kinds, ints beyond int64 -> string (str(value))
- nothing but missing values (or no rows) -> float64, pandas' own choice for an empty column

Missing means: key absent from a row, None, NaN, pd.NA — and the empty string, because a CSV
cannot tell "" from missing; it is stored as missing in both files so they stay equal.

Empty table: the files are still written (a stage's list of outputs stays stable). The CSV
is the header line alone (an empty line when there are no columns) and the Parquet holds the
schema with zero rows; `read_table` gives back an empty frame with those columns.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    return isinstance(value, str) and value == ""


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so one set of isinstance checks covers both."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _to_text(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        # default=str: numpy scalars, paths, ... nested inside still serialize
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _typed_column(values: Sequence[Any]) -> pd.Series:
    """One column's values -> a Series of the dtype the module docstring promises."""
    vals = [None if _is_missing(v) else _plain(v) for v in values]
    present = [v for v in vals if v is not None]
    kinds = {type(v) for v in present}
    if not present:
        return pd.Series([math.nan] * len(vals), dtype="float64")
    if kinds == {bool}:
        dtype = "bool" if len(present) == len(vals) else "boolean"
        return pd.Series(pd.array(vals, dtype="boolean")).astype(dtype)
    in_int64 = all(_INT64_MIN <= v <= _INT64_MAX for v in present if type(v) is int)
    if kinds == {int} and in_int64:
        return pd.Series(pd.array(vals, dtype="Int64"))
    if kinds == {float} or (kinds == {int, float} and in_int64):
        return pd.Series([math.nan if v is None else float(v) for v in vals], dtype="float64")
    # huge ints are kept exactly as text rather than rounded to a float
    return pd.Series(pd.array([None if v is None else _to_text(v) for v in vals], dtype="string"))


def _from_frame_column(col: pd.Series) -> pd.Series:
    """Keep a DataFrame column's declared numeric/bool dtype (it survives zero rows); infer
    the rest from the values like row input."""
    dtype = col.dtype
    if pd.api.types.is_bool_dtype(dtype):
        nullable = col.isna().any()  # same rule as rows: plain bool unless a value is missing
        return col.astype("boolean" if nullable else "bool").reset_index(drop=True)
    if pd.api.types.is_integer_dtype(dtype):
        return col.astype("Int64").reset_index(drop=True)
    if pd.api.types.is_float_dtype(dtype):
        return col.astype("float64").reset_index(drop=True)
    if isinstance(dtype, pd.StringDtype):  # "string" and pandas 3's default "str"
        return pd.Series(pd.array([None if _is_missing(v) else str(v) for v in col.tolist()], dtype="string"))
    return _typed_column(col.tolist())


def _column_names(names: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for name in names:
        text = str(name)
        if not text:
            raise ValueError("column names must be non-empty")
        if text in out:
            raise ValueError(f"column name {text!r} occurs twice (after conversion to text)")
        out.append(text)
    return out


def to_frame(rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """The typed frame `write_table` stores (see the module docstring for the rules).

    Rows: columns are the union of the rows' keys in first-seen order. A DataFrame keeps its
    column order; its index is dropped.
    """
    if isinstance(rows, pd.DataFrame):
        names = _column_names(rows.columns)
        columns = {n: _from_frame_column(rows.iloc[:, i]) for i, n in enumerate(names)}
        return pd.DataFrame(columns, index=pd.RangeIndex(len(rows)), columns=names)
    keys: dict[Any, None] = {}  # an ordered set
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"row {i} must be a mapping, got {type(row).__name__}")
        keys.update(dict.fromkeys(row))
    names = _column_names(keys)
    columns = {n: _typed_column([row.get(k) for row in rows]) for n, k in zip(names, keys)}
    return pd.DataFrame(columns, index=pd.RangeIndex(len(rows)), columns=names)


def parquet_path(csv_path: str | Path) -> Path:
    """The Parquet twin of a CSV: same folder, same stem."""
    return Path(csv_path).with_suffix(".parquet")


def _temp_beside(path: Path) -> Path:
    # a unique name in the same folder, so os.replace is atomic and concurrent writers of
    # the same table never share a temp file
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def write_table(rows: Sequence[Mapping[str, Any]] | pd.DataFrame, csv_path: str | Path) -> list[Path]:
    """Write `csv_path` and its Parquet twin atomically; returns [csv_path, parquet_path].

    Both temp files are complete before either is renamed into place, so a crash never
    leaves a truncated file (at worst one new file beside an older twin).
    """
    csv_path = Path(csv_path)
    if csv_path.suffix.lower() != ".csv":
        raise ValueError(f"csv_path must end in .csv, got {csv_path}")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    frame = to_frame(rows)
    pq_path = parquet_path(csv_path)
    tmp_csv, tmp_pq = _temp_beside(csv_path), _temp_beside(pq_path)
    try:
        # CRLF line ends (RFC 4180, as csv.DictWriter writes): with "\n" alone a bare "\r"
        # inside a text field would go unquoted and split the row on reading
        frame.to_csv(tmp_csv, index=False, na_rep="", lineterminator="\r\n", encoding="utf-8")
        frame.to_parquet(tmp_pq, index=False, engine="pyarrow")
        os.replace(tmp_pq, pq_path)
        os.replace(tmp_csv, csv_path)
    finally:
        for tmp in (tmp_csv, tmp_pq):
            tmp.unlink(missing_ok=True)
    return [csv_path, pq_path]


def _twin_dtypes(csv_path: Path, header: list[str]) -> dict[str, Any] | None:
    """Column dtypes recorded in the Parquet twin, if it exists and has the CSV's columns."""
    twin = parquet_path(csv_path)
    if not twin.exists():
        return None
    schema = pq.read_schema(twin)
    empty = schema.empty_table().to_pandas()  # pandas metadata restores Int64/boolean/string
    if list(empty.columns) != header:
        return None  # a twin from another write: don't trust its types
    return dict(empty.dtypes)


def _infer_csv_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """Types for a CSV read alone (numpy_nullable read): Float64 -> float64, boolean without
    missing -> bool, an all-empty column -> float64; Int64 and string stay."""
    out = {}
    for name in frame.columns:
        col = frame[name]
        if isinstance(col.dtype, pd.Float64Dtype):
            col = col.astype("float64")
        elif isinstance(col.dtype, pd.BooleanDtype) and not col.isna().any():
            col = col.astype("bool")
        elif col.isna().all():
            col = col.astype("float64")
        out[name] = col
    return pd.DataFrame(out, index=frame.index, columns=frame.columns)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by `write_table`, from either file.

    Parquet carries the exact types. A CSV does not ("2" may be a number or an architecture
    code), so its column types come from the Parquet twin beside it when that twin has the
    same columns; read alone, a CSV's types are inferred (Int64 / float64 / bool or boolean /
    string) and a text column that looks numeric comes back as numbers.
    """
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        frame = pd.read_parquet(path, engine="pyarrow")
        return frame.reset_index(drop=True)
    with path.open(encoding="utf-8", newline="") as fh:
        first = fh.readline()
    if not first.rstrip("\r\n"):
        return pd.DataFrame(index=pd.RangeIndex(0), columns=pd.Index([], dtype="object"))  # no columns
    header = pd.read_csv(path, nrows=0, encoding="utf-8").columns.tolist()
    # only the empty field is missing: text such as "NA" or "null" is kept as written
    # and a blank line is a row whose only field is missing, not a line to skip
    options: dict[str, Any] = {"keep_default_na": False, "na_values": [""], "encoding": "utf-8",
                               "skip_blank_lines": False}
    dtypes = _twin_dtypes(path, header)
    if dtypes is not None:
        try:
            return pd.read_csv(path, dtype=dtypes, **options)
        except (ValueError, TypeError):
            pass  # the twin's types don't fit this CSV (a stale twin): infer instead
    return _infer_csv_dtypes(pd.read_csv(path, dtype_backend="numpy_nullable", **options))
