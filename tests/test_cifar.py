"""CIFAR-10 data for PruneEA: batches format round trip, restricted unpickling, layout errors,
ImageNet-format folders, seeded augmentation/loaders, stratified split, embedded digits."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.cifar import (CIFAR10_MEAN, CIFAR10_STD, CifarArrays, CifarAugment, CifarNormalize,
                        CifarSet, cifar_loaders, default_cifar_folder, embedded_digits_cifar,
                        load_cifar, read_cifar_batches, split_train_val, write_cifar_batches,
                        write_cifar_set)
from core.errors import InputError

FIELD = "data.dataset_dir"
NAMES = ("airplane", "bird", "cat")


def random_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def tiny_set(n_train: int = 23, n_test: int = 7) -> CifarSet:
    rng = np.random.default_rng(0)
    return CifarSet(random_images(n_train, 1), rng.integers(0, 3, n_train),
                    random_images(n_test, 2), rng.integers(0, 3, n_test), NAMES)


def assert_same_set(a: CifarSet, b: CifarSet) -> None:
    assert a.label_names == b.label_names
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def dump(path: Path, obj, protocol: int = 4) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


@pytest.fixture
def batches(tmp_path) -> Path:
    return write_cifar_set(tmp_path / "cifar-10-batches-py", tiny_set(), n_train_batches=3)


# --- format round trip -------------------------------------------------------------------------

def test_written_folder_reads_back_equal(batches):
    expected = tiny_set()
    assert sorted(p.name for p in batches.iterdir()) == [
        "batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "test_batch"]
    got = read_cifar_batches(batches)
    assert_same_set(got, expected)
    assert got.train_images.dtype == np.uint8 and got.train_images.shape == (23, 32, 32, 3)
    assert got.train_labels.dtype == np.int64 and got.num_classes == 3
    assert got.summary() == {"num_classes": 3, "label_names": list(NAMES), "train": 23, "test": 7}


def test_batch_file_is_the_published_layout(batches):
    """b"data" rows are the R, G and B planes of one image, each 32×32 row-major."""
    with open(batches / "data_batch_1", "rb") as handle:
        raw = pickle.load(handle)
    image = tiny_set().train_images[0]
    assert raw[b"data"].dtype == np.uint8 and raw[b"data"].shape == (8, 3072)  # 23 → 8, 8, 7
    np.testing.assert_array_equal(raw[b"data"][0, :1024], image[:, :, 0].ravel())
    np.testing.assert_array_equal(raw[b"data"][0, 1024:2048], image[:, :, 1].ravel())
    assert raw[b"labels"] == [int(v) for v in tiny_set().train_labels[:8]]
    with open(batches / "batches.meta", "rb") as handle:
        assert pickle.load(handle)[b"label_names"] == [name.encode() for name in NAMES]


@pytest.mark.parametrize("protocol", [2, 3, 5])
def test_other_pickle_protocols_load(batches, protocol):
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "test_batch", "batches.meta"):
        with open(batches / name, "rb") as handle:
            dump(batches / name, pickle.load(handle), protocol)
    assert_same_set(read_cifar_batches(batches), tiny_set())


def test_numpy1_module_names_and_text_keys_load(batches):
    """Files written by numpy 1.x name numpy.core.multiarray; keys may be str instead of bytes."""
    with open(batches / "data_batch_1", "rb") as handle:
        batch = {key.decode(): value for key, value in pickle.load(handle).items()}
    payload = pickle.dumps(batch, protocol=2)
    old = b"numpy._core.multiarray\n_reconstruct"
    assert old in payload
    (batches / "data_batch_1").write_bytes(payload.replace(old, b"numpy.core.multiarray\n_reconstruct"))
    assert_same_set(read_cifar_batches(batches), tiny_set())


def test_numpy_integer_labels_load(batches):
    with open(batches / "test_batch", "rb") as handle:
        batch = pickle.load(handle)
    batch[b"labels"] = [np.int64(v) for v in batch[b"labels"]]
    dump(batches / "test_batch", batch)
    np.testing.assert_array_equal(read_cifar_batches(batches).test_labels, tiny_set().test_labels)


# --- restricted unpickling -----------------------------------------------------------------

class RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


class HugeArray:
    def __reduce__(self):  # numpy.ndarray called directly: would allocate without data
        return (np.ndarray, ((10**6, 3072), "u1"))


def test_malicious_pickle_is_refused_without_running(batches, tmp_path):
    marker = tmp_path / "pwned"
    dump(batches / "data_batch_2", {b"data": RunsCommand(f"touch {marker}"), b"labels": []})
    with pytest.raises(InputError) as info:
        read_cifar_batches(batches, field=FIELD)
    assert info.value.field == FIELD
    assert "data_batch_2" in str(info.value) and "system" in str(info.value)
    assert "refused" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [CallsEval(), HugeArray()], ids=["eval", "ndarray-call"])
def test_other_disallowed_calls_are_refused(batches, payload):
    dump(batches / "batches.meta", {b"label_names": payload})
    with pytest.raises(InputError) as info:
        read_cifar_batches(batches, field=FIELD)
    assert info.value.field == FIELD and "batches.meta" in str(info.value)


def test_codecs_encode_only_for_latin1(batches):
    payload = pickle.dumps({b"label_names": [b"x"]}, protocol=2)
    assert b"latin1" in payload
    (batches / "batches.meta").write_bytes(payload.replace(b"latin1", b"rot_13"))
    with pytest.raises(InputError, match="batches.meta"):
        read_cifar_batches(batches)


# --- layout errors -----------------------------------------------------------------------------

def _drop(name: str):
    return lambda folder: (folder / name).unlink()


def _rewrite(name: str, change):
    def apply(folder: Path) -> None:
        with open(folder / name, "rb") as handle:
            obj = pickle.load(handle)
        dump(folder / name, change(obj))
    return apply


BROKEN = {
    "no test_batch": (_drop("test_batch"), "test_batch"),
    "no meta": (_drop("batches.meta"), "batches.meta"),
    "no data_batch_1": (_drop("data_batch_1"), "data_batch_1"),
    "gap": (_drop("data_batch_2"), "missing data_batch_2"),
    "garbage": (lambda f: (f / "data_batch_1").write_bytes(b"not a pickle at all"),
                "data_batch_1 is not a readable CIFAR pickle"),
    "truncated": (lambda f: (f / "test_batch").write_bytes((f / "test_batch").read_bytes()[:100]),
                  "test_batch is not a readable"),
    "row length": (_rewrite("data_batch_1", lambda b: {**b, b"data": np.zeros((8, 100), np.uint8)}),
                   "data_batch_1: 'data' must be a uint8 array of shape [N, 3072]"),
    "dtype": (_rewrite("data_batch_3", lambda b: {**b, b"data": b[b"data"].astype(np.float32)}),
              "data_batch_3: 'data' must be a uint8"),
    "label range": (_rewrite("test_batch", lambda b: {**b, b"labels": [7] * len(b[b"labels"])}),
                    "has label 7; allowed are 0..2"),
    "label count": (_rewrite("data_batch_2", lambda b: {**b, b"labels": b[b"labels"][:-1]}),
                    "data_batch_2: 'labels' must be 8 integers"),
    "no labels key": (_rewrite("data_batch_1", lambda b: {b"data": b[b"data"]}), "'data' and 'labels'"),
    "meta names": (_rewrite("batches.meta", lambda m: {b"num_vis": 3072}), "label_names"),
    "meta repeated": (_rewrite("batches.meta", lambda m: {b"label_names": [b"a", b"a", b"b"]}), "unique"),
    "meta type": (_rewrite("batches.meta", lambda m: [b"a", b"b", b"c"]), "must hold a dict"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_layout_names_field_and_file(batches, case):
    breaks, expected = BROKEN[case]
    breaks(batches)
    with pytest.raises(InputError) as info:
        read_cifar_batches(batches, field=FIELD)
    assert info.value.field == FIELD
    assert expected in str(info.value)


def test_writer_rejects_bad_arrays(tmp_path):
    good = tiny_set()
    with pytest.raises(InputError, match="images"):
        write_cifar_batches(tmp_path, good.train_images[:, :16], good.train_labels, NAMES,
                            test_images=good.test_images, test_labels=good.test_labels)
    with pytest.raises(InputError, match="label 5"):
        write_cifar_batches(tmp_path, good.train_images, np.full(23, 5), NAMES,
                            test_images=good.test_images, test_labels=good.test_labels)
    with pytest.raises(InputError, match="n_train_batches"):
        write_cifar_batches(tmp_path, good.train_images, good.train_labels, NAMES, 0,
                            test_images=good.test_images, test_labels=good.test_labels)


# --- load_cifar: layout detection ----------------------------------------------------------

def test_load_cifar_finds_batches_folder_or_its_parent(batches):
    assert_same_set(load_cifar(batches), tiny_set())
    assert_same_set(load_cifar(str(batches.parent)), tiny_set())  # the folder the archive unpacks into


def make_imagefolder(root: Path, per_class: int = 10) -> Path:
    """Three classes of solid-colour images of assorted sizes; class c has red value 50·(c+1)."""
    for label, name in enumerate(("cat", "dog", "frog")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = [(48, 40), (32, 32), (20, 64)][i % 3]
            Image.new("RGB", size, (50 * (label + 1), 7 * i, 3)).save(root / name / f"img_{i:02d}.png")
    return root


def test_load_cifar_reads_imagenet_format_folder(tmp_path):
    root = make_imagefolder(tmp_path / "pets")
    before = sorted(str(p) for p in root.rglob("*"))
    got = load_cifar(root, seed=3, test_fraction=0.2, field=FIELD)
    assert got.label_names == ("cat", "dog", "frog")
    assert got.train_images.shape == (24, 32, 32, 3) and got.test_images.shape == (6, 32, 32, 3)
    assert np.bincount(got.test_labels).tolist() == [2, 2, 2]
    for images, labels in ((got.train_images, got.train_labels), (got.test_images, got.test_labels)):
        assert (images[:, :, :, 0] == (50 * (labels + 1))[:, None, None]).all()
    assert_same_set(load_cifar(root, seed=3, test_fraction=0.2), got)
    assert sorted(str(p) for p in root.rglob("*")) == before  # the user's folder is left alone


def test_imagenet_folder_errors_name_the_field(tmp_path):
    root = make_imagefolder(tmp_path / "pets")
    (root / "dog" / "img_03.png").write_bytes(b"not a png")
    with pytest.raises(InputError) as info:
        load_cifar(root, field=FIELD)
    assert info.value.field == FIELD and "img_03.png" in str(info.value)
    assert str(info.value).startswith(f"{FIELD}: image ")  # the helper's own field is dropped

    small = make_imagefolder(tmp_path / "small", per_class=2)
    with pytest.raises(InputError, match="test share") as info:
        load_cifar(small, test_fraction=0.2, field=FIELD)
    assert info.value.field == FIELD


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_load_cifar_rejects_what_is_neither_layout(tmp_path, kind):
    path = tmp_path / "user_input_dir"
    if kind == "file":
        path.write_text("hello")
    elif kind == "empty":
        path.mkdir()
    with pytest.raises(InputError) as info:
        load_cifar(path, field="data.cifar_dir")
    assert info.value.field == "data.cifar_dir" and path.name in str(info.value)


# --- augmentation and loaders --------------------------------------------------------------

def test_augmentation_is_seeded_and_keeps_shape():
    image = torch.from_numpy(random_images(1, 9)[0].transpose(2, 0, 1).copy())
    augment_a, augment_b = CifarAugment(seed=5), CifarAugment(seed=5)
    run_a = [augment_a(image) for _ in range(24)]
    run_b = [augment_b(image) for _ in range(24)]
    assert all(torch.equal(a, b) for a, b in zip(run_a, run_b))
    assert all(out.shape == (3, 32, 32) and out.dtype == torch.float32 for out in run_a)
    assert len({out.numpy().tobytes() for out in run_a}) > 1  # crops/flips actually vary
    other = CifarAugment(seed=6)
    assert any(not torch.equal(a, other(image)) for a in run_a)


def test_augmented_image_is_a_padded_crop_maybe_flipped():
    image = torch.from_numpy(random_images(1, 4)[0].transpose(2, 0, 1).copy())
    padded = torch.zeros(3, 40, 40, dtype=torch.uint8)
    padded[:, 4:36, 4:36] = image
    windows = [padded[:, t:t + 32, l:l + 32] for t in range(9) for l in range(9)]
    windows += [w.flip(-1) for w in windows]
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
    augment = CifarAugment(seed=0)
    for _ in range(10):
        raw = torch.round((augment(image) * std + mean) * 255).to(torch.uint8)
        assert any(torch.equal(raw, w) for w in windows)
    plain = CifarAugment(seed=0, padding=0, flip=False)
    assert torch.allclose(plain(image), CifarNormalize()(image))


def _epoch(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_loaders_are_deterministic_per_seed():
    images, labels = random_images(42, 3), np.arange(42) % 10
    train, val = (images[:34], labels[:34]), (images[34:], labels[34:])
    loader_a, val_a = cifar_loaders(train, val, batch_size=8, seed=1)
    loader_b, _ = cifar_loaders(train, val, batch_size=8, seed=1)
    loader_c, _ = cifar_loaders(train, val, batch_size=8, seed=2)
    epoch_a, epoch_b, epoch_c = _epoch(loader_a), _epoch(loader_b), _epoch(loader_c)
    assert epoch_a[0].shape == (32, 3, 32, 32)  # 34 images, batch 8: the partial batch is dropped
    assert torch.equal(epoch_a[0], epoch_b[0]) and torch.equal(epoch_a[1], epoch_b[1])
    assert not torch.equal(epoch_a[0], epoch_c[0])
    assert not torch.equal(_epoch(loader_a)[0], epoch_a[0])  # the next epoch draws anew

    x_val, y_val = _epoch(val_a)  # evaluation: in order, normalization only
    assert y_val.tolist() == labels[34:].tolist()
    expected = torch.stack([CifarNormalize()(torch.from_numpy(im.transpose(2, 0, 1).copy()))
                            for im in images[34:]])
    assert torch.allclose(x_val, expected)

    plain, _ = cifar_loaders(train, val, batch_size=8, seed=1, augment=False)
    x_plain, _ = _epoch(plain)  # shuffled, but every image exactly as normalized, no augmentation
    dataset = CifarArrays(*train)
    lookup = {dataset[i][0].numpy().tobytes() for i in range(len(dataset))}
    assert all(x.numpy().tobytes() in lookup for x in x_plain)


def test_loader_arguments_are_checked():
    pair = (random_images(4, 0), np.zeros(4, dtype=np.int64))
    with pytest.raises(InputError, match="batch_size"):
        cifar_loaders(pair, pair, batch_size=0, seed=0)
    with pytest.raises(InputError, match="labels"):
        CifarArrays(pair[0], np.zeros(3, dtype=np.int64))


# --- held-out split ----------------------------------------------------------------------------

def test_split_is_stratified_disjoint_and_seeded():
    labels = np.random.default_rng(0).permutation(np.repeat([0, 1, 2], [10, 20, 30]))
    train, val = split_train_val(labels, 0.25, seed=7)
    assert np.bincount(labels[val]).tolist() == [2, 5, 7]  # floor(n · 0.25) per class
    assert not set(train) & set(val) and sorted(np.concatenate([train, val])) == list(range(60))
    again_train, again_val = split_train_val(labels, 0.25, seed=7)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    assert not np.array_equal(val, split_train_val(labels, 0.25, seed=8)[1])


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, float("nan"), "0.2", True])
def test_split_rejects_bad_fractions(fraction):
    with pytest.raises(InputError) as info:
        split_train_val(np.arange(20) % 2, fraction, seed=0)
    assert info.value.field == "data.val_fraction"


def test_split_needs_a_validation_image():
    with pytest.raises(InputError, match="no class"):
        split_train_val(np.array([0, 1, 2]), 0.3, seed=0, field="prune.val_fraction")


# --- embedded digits -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits() -> CifarSet:
    return embedded_digits_cifar(seed=0)


def test_embedded_digits_shapes_and_labels(digits):
    assert digits.train_images.shape == (1497, 32, 32, 3) and digits.test_images.shape == (300, 32, 32, 3)
    assert digits.train_images.dtype == np.uint8 and digits.train_labels.dtype == np.int64
    assert digits.label_names == tuple(str(d) for d in range(10))
    assert np.bincount(digits.test_labels).tolist() == [30] * 10
    assert np.bincount(digits.train_labels, minlength=10).sum() == 1497
    assert np.array_equal(digits.train_images[..., 0], digits.train_images[..., 2])  # gray as RGB
    assert digits.train_images.max() > 200 and digits.train_images.min() == 0


def test_embedded_digits_are_seeded(digits):
    assert_same_set(embedded_digits_cifar(seed=0), digits)
    assert not np.array_equal(embedded_digits_cifar(seed=1).test_images, digits.test_images)
    assert_same_set(load_cifar(None, seed=0), digits)


def test_default_folder_is_the_embedded_set_in_batches_format(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("SPNAS_HOME", str(tmp_path))
    folder = default_cifar_folder(seed=0)
    assert folder == tmp_path.resolve() / "data" / "digits_cifar_32_seed0"
    assert (folder / "data_batch_5").is_file()
    assert_same_set(load_cifar(folder), digits)
    assert default_cifar_folder(seed=0) == folder  # built once, reused


def test_photo_digits_keep_labels_and_split_and_are_seeded() -> None:
    from data.cifar import embedded_digits_cifar, embedded_photo_digits_cifar

    from data.cifar import PHOTO_RENDERINGS as k

    plain, photo = embedded_digits_cifar(0), embedded_photo_digits_cifar(0)
    assert photo.train_images.shape == (k * len(plain.train_images), 32, 32, 3)
    assert photo.test_images.shape == (k * 300, 32, 32, 3)
    assert np.array_equal(photo.train_labels, np.tile(plain.train_labels, k))
    assert np.array_equal(photo.test_labels, np.tile(plain.test_labels, k))
    assert np.array_equal(photo.train_images, embedded_photo_digits_cifar(0).train_images)
    assert not np.array_equal(photo.train_images, embedded_photo_digits_cifar(1).train_images)
    # colour photographs behind the strokes: the plain set is grey on black, this one is neither
    spread = photo.train_images.reshape(len(photo.train_images), -1, 3).std(axis=1).mean()
    assert (plain.train_images[..., 0] == plain.train_images[..., 2]).all()
    assert (photo.train_images[..., 0] != photo.train_images[..., 2]).mean() > 0.5 and spread > 10
    assert (plain.train_images.reshape(len(plain.train_images), -1).min(axis=1) == 0).mean() > 0.9
    assert (photo.train_images.reshape(len(photo.train_images), -1).min(axis=1) == 0).mean() < 0.2


def test_photo_digit_renderings_multiply_the_set_and_keep_test_digits_unseen(monkeypatch) -> None:
    import data.cifar as cifar
    from data.digits import load_digit_arrays

    monkeypatch.setattr(cifar, "PHOTO_RENDERINGS", 1)
    one = cifar.embedded_photo_digits_cifar(0)
    monkeypatch.setattr(cifar, "PHOTO_RENDERINGS", 3)
    three = cifar.embedded_photo_digits_cifar(0)
    assert len(three.train_images) == 3 * len(one.train_images) and len(three.test_images) == 900
    assert np.array_equal(three.train_labels, np.tile(one.train_labels, 3))
    assert np.array_equal(three.train_images[:len(one.train_images)], one.train_images)  # rendering 0 = the one
    assert not np.array_equal(three.train_images[:10], three.train_images[len(one.train_images):][:10])
    # Every rendering of a digit is on one side of the split: paint each digit's index instead.
    digits, _ = load_digit_arrays()
    index = {d.tobytes(): i for i, d in enumerate(digits)}

    def painted(digit, backgrounds, rng):
        i = index[digit.tobytes()]
        return np.array([i % 256, i // 256, 0], np.uint8)[None, None].repeat(32, 0).repeat(32, 1)

    monkeypatch.setattr(cifar, "_photo_digit", painted)
    ids = cifar.embedded_photo_digits_cifar(0)
    digit_of = lambda images: set((images[:, 0, 0, 0] + 256 * images[:, 0, 0, 1].astype(int)).tolist())  # noqa: E731
    train, test = digit_of(ids.train_images), digit_of(ids.test_images)
    assert len(train) == len(one.train_images) and len(test) == 300 and not train & test
    monkeypatch.setattr(cifar, "PHOTO_RENDERINGS", 0)
    with pytest.raises(InputError, match="PHOTO_RENDERINGS"):
        cifar.embedded_photo_digits_cifar(0)


def test_unknown_embedded_set_names_the_field() -> None:
    from data.cifar import default_cifar_folder

    with pytest.raises(InputError, match="data.embedded"):
        default_cifar_folder(0, "cifar100")
