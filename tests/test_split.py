"""PaddleX ImageNet split semantics: floor counts per class, disjoint + complete lists, validation."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.errors import InputError
from data.split import format_split_summary, split_imagenet_folder

OUTPUT_NAMES = ("train_list.txt", "val_list.txt", "test_list.txt", "labels.txt")


def make_folder(root: Path, sizes: dict[str, int]) -> Path:
    """Class folders of tiny real PNGs (plus a non-image file that must be ignored)."""
    for name, count in sizes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (2, 2), (i % 256, 0, 0)).save(root / name / f"img_{i:03d}.png")
        (root / name / "notes.txt").write_text("not an image")
    return root


def read_lines(path: Path) -> list[tuple[str, int]]:
    rows = [line.rsplit(" ", 1) for line in path.read_text().splitlines()]
    return [(rel, int(label)) for rel, label in rows]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in OUTPUT_NAMES if (folder / name).exists()}


def check_split(root: Path, sizes: dict[str, int], val: float, test: float) -> None:
    result = split_imagenet_folder(root, val, test, seed=3)
    labels = sorted(sizes)
    assert result.labels == labels
    assert (root / "labels.txt").read_text().splitlines() == labels
    lists = {name: read_lines(root / f"{name}_list.txt") if (root / f"{name}_list.txt").exists() else []
             for name in ("train", "val", "test")}
    for label_id, name in enumerate(labels):
        n = sizes[name]
        per = {k: [rel for rel, lab in rows if rel.startswith(f"{name}/")] for k, rows in lists.items()}
        assert len(per["val"]) == math.floor(n * val)
        assert len(per["test"]) == math.floor(n * test)
        assert len(per["train"]) == n - math.floor(n * val) - math.floor(n * test)
        everything = per["train"] + per["val"] + per["test"]
        assert sorted(everything) == [f"{name}/img_{i:03d}.png" for i in range(n)]  # disjoint + complete
        assert all(lab == label_id for rows in lists.values() for rel, lab in rows if rel.startswith(f"{name}/"))
    assert result.counts == {k: len(v) for k, v in lists.items()}
    assert (result.test_list is None) == (not lists["test"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(1, 12), min_size=2, max_size=4),  # a classifier needs two classes
       val=st.floats(0.01, 0.95), test=st.floats(0.0, 0.95))
def test_counts_are_floor_per_class_and_lists_disjoint_and_complete(sizes, val, test):
    if val + test >= 1:
        test = 0.0 if val >= 0.95 else (1 - val) / 2
    with tempfile.TemporaryDirectory() as tmp:
        named = {f"class_{i}": n for i, n in enumerate(sizes)}
        check_split(make_folder(Path(tmp) / "data", named), named, val, test)


def test_labels_sorted_by_name_and_lines_relative(tmp_path):
    root = make_folder(tmp_path / "data", {"b": 5, "a": 5, "9": 5, "10": 5})
    result = split_imagenet_folder(root, 0.2, 0.2)
    assert result.labels == ["10", "9", "a", "b"]
    rel, label = read_lines(result.train_list)[0]
    assert "/" in rel and not rel.startswith("/") and (root / rel).is_file()
    assert result.labels[label] == rel.split("/")[0]
    assert result.class_counts["a"] == {"train": 3, "val": 1, "test": 1}


def test_same_seed_same_split_and_other_seed_differs(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 30, "b": 30})
    split_imagenet_folder(root, 0.3, 0.2, seed=7)
    first = snapshot(root)
    split_imagenet_folder(root, 0.3, 0.2, seed=7)
    assert snapshot(root) == first
    split_imagenet_folder(root, 0.3, 0.2, seed=8)
    assert snapshot(root)["val_list.txt"] != first["val_list.txt"]


def test_output_dir_keeps_dataset_untouched(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 10, "b": 10})
    out = tmp_path / "out" / "nested"
    result = split_imagenet_folder(root, 0.2, 0.1, output_dir=out)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)
    assert not any((root / name).exists() for name in OUTPUT_NAMES)
    assert all((root / rel).is_file() for rel, _ in read_lines(result.train_list))
    assert result.output_dir == out.resolve() and result.dataset_dir == root.resolve()


def test_empty_test_share_removes_stale_test_list(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 10, "b": 10})
    assert split_imagenet_folder(root, 0.2, 0.1).test_list is not None
    result = split_imagenet_folder(root, 0.2, 0.0)
    assert result.test_list is None and not (root / "test_list.txt").exists()
    assert result.counts["test"] == 0 and "test" in format_split_summary(result)
    assert not list(root.glob(".*tmp"))  # no temporary files left behind


def test_summary_lists_classes_and_totals(tmp_path):
    root = make_folder(tmp_path / "data", {"cat": 10, "dog": 10})
    text = format_split_summary(split_imagenet_folder(root, 0.2, 0.1))
    assert "cat" in text and "dog" in text and "total" in text and "train_list.txt" in text


@pytest.fixture()
def earlier_split(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 10, "b": 10})
    split_imagenet_folder(root, 0.2, 0.1)
    return root, snapshot(root)


@pytest.mark.parametrize("val, test, field", [
    (0.0, 0.1, "val_value"), (1.0, 0.0, "val_value"), (-0.2, 0.1, "val_value"),
    (float("nan"), 0.1, "val_value"), (True, 0.1, "val_value"), ("0.2", 0.1, "val_value"),
    (0.2, -0.1, "test_value"), (0.2, 1.0, "test_value"), (0.6, 0.4, "test_value"),
    (0.7, 0.5, "test_value"),
])
def test_bad_ratios_name_the_field_and_keep_earlier_split(earlier_split, val, test, field):
    root, before = earlier_split
    with pytest.raises(InputError) as err:
        split_imagenet_folder(root, val, test)
    assert err.value.field == field
    assert snapshot(root) == before


def _missing(root: Path) -> Path:
    return root.parent / "nope"


def _a_file(root: Path) -> Path:
    path = root.parent / "file.txt"
    path.write_text("x")
    return path


def _no_classes(root: Path) -> Path:
    path = root.parent / "flat"
    path.mkdir()
    Image.new("RGB", (2, 2)).save(path / "loose.png")
    return path


def _empty_class(root: Path) -> Path:
    (root / "zebra").mkdir()
    (root / "zebra" / "readme.txt").write_text("no images here")
    return root


def _corrupt_image(root: Path) -> Path:
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    return root


def _truncated_image(root: Path) -> Path:
    data = (root / "a" / "img_000.png").read_bytes()
    (root / "a" / "cut.png").write_bytes(data[: len(data) // 2])
    return root


@pytest.mark.parametrize("make_dir, words", [
    (_missing, "does not exist"), (_a_file, "not a directory"), (_no_classes, "no class sub-folders"),
    (_empty_class, "zebra"), (_corrupt_image, "broken.png"), (_truncated_image, "cut.png"),
])
def test_bad_dataset_dir_names_the_problem_and_keeps_earlier_split(earlier_split, make_dir, words):
    root, before = earlier_split
    with pytest.raises(InputError) as err:
        # output_dir = the earlier split, so a careless implementation would overwrite it
        split_imagenet_folder(make_dir(root), 0.3, 0.0, output_dir=root)
    assert err.value.field == "dataset_dir" and words in str(err.value)
    assert snapshot(root) == before


def test_output_dir_that_is_a_file_is_rejected(earlier_split, tmp_path):
    root, before = earlier_split
    with pytest.raises(InputError) as err:
        split_imagenet_folder(root, 0.2, 0.1, output_dir=_a_file(root))
    assert err.value.field == "output_dir"
    assert snapshot(root) == before


def test_result_to_dict_is_json_friendly(tmp_path):
    import json

    root = make_folder(tmp_path / "data", {"a": 4, "b": 4})
    data = split_imagenet_folder(root, 0.25, 0.0).to_dict()
    assert json.loads(json.dumps(data))["test_list"] is None
    assert data["counts"] == {"train": 6, "val": 2, "test": 0}
