"""Image folders are checked before the run, as the run would read them: no images, files that
only look like images, truncated JPEGs, decompression bombs, one class, an empty class. Each is
one line naming the field and the file, exit 2, nothing written (check-params and split-dataset)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from spnas.cli import main


def _classes(root: Path, names: tuple[str, ...] = ("a", "b"), count: int = 3) -> Path:
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / name / f"{i}.png")
    return root


def _only_text(t: Path) -> Path:
    root = _classes(t / "ds", ("a",), 0)
    (t / "ds" / "b").mkdir()
    (root / "a" / "readme.txt").write_text("no images here")
    (root / "b" / "notes.md").write_text("none here either")
    return root


def _fake_png(t: Path) -> Path:
    root = _classes(t / "ds")
    (root / "b" / "fake.png").write_text("I am text with an image's name")
    return root


def _truncated_jpeg(t: Path) -> Path:
    root = _classes(t / "ds")
    Image.new("RGB", (64, 64), (200, 10, 10)).save(root / "a" / "cut.jpg", quality=95)
    data = (root / "a" / "cut.jpg").read_bytes()
    (root / "a" / "cut.jpg").write_bytes(data[: len(data) // 2])  # verify() passes this; decoding does not
    return root


def _truncated_png(t: Path) -> Path:
    root = _classes(t / "ds")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(root / "b" / "cut.png")
    data = (root / "b" / "cut.png").read_bytes()
    (root / "b" / "cut.png").write_bytes(data[:-40])
    return root


def _one_class(t: Path) -> Path:
    return _classes(t / "ds", ("only",))


def _empty_class(t: Path) -> Path:
    root = _classes(t / "ds")
    (root / "c").mkdir()
    return root


def _no_classes(t: Path) -> Path:
    (t / "ds").mkdir()
    Image.new("RGB", (8, 8)).save(t / "ds" / "loose.png")
    return t / "ds"


def _bomb(t: Path) -> Path:
    """An image over PIL's limit (the test lowers the limit so the file stays small)."""
    root = _classes(t / "ds")
    Image.new("L", (200, 200)).save(root / "a" / "bomb.png")
    return root


FOLDERS: list[tuple[str, Callable[[Path], Path], str]] = [
    ("only-non-image-files", _only_text, "holds no images"),
    ("text-named-png", _fake_png, "fake.png"),
    ("truncated-jpeg", _truncated_jpeg, "cut.jpg"),
    ("truncated-png", _truncated_png, "cut.png"),
    ("one-class", _one_class, "at least two"),
    ("empty-class-folder", _empty_class, "holds no images"),
    ("no-class-folders", _no_classes, "class sub-folders"),
    ("decompression-bomb", _bomb, "decompression-bomb"),
]
DEPLOYMENTS = ("lcnet/full", "prune-ea/full", "spos/full")


@pytest.fixture(autouse=True)
def _small_bomb_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 200x200 is "a bomb"; 64x64 is not


def _one_error_line(err: str, field: str, words: str) -> None:
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {field}: ") and words in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
@pytest.mark.parametrize("build, words", [c[1:] for c in FOLDERS], ids=[c[0] for c in FOLDERS])
def test_check_params_refuses_a_bad_image_folder(deployment: str, build, words: str, tmp_path: Path,
                                                 capsys) -> None:
    folder = build(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    assert main(["check-params", deployment, "--set", f"data.dataset_dir={folder}"]) == 2
    _one_error_line(capsys.readouterr().err.strip(), "data.dataset_dir", words)
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("build, words", [c[1:] for c in FOLDERS], ids=[c[0] for c in FOLDERS])
def test_split_dataset_refuses_and_keeps_the_earlier_split(build, words: str, tmp_path: Path, capsys) -> None:
    folder = build(tmp_path)
    (folder / "train_list.txt").write_text("earlier/0.png 0\n")  # an earlier split's list, in the folder
    before = {p: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert main(["split-dataset", "--dataset-dir", str(folder), "--val-value", "0.3"]) == 2
    _one_error_line(capsys.readouterr().err.strip(), "dataset_dir", words)
    assert {p: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_a_good_folder_passes(tmp_path: Path, capsys) -> None:
    folder = _classes(tmp_path / "ds")
    Image.new("RGB", (64, 64)).save(folder / "a" / "big.jpg")
    assert main(["check-params", "lcnet/full", "--set", f"data.dataset_dir={folder}"]) == 0
