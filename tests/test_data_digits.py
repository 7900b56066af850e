"""Embedded digits folder (shape, determinism, atomic build + reuse), transforms and list readers."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import InputError
from data._build import build_once
from data.digits import default_digits_folder, make_digits_imagefolder
from data.imagefolder import ListDataset, read_labels, read_list
from data.split import split_imagenet_folder
from data.transforms import Preprocess, load_rgb, train_augment


@pytest.fixture(scope="module")
def digits_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("spnas_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPNAS_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def digits(digits_home) -> Path:
    return default_digits_folder()


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_default_folder_has_all_digits_in_class_folders(digits, digits_home):
    assert digits == digits_home / "data" / "digits_imagenet_32"
    classes = sorted(p.name for p in digits.iterdir() if p.is_dir())
    assert classes == [str(d) for d in range(10)]
    files = sorted(digits.glob("*/*.png"))
    assert len(files) == 1797
    assert (digits / "3" / "digit_0003.png").is_file()  # load_digits()[3] is a 3
    with Image.open(files[0]) as image:
        assert image.mode == "RGB" and image.size == (32, 32)
        pixels = np.asarray(image)
    assert pixels.max() > 200 and pixels.min() == 0  # 0..16 stretched to the 0..255 range
    assert not list(digits.parent.glob(".digits_imagenet_32.building-*"))


def test_rebuild_is_byte_identical(digits, tmp_path):
    again = make_digits_imagefolder(tmp_path / "again")
    assert tree_digest(again) == tree_digest(digits)


def test_second_call_reuses_finished_folder(digits):
    marker = digits / ".complete"
    stamp = marker.stat().st_mtime_ns
    assert default_digits_folder() == digits
    assert marker.stat().st_mtime_ns == stamp


def test_other_size_in_same_folder_is_refused(digits):
    with pytest.raises(InputError, match="image_size"):
        make_digits_imagefolder(digits, image_size=16)


def test_bad_image_size(tmp_path):
    with pytest.raises(InputError) as err:
        make_digits_imagefolder(tmp_path / "x", image_size=4)
    assert err.value.field == "image_size"


def test_crash_leaves_no_half_folder_and_next_build_succeeds(tmp_path):
    target = tmp_path / "set"

    def crash(folder: Path) -> None:
        (folder / "half.txt").write_text("partial")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        build_once(target, {"v": 1}, crash)
    assert not target.exists() and os.listdir(tmp_path) == []
    build_once(target, {"v": 1}, lambda folder: (folder / "ok.txt").write_text("done"))
    assert (target / "ok.txt").read_text() == "done" and (target / ".complete").is_file()


def test_foreign_non_empty_folder_is_not_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep")
    with pytest.raises(InputError):
        build_once(tmp_path / "mine", {"v": 1}, lambda folder: None)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep"


# --- transforms -------------------------------------------------------------------------------

def test_preprocess_resizes_crops_normalizes():
    pre = Preprocess(input_size=32, resize_short=36, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    image = np.full((40, 60, 3), 255, dtype=np.uint8)
    out = pre(image)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    assert np.allclose(out[0], 1.0) and np.allclose(out[1], 2.0)
    assert np.array_equal(pre(Image.fromarray(image)), out)  # PIL and array inputs agree


def test_preprocess_round_trips_through_dict():
    pre = Preprocess(224, 256)
    assert Preprocess.from_dict(pre.to_dict()) == pre
    with pytest.raises(InputError):
        Preprocess.from_dict({"input_size": 224})


@pytest.mark.parametrize("kwargs, field", [
    ({"input_size": 0, "resize_short": 8}, "input_size"),
    ({"input_size": 32, "resize_short": 16}, "resize_short"),
    ({"input_size": 32, "resize_short": 36, "mean": (0.5, 0.5)}, "mean"),
    ({"input_size": 32, "resize_short": 36, "std": (0.5, 0.0, 0.5)}, "std"),
])
def test_preprocess_rejects_bad_settings(kwargs, field):
    with pytest.raises(InputError) as err:
        Preprocess(**kwargs)
    assert err.value.field == field


def test_preprocess_rejects_non_rgb_arrays():
    with pytest.raises(InputError):
        Preprocess(8, 8)(np.zeros((8, 8), dtype=np.float32))


def test_load_rgb_names_unreadable_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputError, match="bad.png"):
        load_rgb(bad)
    with pytest.raises(InputError, match="missing.png"):
        load_rgb(tmp_path / "missing.png")


def test_train_augment_returns_normalized_tensor(digits):
    augment = train_augment(32, 36, mean=(0.5,) * 3, std=(0.5,) * 3)
    torch.manual_seed(0)
    out = augment(load_rgb(digits / "0" / "digit_0000.png"))
    assert isinstance(out, torch.Tensor) and out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0


# --- list readers + dataset over a real split ---------------------------------------------------

def test_list_dataset_over_split_digits(digits, tmp_path):
    split = split_imagenet_folder(digits, 0.2, 0.1, output_dir=tmp_path)
    dataset = ListDataset(digits, split.val_list, split.labels_file, Preprocess(32, 32))
    assert len(dataset) == split.counts["val"] and dataset.num_classes == 10
    image, label = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert dataset.items[0][0].split("/")[0] == str(label)


def test_read_labels_and_list_errors(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    assert read_labels(labels) == ["a", "b"]
    listing = tmp_path / "list.txt"
    listing.write_text("a/x 1.png 0\n\nb/y.png 1\n")
    assert read_list(listing, 2) == [("a/x 1.png", 0), ("b/y.png", 1)]

    listing.write_text("a/x.png 0\nb/y.png 2\n")
    with pytest.raises(InputError, match="line 2 .*0..1"):
        read_list(listing, 2)
    listing.write_text("a/x.png zero\n")
    with pytest.raises(InputError, match="line 1"):
        read_list(listing, 2)
    labels.write_text("a\na\n")
    with pytest.raises(InputError, match="unique"):
        read_labels(labels)
    with pytest.raises(InputError, match="does not exist"):
        read_labels(tmp_path / "none.txt")


def test_list_dataset_names_first_missing_file(tmp_path):
    (tmp_path / "labels.txt").write_text("a\n")
    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "here.png")
    (tmp_path / "list.txt").write_text("a/here.png 0\na/gone.png 0\na/gone2.png 0\n")
    with pytest.raises(InputError, match="gone.png"):
        ListDataset(tmp_path, tmp_path / "list.txt", tmp_path / "labels.txt", Preprocess(4, 4))
