"""Results tables: CSV + Parquet twin written by tasks/orchestration/tables.py, read back by either file."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.orchestration.tables import parquet_path, read_table, to_frame, write_table

ROWS: list[dict[str, Any]] = [
    {"id": 0, "code": "11-21", "mAP": 0.5, "params": 1200, "pareto": True, "mutations": ["expand", "swap"]},
    {"id": 1, "code": "2", "mAP": None, "pareto": False, "status": "failed"},
    {"id": 2, "code": "111", "mAP": float("nan"), "params": None, "pareto": True, "extra": {"a": 1}},
]


def both(csv_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return read_table(csv_path), read_table(parquet_path(csv_path))


def test_write_returns_both_files_and_reads_agree(tmp_path: Path) -> None:
    paths = write_table(ROWS, tmp_path / "out" / "output.csv")
    assert paths == [tmp_path / "out" / "output.csv", tmp_path / "out" / "output.parquet"]
    assert all(p.exists() for p in paths)
    assert not [p for p in paths[0].parent.iterdir() if p.suffix == ".tmp"]  # temp files gone
    from_csv, from_parquet = both(paths[0])
    pd.testing.assert_frame_equal(from_csv, from_parquet)
    pd.testing.assert_frame_equal(from_parquet, to_frame(ROWS))


def test_columns_union_in_first_seen_order_and_dtypes(tmp_path: Path) -> None:
    csv = write_table(ROWS, tmp_path / "t.csv")[0]
    frame = read_table(csv)
    assert list(frame.columns) == ["id", "code", "mAP", "params", "pareto", "mutations", "status", "extra"]
    assert csv.read_bytes().split(b"\r\n")[0].decode() == "id,code,mAP,params,pareto,mutations,status,extra"
    dtypes = {k: str(v) for k, v in frame.dtypes.items()}
    assert dtypes == {"id": "Int64", "code": "string", "mAP": "float64", "params": "Int64", "pareto": "bool",
                      "mutations": "string", "status": "string", "extra": "string"}


def test_missing_values(tmp_path: Path) -> None:
    frame, _ = both(write_table(ROWS, tmp_path / "t.csv")[0])
    # ints stay ints around a hole; absent key, None and NaN are all missing
    assert frame["params"].tolist() == [1200, pd.NA, pd.NA]
    assert frame["mAP"].iloc[0] == 0.5 and frame["mAP"].iloc[1:].isna().all()
    assert frame["status"].tolist() == [pd.NA, "failed", pd.NA]
    rows = [{"ok": True}, {"ok": None}, {}]
    frame = read_table(write_table(rows, tmp_path / "b.csv")[0])
    assert str(frame["ok"].dtype) == "boolean" and frame["ok"].tolist() == [True, pd.NA, pd.NA]


def test_lists_and_dicts_are_the_same_json_text_in_both_files(tmp_path: Path) -> None:
    csv = write_table(ROWS, tmp_path / "t.csv")[0]
    for frame in both(csv):
        assert json.loads(frame["mutations"].iloc[0]) == ["expand", "swap"]
        assert frame["extra"].iloc[2] == '{"a": 1}'


def test_text_that_looks_like_numbers_or_na_stays_text(tmp_path: Path) -> None:
    rows = [{"code": "2", "note": "NA"}, {"code": "0012", "note": "null"}, {"code": "1e5", "note": "None"}]
    frame, twin = both(write_table(rows, tmp_path / "t.csv")[0])
    pd.testing.assert_frame_equal(frame, twin)
    assert frame["code"].tolist() == ["2", "0012", "1e5"]
    assert frame["note"].tolist() == ["NA", "null", "None"]


def test_csv_alone_infers_types(tmp_path: Path) -> None:
    csv = write_table([{"i": 1, "f": 1.5, "b": True, "s": "x"}, {"i": None, "f": 2.0, "b": False, "s": "y"}],
                      tmp_path / "t.csv")[0]
    parquet_path(csv).unlink()
    frame = read_table(csv)
    assert {k: str(v) for k, v in frame.dtypes.items()} == {"i": "Int64", "f": "float64", "b": "bool", "s": "string"}
    assert frame["i"].tolist() == [1, pd.NA]


def test_empty_table(tmp_path: Path) -> None:
    # no rows and no columns: both files exist; the CSV is a single empty header line
    csv = write_table([], tmp_path / "empty.csv")[0]
    assert csv.read_bytes() == b"\r\n"
    for frame in both(csv):
        assert frame.shape == (0, 0)
    # no rows but known columns (a typed DataFrame): header only, dtypes kept
    typed = pd.DataFrame({"id": pd.Series(dtype="int64"), "mAP": pd.Series(dtype="float64"),
                          "code": pd.Series(dtype="string")})
    csv = write_table(typed, tmp_path / "header.csv")[0]
    assert csv.read_bytes() == b"id,mAP,code\r\n"
    from_csv, from_parquet = both(csv)
    pd.testing.assert_frame_equal(from_csv, from_parquet)
    assert from_csv.shape == (0, 3)
    assert {k: str(v) for k, v in from_parquet.dtypes.items()} == {"id": "Int64", "mAP": "float64", "code": "string"}


def test_dataframe_input_and_numpy_scalars(tmp_path: Path) -> None:
    df = pd.DataFrame({"n": [np.int64(3), np.int64(4)], "x": [np.float32(0.5), np.nan],
                       "obj": pd.Series([np.int64(1), None], dtype=object, index=[10, 20]), "flag": [np.bool_(True), np.bool_(False)]},
                      index=[10, 20])
    frame, twin = both(write_table(df, tmp_path / "t.csv")[0])
    pd.testing.assert_frame_equal(frame, twin)
    assert list(frame.index) == [0, 1]  # the index is not stored
    assert {k: str(v) for k, v in frame.dtypes.items()} == {"n": "Int64", "x": "float64", "obj": "Int64", "flag": "bool"}


def test_overwrite_and_bad_input(tmp_path: Path) -> None:
    csv = tmp_path / "t.csv"
    write_table([{"a": 1}], csv)
    write_table([{"b": "x"}, {"b": "y"}], csv)
    frame, twin = both(csv)
    assert list(frame.columns) == ["b"] and len(twin) == 2
    with pytest.raises(ValueError):
        write_table([{"a": 1}], tmp_path / "t.txt")
    with pytest.raises(ValueError):
        write_table([{1: "x", "1": "y"}], csv)  # two keys, one column name
    with pytest.raises(TypeError):
        write_table([["not", "a", "mapping"]], csv)  # type: ignore[list-item]


def test_mixed_and_huge_values_become_text(tmp_path: Path) -> None:
    rows = [{"m": 1, "h": 2**70, "nf": 1}, {"m": "x", "h": 3, "nf": 2.5}]
    frame, twin = both(write_table(rows, tmp_path / "t.csv")[0])
    pd.testing.assert_frame_equal(frame, twin)
    assert frame["m"].tolist() == ["1", "x"] and frame["h"].tolist() == [str(2**70), "3"]
    assert str(frame["nf"].dtype) == "float64" and frame["nf"].tolist() == [1.0, 2.5]


# --------------------------------------------------------------------------- property test

KINDS = ("int", "float", "bool", "text", "json")
# any printable text incl. commas, quotes, newlines and non-ASCII (no surrogates, no NUL)
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
values_of = {
    "int": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(allow_nan=True, allow_infinity=True),
    "bool": st.booleans(),
    "text": text,
    "json": st.one_of(st.lists(st.integers(-5, 5), max_size=3), st.dictionaries(text, st.integers(), max_size=2)),
}


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, str]]:
    names = draw(st.lists(st.text("abcdefgh_", min_size=1, max_size=6), min_size=1, max_size=5, unique=True))
    kinds = {n: draw(st.sampled_from(KINDS)) for n in names}
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        row: dict[str, Any] = {}
        for n in draw(st.permutations(names)):  # keys appear in varying orders
            choice = draw(st.integers(0, 5))
            if choice == 0:
                continue  # key absent
            row[n] = None if choice == 1 else draw(values_of[kinds[n]])
        rows.append(row)
    return rows, kinds


def expected_dtype(values: list[Any], kind: str) -> str:
    def missing(v: Any) -> bool:
        return v is None or v == "" or (isinstance(v, float) and math.isnan(v))

    present = [v for v in values if not missing(v)]
    if not present:
        return "float64"
    return {"int": "Int64", "float": "float64", "text": "string", "json": "string",
            "bool": "bool" if len(present) == len(values) else "boolean"}[kind]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tables())
def test_random_tables_round_trip(tmp_path: Path, case: tuple[list[dict[str, Any]], dict[str, str]]) -> None:
    rows, kinds = case
    csv = write_table(rows, tmp_path / "prop.csv")[0]
    from_csv, from_parquet = both(csv)
    pd.testing.assert_frame_equal(from_csv, from_parquet)
    seen = list(dict.fromkeys(k for r in rows for k in r))
    assert list(from_csv.columns) == seen
    for name in seen:
        values = [r.get(name) for r in rows]
        col = from_parquet[name]
        assert str(col.dtype) == expected_dtype(values, kinds[name]), name
        for got, want in zip(col.tolist(), values):
            if want is None or want == "" or (isinstance(want, float) and math.isnan(want)):
                assert got is pd.NA or (isinstance(got, float) and math.isnan(got))
            elif kinds[name] == "json":
                assert json.loads(got) == want
            elif kinds[name] == "float" and want == 0:
                assert got == 0 and math.copysign(1, got) == math.copysign(1, want)  # keeps -0.0
            else:
                assert got == want


def test_a_stage_result_is_trusted_only_while_its_files_exist(tmp_path) -> None:
    from dataclasses import dataclass

    from tasks.orchestration.handoff import StageResult, missing_files

    @dataclass(frozen=True)
    class Trained(StageResult):
        model_path: str

    weights = tmp_path / "model_0.pth"
    weights.write_bytes(b"w")
    result = Trained(str(weights), files=(str(weights),), performance={"acc": 0.5})
    assert missing_files(result) == [] and missing_files({"files": [str(weights)]}) == []
    weights.unlink()
    assert missing_files(result) == [str(weights)] and missing_files({"files": [str(weights)]}) == [str(weights)]
    assert missing_files(None) == [] and missing_files([1, 2]) == []
