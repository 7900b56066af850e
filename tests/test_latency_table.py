"""PaddleSlim latency-table format: keys of every op type, strict reading, exact round trip."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import InputError
from latency.table import LatencyTable, key_of, parse_key

# The first lines of the seed's latency_855.txt (PaddleDetection slim/nas), byte for byte:
# header op_type<TAB>device<TAB>unit, then conv keys with integer microseconds.
SEED_SNIPPET = (
    "op_type\t855\tus\n"
    "conv,0,0,1,3,640,640,8,1,3,1,2,1\t2433\n"
    "conv,0,0,1,8,320,320,8,8,3,1,1,1\t1053\n"
    "conv,0,0,1,8,320,320,8,1,1,0,1,1\t1462\n"
    "conv,0,0,1,8,320,320,8,8,3,1,2,1\t504\n"
    "conv,0,0,1,8,160,160,48,1,1,0,1,1\t1964\n"
)

CONV = {"op": "conv", "flag_bias": 0, "flag_relu": 0, "n": 1, "c_in": 3, "h": 640, "w": 640,
        "c_out": 8, "groups": 1, "k": 3, "pad": 1, "stride": 2, "dilation": 1}
# One op of each other type, spelled as nas_models.blazeface.ops_of_model spells them
# (extra keys such as module/part/elt_type are ignored).
BLAZE_STYLE = [
    {"op": "batch_norm", "active_type": "none", "n": 1, "c_in": 12, "h": 64, "w": 64, "module": "x"},
    {"op": "activation", "act": "relu", "n": 1, "c_in": 12, "h": 64, "w": 64, "part": "backbone"},
    {"op": "eltwise", "elt_type": "add", "n": 1, "c_in": 12, "h": 32, "w": 32},
    {"op": "pooling", "flag_global_pooling": 0, "n": 1, "c_in": 12, "h": 64, "w": 64, "k": 2,
     "pad": 0, "stride": 2, "ceil_mode": 1, "pool_type": "max"},
    {"op": "softmax", "axis": 2, "n": 1, "c_in": 896, "h": 2, "w": 1},
]


def write(tmp_path: Path, text: str, name: str = "table.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_seed_layout_is_accepted(tmp_path: Path) -> None:
    table = LatencyTable.read(write(tmp_path, SEED_SNIPPET))
    assert (table.device, table.unit, len(table)) == ("855", "us", 5)
    assert table.lookup(CONV) == pytest.approx(2.433)  # µs in the file, ms from lookups
    assert table.sum([CONV, CONV]) == pytest.approx(4.866)
    # Saving a table we read reproduces the file byte for byte.
    assert table.to_text() == SEED_SNIPPET


def test_keys_of_every_op_type() -> None:
    assert key_of(CONV) == "conv,0,0,1,3,640,640,8,1,3,1,2,1"
    assert [key_of(op) for op in BLAZE_STYLE] == [
        "batch_norm,None,1,12,64,64",
        "relu,1,12,64,64",
        "eltwise,1,12,32,32",
        "pooling,0,1,12,64,64,2,0,2,1,1",
        "softmax,2,1,896,2,1",
    ]
    # PaddleSlim's own spellings give the same keys.
    assert key_of({"op": "relu", "n": 1, "c_in": 12, "h": 64, "w": 64}) == "relu,1,12,64,64"
    assert key_of({**BLAZE_STYLE[3], "pool_type": 1}) == key_of(BLAZE_STYLE[3])
    assert key_of({**BLAZE_STYLE[0], "active_type": None}) == "batch_norm,None,1,12,64,64"
    for op in [CONV, *BLAZE_STYLE]:
        assert key_of(parse_key(key_of(op))) == key_of(op)


def test_round_trip_is_identical(tmp_path: Path) -> None:
    entries = {key_of(op): ms for op, ms in zip([CONV, *BLAZE_STYLE], [0.1234567891234, 2.0, 1e-05,
                                                                       0.3, 7.25, 1 / 3])}
    table = LatencyTable(entries, device="AMD EPYC / onnxruntime 1.32.0 / 2 threads", unit="ms")
    path = table.save(tmp_path / "t.txt")
    assert path.read_text().splitlines()[0] == "op_type\tAMD EPYC / onnxruntime 1.32.0 / 2 threads\tms"
    again = LatencyTable.read(path)
    assert again == table and again.entries == entries
    assert again.save(tmp_path / "t2.txt").read_text() == path.read_text()


@pytest.mark.parametrize("text, where, words", [
    ("", "table.txt:1", "header"),
    ("conv,0,0,1,3,8,8,8,1,3,1,1,1\t1\n", "table.txt:1", "header"),
    ("op_type\t855\tseconds\n", "table.txt:1", "unit"),
    ("op_type\t855\tus\nconv,0,0,1,3,8,8,8,1,3,1,1\t5\n", "table.txt:2", "12 fields"),
    ("op_type\t855\tus\n\nconv,0,0,1,3,8,8,8,1,3,1,1,x\t5\n", "table.txt:3", "integer"),
    ("op_type\t855\tus\nconv,0,0,1,3,8,8,8,1,3,1,1,1 5\n", "table.txt:2", "one tab"),
    ("op_type\t855\tus\nconv,0,0,1,3,8,8,8,1,3,1,1,1\tfast\n", "table.txt:2", "number"),
    ("op_type\t855\tus\nconv,0,0,1,3,8,8,8,1,3,1,1,1\t-1\n", "table.txt:2", ">= 0"),
    ("op_type\t855\tus\nconvolution,0,0,1\t5\n", "table.txt:2", "op type"),
    ("op_type\t855\tus\nbatch_norm,maybe,1,8,8,8\t5\n", "table.txt:2", "active_type"),
    ("op_type\t855\tus\npooling,0,1,8,8,8,2,0,2,0,7\t5\n", "table.txt:2", "pool_type"),
    ("op_type\t855\tus\nrelu,1,8,8,8\t5\nrelu,1,8,8,8\t6\n", "table.txt:3", "line 2"),
])
def test_malformed_lines_name_file_and_line(tmp_path: Path, text: str, where: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        LatencyTable.read(path)
    assert info.value.field == f"{path.parent / where}"
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_ops_are_named(tmp_path: Path) -> None:
    table = LatencyTable.read(write(tmp_path, SEED_SNIPPET))
    other = {**CONV, "c_out": 16}
    assert table.missing([CONV, other, other, BLAZE_STYLE[1]]) == [
        "conv,0,0,1,3,640,640,16,1,3,1,2,1", "relu,1,12,64,64"]
    with pytest.raises(InputError, match=r"op conv,0,0,1,3,640,640,16,1,3,1,2,1 \(and 1 more\) "
                                         r"is not in latency table .*table.txt"):
        table.sum([CONV, other, BLAZE_STYLE[1]])
    with pytest.raises(InputError, match="relu,1,12,64,64 is not in latency table"):
        table.lookup(BLAZE_STYLE[1])


@pytest.mark.parametrize("op, words", [
    ({"c_in": 3}, "'op' entry"),
    ({"op": "deconv", "n": 1}, "op type 'deconv'"),
    ({**CONV, "k": None}, "field k must be an integer"),
    ({key: v for key, v in CONV.items() if key != "groups"}, "missing field 'groups'"),
    ({**CONV, "flag_bias": 2}, "flag_bias must be 0 or 1"),
    ({**CONV, "c_out": 0}, "c_out must be an integer >= 1"),
    ({"op": "activation", "n": 1, "c_in": 8, "h": 8, "w": 8}, "needs 'act'"),
])
def test_bad_op_dicts(op: dict, words: str) -> None:
    with pytest.raises(InputError, match=words):
        key_of(op)


def test_bad_construction_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unit"):
        LatencyTable({}, unit="s")
    with pytest.raises(InputError, match="tabs"):
        LatencyTable({}, device="a\tb")
    with pytest.raises(InputError, match="no latency table"):
        LatencyTable.read(tmp_path / "absent.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="UTF-8"):
        LatencyTable.read(tmp_path / "bin.txt")
