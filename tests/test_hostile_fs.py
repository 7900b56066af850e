"""Filesystem trouble is one line, and a split is all or nothing: folders that cannot be created
or written (under /proc, under a file), a split whose files cannot all be written."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from core.errors import InputError
from core.paths import state_dir, unwritable_reason
from data.split import split_imagenet_folder

NAMES = ("train_list.txt", "val_list.txt", "test_list.txt", "labels.txt")


def _folder(root: Path, classes: dict[str, int]) -> Path:
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (2, 2), (i, 0, 0)).save(root / name / f"img_{i:02d}.png")
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture()
def earlier(tmp_path: Path) -> Path:
    """A folder split once (classes a, b); then class c appears, so a new split would change every file."""
    root = _folder(tmp_path / "ds", {"a": 6, "b": 6})
    split_imagenet_folder(root, 0.3, 0.2, seed=1)
    _folder(root, {"c": 6})
    return root


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4])
def test_a_split_that_fails_midway_keeps_the_earlier_split(earlier: Path, fail_at: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    before = _files(earlier)
    calls = {"n": 0}
    real_replace = os.replace

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == fail_at and not str(src).endswith(".earlier"):
            raise PermissionError(13, "Permission denied", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(InputError) as err:
        split_imagenet_folder(earlier, 0.3, 0.2, seed=1)
    monkeypatch.undo()
    assert err.value.field == "output_dir" and "\n" not in str(err.value) and "Permission denied" in str(err.value)
    assert _files(earlier) == before  # every earlier file back, nothing new, no temp files left


@pytest.mark.parametrize("blocker", ["labels.txt", "val_list.txt", "train_list.txt"])
def test_a_file_that_cannot_be_replaced_keeps_the_earlier_split(earlier: Path, blocker: str) -> None:
    out = earlier.parent / "lists"
    split_imagenet_folder(earlier, 0.3, 0.2, seed=1, output_dir=out)
    (out / blocker).unlink()
    (out / blocker).mkdir()  # a folder where a list file goes: it cannot be replaced
    before = _files(out)
    with pytest.raises(InputError) as err:
        split_imagenet_folder(earlier, 0.3, 0.25, seed=2, output_dir=out)
    assert err.value.field == "output_dir" and "\n" not in str(err.value)
    assert _files(out) == before and (out / blocker).is_dir()


def test_a_successful_split_after_a_failed_one_is_complete(earlier: Path) -> None:
    result = split_imagenet_folder(earlier, 0.3, 0.2, seed=1)
    assert result.labels == ["a", "b", "c"]
    assert sorted(p.name for p in earlier.iterdir() if p.is_file()) == sorted(NAMES)


@pytest.mark.parametrize("make, words", [
    (lambda t: Path("/proc/spnas-probe/out"), "cannot write under /proc"),
    (lambda t: (t / "f.txt", (t / "f.txt").write_text("x"))[0] / "out", "is a file"),
    (lambda t: (t / "g.txt", (t / "g.txt").write_text("x"))[0], "is a file"),
])
def test_unwritable_folders_say_why_and_leave_nothing(tmp_path: Path, make, words: str) -> None:
    folder = make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert words in (unwritable_reason(folder) or "")
    assert sorted(tmp_path.rglob("*")) == before


def test_a_writable_folder_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    assert unwritable_reason(tmp_path / "a" / "b" / "c") is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("home", ["/proc/spnas-home", "/etc/hostname/spnas"])
def test_spnas_home_that_cannot_be_created(home: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPNAS_HOME", home)
    with pytest.raises(InputError) as err:
        state_dir()
    assert err.value.field == "SPNAS_HOME" and "\n" not in str(err.value) and home in str(err.value)


@pytest.mark.parametrize("root", ["/proc/spnas-out", "/etc/hostname/out"])
def test_output_root_that_cannot_be_created_is_refused_before_work(root: str) -> None:
    from params.loader import load_params
    from params.models import LcnetParams
    from tasks.orchestration.preflight import check_run

    p = load_params(LcnetParams, "params/lcnet.yaml", {"output_root": root})
    with pytest.raises(InputError) as err:
        check_run(p)
    assert err.value.field == "output_root" and "cannot be created" in str(err.value)


def test_compare_out_that_is_a_file_is_refused_before_any_lookup(tmp_path: Path) -> None:
    from spnas.compare import compare

    out = tmp_path / "taken.csv"
    out.write_text("mine")
    with pytest.raises(InputError) as err:
        compare(["no-such-run"], out)
    assert err.value.field == "--out" and "is a file" in str(err.value)
    assert out.read_text() == "mine"
