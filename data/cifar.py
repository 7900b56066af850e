"""CIFAR-10 data for PruneEA: the python `cifar-10-batches-py` format, read safely, and loaders.

Layout (as published): `data_batch_1` .. `data_batch_5`, `test_batch` and `batches.meta`, each a
pickled dict. A batch holds b"data" (uint8 [N, 3072]: the red, green and blue 32×32 planes, each
row-major) and b"labels" (N ints); the meta file holds b"label_names". The files are pickles a
user hands us, so they are read with an unpickler that can build only dicts, lists, bytes,
numbers and numpy arrays; anything else (os.system, eval, ...) is refused before it runs.

`load_cifar` returns a `CifarSet` (uint8 HWC images + int64 labels, train and test) from a
batches folder, from an ImageNet-format folder (one sub-folder per class, images brought to
32×32), or, with no folder given, from the embedded digits (no download). `split_train_val`
holds out a stratified, seeded validation share of the training set for scoring candidates;
the test part stays for final numbers. `cifar_loaders` wraps arrays in DataLoaders with the
standard CIFAR augmentation (pad 4, random 32 crop, horizontal flip) drawn from seeded
generators, so the same seed gives the same batches.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.errors import InputError
from core.paths import data_cache_dir
from core.seeds import derive_seed
from data._build import build_once
from data.digits import load_digit_arrays, upscale_digit
from data.imagefolder import read_labels, read_list
from data.split import split_imagenet_folder
from data.transforms import center_crop, load_rgb, resize_short_side

IMAGE_SIZE = 32
ROW_LENGTH = 3 * IMAGE_SIZE * IMAGE_SIZE  # 3072 bytes per image in a batch file
FOLDER_NAME = "cifar-10-batches-py"
META_NAME = "batches.meta"
TEST_NAME = "test_batch"
TRAIN_PREFIX = "data_batch_"
PICKLE_PROTOCOL = 4  # bytes stay bytes (protocol 2 would route them through _codecs.encode)

# Per-channel statistics of the CIFAR-10 training set (the true pixel std, not the often
# quoted 0.2023/0.1994/0.2010, which is a std of per-image means).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

EMBEDDED_TEST_PER_CLASS = 30  # 10 digit classes → 300 test, 1,497 train of sklearn's 1,797

Pair = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True, eq=False)
class CifarSet:
    """A CIFAR-like set in memory: images uint8 [N, 32, 32, 3] (RGB, HWC), labels int64 [N]."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    label_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def summary(self) -> dict[str, Any]:
        """Small JSON-friendly description for logs and tracking."""
        return {"num_classes": self.num_classes, "label_names": list(self.label_names),
                "train": int(len(self.train_labels)), "test": int(len(self.test_labels))}


# --- restricted unpickling ------------------------------------------------------------------

def _latin1_encode(text: object, encoding: object = "latin1") -> bytes:
    """What protocol-2 pickles call to rebuild a bytes object; only the latin-1 case exists."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only as encode(<str>, 'latin1')")
    return text.encode("latin-1")


class _NdarrayType:
    """Stands in for numpy.ndarray inside a pickle: it may only be handed to `_reconstruct`,
    never called, so a file cannot allocate an array larger than the bytes it carries."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayType()


def _numpy_globals() -> dict[tuple[str, str], Any]:
    # Take the callables from numpy's own reductions rather than private module paths, and
    # accept both the numpy 2 (`numpy._core`) and numpy 1 (`numpy.core`) names files carry.
    reconstruct = np.zeros(1).__reduce__()[0]          # protocols 2-4 (and Python 2 files)
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]       # protocol 5: array view of in-band bytes
    scalar = np.int64(0).__reduce__()[0]               # numpy integer labels

    def empty_array(subtype: object, shape: object, typecode: object) -> np.ndarray:
        # numpy pickles an array as _reconstruct(ndarray, (0,), b"b") + __setstate__(data),
        # and __setstate__ checks that the data has exactly the stated size.
        if subtype is not _NDARRAY or shape != (0,):
            raise pickle.UnpicklingError("_reconstruct is allowed only as _reconstruct(ndarray, (0,), ...)")
        return reconstruct(np.ndarray, (0,), typecode)

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): np.dtype}
    for package in ("numpy._core", "numpy.core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = empty_array
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


_ALLOWED_GLOBALS = _numpy_globals()


class _CifarUnpickler(pickle.Unpickler):
    """Builds only containers, bytes, numbers and numpy arrays; every other global is refused."""

    def __init__(self, handle: io.BufferedIOBase, path: Path, field: str) -> None:
        super().__init__(handle, encoding="bytes")  # Python 2 str → bytes, as the originals need
        self._path, self._field = path, field

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise InputError(self._field, f"{self._path} asks to load {module}.{name}; a CIFAR batch "
                                          "holds only dicts, lists, bytes, numbers and numpy arrays, "
                                          "so the file was refused without running it")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _load_pickle(path: Path, field: str) -> Any:
    try:
        with open(path, "rb") as handle:
            return _CifarUnpickler(handle, path, field).load()
    except InputError:
        raise
    except OSError as exc:
        raise InputError(field, f"cannot read {path} ({exc.strerror or type(exc).__name__})") from exc
    except Exception as exc:  # a corrupt pickle raises many types (EOFError, ValueError, ...)
        raise InputError(field, f"{path} is not a readable CIFAR pickle "
                                f"({type(exc).__name__}: {exc})") from exc


# --- reading the batches folder ---------------------------------------------------------------

def read_cifar_batches(folder: Path | str, field: str = "data.cifar_dir") -> CifarSet:
    """Read a `cifar-10-batches-py` folder (data_batch_1..k, test_batch, batches.meta)."""
    folder = _existing_dir(folder, field)
    label_names = _read_meta(folder / META_NAME, field)
    train = [_read_batch(path, len(label_names), field) for path in _train_batch_paths(folder, field)]
    test_path = folder / TEST_NAME
    if not test_path.is_file():
        raise InputError(field, f"{folder} has no {TEST_NAME}; {_LAYOUT}")
    test_images, test_labels = _read_batch(test_path, len(label_names), field)
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    for part, labels in (("training batches", train_labels), (TEST_NAME, test_labels)):
        if len(labels) == 0:
            raise InputError(field, f"the {part} in {folder} hold no images")
    return CifarSet(train_images, train_labels, test_images, test_labels, label_names)


_LAYOUT = (f"expected the python CIFAR-10 layout: {TRAIN_PREFIX}1..{TRAIN_PREFIX}5, {TEST_NAME} "
           f"and {META_NAME}")


def _train_batch_paths(folder: Path, field: str) -> list[Path]:
    numbers = sorted(int(p.name[len(TRAIN_PREFIX):]) for p in folder.glob(f"{TRAIN_PREFIX}*")
                     if p.name[len(TRAIN_PREFIX):].isdigit() and p.is_file())
    if not numbers:
        raise InputError(field, f"{folder} has no {TRAIN_PREFIX}1; {_LAYOUT}")
    missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
    if missing:
        names = ", ".join(f"{TRAIN_PREFIX}{n}" for n in missing)
        raise InputError(field, f"{folder} is missing {names} (found up to {TRAIN_PREFIX}{numbers[-1]}); "
                                f"{_LAYOUT}")
    return [folder / f"{TRAIN_PREFIX}{n}" for n in numbers]


def _read_meta(path: Path, field: str) -> tuple[str, ...]:
    if not path.is_file():
        raise InputError(field, f"{path.parent} has no {META_NAME}; {_LAYOUT}")
    meta = _text_keys(_load_pickle(path, field), path, field)
    names = meta.get("label_names")
    if not isinstance(names, (list, tuple)) or not names:
        raise InputError(field, f"{path} must hold a non-empty list 'label_names' (one class name "
                                f"per label id), got {type(names).__name__}")
    if not all(isinstance(name, (bytes, str)) for name in names):
        raise InputError(field, f"{path}: every entry of 'label_names' must be text")
    decoded = tuple(_as_text(name).strip() for name in names)
    if not all(decoded) or len(set(decoded)) != len(decoded):
        raise InputError(field, f"{path}: 'label_names' must be unique and non-empty, got {list(decoded)}")
    return decoded


def _read_batch(path: Path, num_classes: int, field: str) -> Pair:
    batch = _text_keys(_load_pickle(path, field), path, field)
    if "data" not in batch or "labels" not in batch:
        raise InputError(field, f"{path} must hold the keys 'data' and 'labels' (CIFAR-10 layout), "
                                f"found {sorted(batch)}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != ROW_LENGTH:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) \
            else type(data).__name__
        raise InputError(field, f"{path}: 'data' must be a uint8 array of shape [N, {ROW_LENGTH}] "
                                f"(3 planes of {IMAGE_SIZE}×{IMAGE_SIZE}), got {got}")
    labels = _label_array(batch["labels"], len(data), num_classes, f"{path}: 'labels'", field)
    images = data.reshape(len(data), 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _label_array(values: Any, count: int, num_classes: int, what: str, field: str) -> np.ndarray:
    try:
        array = np.asarray(values)
    except Exception:  # ragged or exotic objects
        array = np.asarray([], dtype=object)
    if array.ndim != 1 or len(array) != count or (count and array.dtype.kind not in "iu"):
        raise InputError(field, f"{what} must be {count} integers (one per image), got "
                                f"{array.dtype} values of shape {array.shape}")
    array = array.astype(np.int64)
    bad = array[(array < 0) | (array >= num_classes)]
    if len(bad):
        raise InputError(field, f"{what} has label {int(bad[0])}; allowed are 0..{num_classes - 1} "
                                f"(one per entry of label_names)")
    return array


def _text_keys(obj: Any, path: Path, field: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InputError(field, f"{path} must hold a dict, got {type(obj).__name__}")
    return {_as_text(key): value for key, value in obj.items() if isinstance(key, (bytes, str))}


def _as_text(value: bytes | str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


# --- writing the batches folder ---------------------------------------------------------------

def write_cifar_batches(root: Path | str, images: np.ndarray, labels: Sequence[int] | np.ndarray,
                        label_names: Sequence[str], n_train_batches: int = 5, *,
                        test_images: np.ndarray, test_labels: Sequence[int] | np.ndarray) -> Path:
    """Write `root` in the python CIFAR-10 layout: `images`/`labels` split in order over
    data_batch_1..n_train_batches, the test arrays as test_batch, names in batches.meta."""
    names = [str(name) for name in label_names]
    if not names or len(set(names)) != len(names) or not all(n.strip() for n in names):
        raise InputError("label_names", f"must be unique non-empty names, got {names}")
    if not isinstance(n_train_batches, int) or isinstance(n_train_batches, bool) or n_train_batches < 1:
        raise InputError("n_train_batches", f"must be a positive integer, got {n_train_batches!r}")
    images = _check_images(images, "images")
    test_images = _check_images(test_images, "test_images")
    labels = _label_array(labels, len(images), len(names), "labels", "labels")
    test_labels = _label_array(test_labels, len(test_images), len(names), "test_labels", "test_labels")
    if len(images) < n_train_batches:
        raise InputError("n_train_batches", f"{n_train_batches} batches need at least as many "
                                            f"training images, got {len(images)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    chunks = np.array_split(np.arange(len(images)), n_train_batches)
    for number, index in enumerate(chunks, start=1):
        _dump(root / f"{TRAIN_PREFIX}{number}", _batch_dict(
            images[index], labels[index], f"training batch {number} of {n_train_batches}", int(index[0])))
    _dump(root / TEST_NAME, _batch_dict(test_images, test_labels, "testing batch 1 of 1", 0))
    _dump(root / META_NAME, {b"num_cases_per_batch": int(len(chunks[0])), b"num_vis": ROW_LENGTH,
                             b"label_names": [name.encode("utf-8") for name in names]})
    return root


def write_cifar_set(root: Path | str, cifar: CifarSet, n_train_batches: int = 5) -> Path:
    """`write_cifar_batches` for a whole CifarSet."""
    return write_cifar_batches(root, cifar.train_images, cifar.train_labels, cifar.label_names,
                               n_train_batches, test_images=cifar.test_images,
                               test_labels=cifar.test_labels)


def _batch_dict(images: np.ndarray, labels: np.ndarray, title: str, first: int) -> dict[bytes, Any]:
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), ROW_LENGTH)
    return {b"batch_label": title.encode("ascii"), b"labels": [int(v) for v in labels],
            b"data": np.ascontiguousarray(rows),
            b"filenames": [f"image_{first + i:06d}.png".encode("ascii") for i in range(len(images))]}


def _dump(path: Path, obj: Any) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=PICKLE_PROTOCOL)


def _check_images(images: Any, field: str) -> np.ndarray:
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise InputError(field, f"must be a uint8 array of shape [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3] "
                                f"(RGB, HWC), got {array.dtype} of shape {array.shape}")
    return array


# --- the embedded default and the front door ------------------------------------------------

def embedded_digits_cifar(seed: int = 0) -> CifarSet:
    """sklearn's 1,797 real digits as 32×32 RGB, 30 per class held out as test (1,497 / 300)."""
    digits, targets = load_digit_arrays()
    gray = np.stack([upscale_digit(digit, IMAGE_SIZE) for digit in digits])
    images = np.repeat(gray[..., None], 3, axis=3)
    train, test = _stratified_split(targets, lambda n: EMBEDDED_TEST_PER_CLASS, _check_seed(seed, "seed"))
    names = tuple(str(label) for label in range(int(targets.max()) + 1))
    return CifarSet(images[train], targets[train], images[test], targets[test], names)


# Digits on photographs (embedded_photo_digits_cifar). Size: the digit's side in pixels (of 32),
# placed anywhere it fits. Alpha: how strongly the stroke replaces the patch. Background contrast:
# the share of the photograph's own contrast kept (deviations from the patch mean scaled by a
# factor from this range; 1 = as photographed). Ink: each channel in the INK_BAND values at the
# far end from the patch — light ink (255-band..255) unless the patch's mean brightness is at
# least DARK_INK_ABOVE, then dark ink (0..band). Changing any of them names a new cache folder.
PHOTO_DIGIT_SIZE = (16, 30)
PHOTO_DIGIT_ALPHA = (0.6, 1.0)
PHOTO_BACKGROUND_CONTRAST = (0.0, 1.0)
PHOTO_INK_BAND = 60
PHOTO_DARK_INK_ABOVE = 180
# Renderings of each digit (each on its own patch, size, place and ink); a digit and all its
# renderings stay on one side of the train/test split, so test digits are never seen in training.
PHOTO_RENDERINGS = 3


def _photo_digit_settings() -> dict[str, Any]:
    return {"size": list(PHOTO_DIGIT_SIZE), "alpha": list(PHOTO_DIGIT_ALPHA),
            "background_contrast": list(PHOTO_BACKGROUND_CONTRAST), "ink_band": PHOTO_INK_BAND,
            "dark_ink_above": PHOTO_DARK_INK_ABOVE, "renderings": PHOTO_RENDERINGS}


def embedded_photo_digits_cifar(seed: int = 0) -> CifarSet:
    """A harder embedded set: the same real digits (same labels, same train/test split), each at a
    random size (PHOTO_DIGIT_SIZE) and place on a random 32×32 patch of scikit-image's bundled
    photographs, the patch's contrast damped by a random factor, the stroke in a random colour
    and opacity on the far side of the patch's brightness (the PHOTO_* constants above).

    Tuned with `benchmarks/embedded_difficulty.py --kind photo_digits` (ResNet-20 after prune-ea's
    default base training: 10 epochs, batch 64, lr 0.1 cosine; test part of 900 renderings of
    300 held-out digits). The settings above: the full network 0.829 / 0.900 at seeds 0 / 1, the
    same network narrowed uniformly to 1/10 of the MACs (x0.31 of every width) 0.707 / 0.728, and to
    1/3 of the MACs (x0.58) 0.841 at seed 0 — so capacity shows below ~1/3 of the MACs (plain
    digits: 0.95+ even at 1/3). Earlier settings, one rendering each: 26-30 px, opacity 0.75-1,
    contrast 0-0.6 gave the full network 0.750 / 0.733 and the x0.58 one *more* (0.880 / 0.783),
    as accuracy then followed how soon training took off; three renderings of those gave 0.953
    (x0.58: 0.944), and with opacity 0.6-1 and contrast 0-1 0.929: too easy. 14-30 px, opacity
    0.45-0.95 and untouched photographs left it at chance (0.11) with one rendering."""
    from data.faces import load_backgrounds  # the photographs the face canvases use too

    seed = _check_seed(seed, "seed")
    digits, targets = load_digit_arrays()
    backgrounds = load_backgrounds()
    rng = np.random.default_rng(derive_seed(seed, "data.photo_digits"))
    copies = PHOTO_RENDERINGS
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise InputError("PHOTO_RENDERINGS", f"must be a positive integer, got {copies!r}")
    # Rendering r of digit i is image r * n + i (the first rendering draws what a single one did).
    n = len(digits)
    images = np.empty((copies * n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for r in range(copies):
        for i, digit in enumerate(digits):
            images[r * n + i] = _photo_digit(digit, backgrounds, rng)
    train, test = _stratified_split(targets, lambda n: EMBEDDED_TEST_PER_CLASS, seed)
    train, test = (np.concatenate([part + r * n for r in range(copies)]) for part in (train, test))
    labels = np.tile(targets, copies)
    names = tuple(str(label) for label in range(int(targets.max()) + 1))
    return CifarSet(images[train], labels[train], images[test], labels[test], names)


def _photo_digit(digit: np.ndarray, backgrounds: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One rendering of a digit on a photo patch (embedded_photo_digits_cifar, the PHOTO_* settings)."""
    photo = backgrounds[rng.integers(len(backgrounds))]
    y, x = rng.integers(photo.shape[0] - IMAGE_SIZE), rng.integers(photo.shape[1] - IMAGE_SIZE)
    patch = photo[y:y + IMAGE_SIZE, x:x + IMAGE_SIZE].astype(np.float32)
    mean = patch.mean()
    patch = mean + (patch - mean) * rng.uniform(*PHOTO_BACKGROUND_CONTRAST)
    size = int(rng.integers(PHOTO_DIGIT_SIZE[0], PHOTO_DIGIT_SIZE[1] + 1))
    stroke = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    top, left = rng.integers(IMAGE_SIZE - size + 1, size=2)
    stroke[top:top + size, left:left + size] = upscale_digit(digit, size) / 255.0
    alpha = stroke[..., None] * rng.uniform(*PHOTO_DIGIT_ALPHA)
    ink = rng.uniform(0, PHOTO_INK_BAND, size=3)
    ink = ink if mean >= PHOTO_DARK_INK_ABOVE else 255.0 - ink  # the far side of the patch's brightness
    return np.clip(np.rint(patch * (1 - alpha) + ink * alpha), 0, 255).astype(np.uint8)


EMBEDDED = {"digits": embedded_digits_cifar, "photo_digits": embedded_photo_digits_cifar}


def default_cifar_folder(seed: int = 0, kind: str = "digits") -> Path:
    """An embedded set (`kind`: digits | photo_digits) written as a cifar-10-batches-py folder in
    the data cache (built once)."""
    seed = _check_seed(seed, "seed")
    if kind not in EMBEDDED:
        raise InputError("data.embedded", f"must be one of {sorted(EMBEDDED)}, got {kind!r}")
    params = {"kind": f"{kind}_cifar", "seed": seed, "test_per_class": EMBEDDED_TEST_PER_CLASS}
    name = f"digits_cifar_32_seed{seed}"
    if kind == "photo_digits":  # a folder per generator setting: one built with others is never reused
        params["generator"] = _photo_digit_settings()
        digest = hashlib.sha256(json.dumps(params["generator"], sort_keys=True).encode()).hexdigest()[:8]
        name = f"{kind}_{digest}_cifar_32_seed{seed}"
    return build_once(data_cache_dir() / name, params, lambda tmp: write_cifar_set(tmp, EMBEDDED[kind](seed)))


def load_cifar(source: Path | str | None = None, *, seed: int = 0, test_fraction: float = 0.2,
               field: str = "data.cifar_dir") -> CifarSet:
    """A CifarSet from `source`, recognised by its layout:

    - None: the embedded digits (`embedded_digits_cifar(seed)`);
    - a `cifar-10-batches-py` folder, or a folder holding one;
    - an ImageNet-format folder (`<class>/<image>`): each image's short side resized to 32 and
      center-cropped; per class, a seeded floor(n·test_fraction) share becomes the test part
      (the split step's rule). All images are held in memory (3 KB each).
    """
    if source is None:
        return embedded_digits_cifar(seed)
    folder = _existing_dir(source, field)
    batches = _batches_folder(folder)
    if batches is not None:
        return read_cifar_batches(batches, field)
    if any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir()):
        return _read_imagefolder(folder, seed, test_fraction, field)
    raise InputError(field, f"{folder} is neither a {FOLDER_NAME} folder ({TRAIN_PREFIX}1..5, "
                            f"{TEST_NAME}, {META_NAME}) nor an ImageNet-format folder "
                            "(<class>/<image>)")


def _batches_folder(folder: Path) -> Path | None:
    for candidate in (folder, folder / FOLDER_NAME):
        if any((candidate / name).exists() for name in (META_NAME, TEST_NAME, f"{TRAIN_PREFIX}1")):
            return candidate
    return None


def _read_imagefolder(folder: Path, seed: int, test_fraction: float, field: str) -> CifarSet:
    if not isinstance(test_fraction, (int, float)) or isinstance(test_fraction, bool) \
            or not 0 < test_fraction < 1:
        raise InputError("test_fraction", f"must be a number with 0 < test_fraction < 1, got {test_fraction!r}")
    with tempfile.TemporaryDirectory(prefix="spnas-cifar-split-") as tmp:
        try:  # the split step's validation and per-class rule; its lists go to a scratch folder
            split = split_imagenet_folder(folder, val_value=test_fraction, test_value=0.0,
                                          seed=_check_seed(seed, "seed"), output_dir=Path(tmp))
            names = read_labels(split.labels_file)
            train_items = read_list(split.train_list, len(names))
            test_items = read_list(split.val_list, len(names))
        except InputError as exc:
            raise _for_field(exc, field) from exc
    if not test_items:
        raise InputError(field, f"{folder}: no class has enough images for a test share of "
                                f"{test_fraction} (floor(n·{test_fraction}) is 0 for every class)")
    train_images, train_labels = _load_items(folder, train_items, field)
    test_images, test_labels = _load_items(folder, test_items, field)
    return CifarSet(train_images, train_labels, test_images, test_labels, tuple(names))


def _load_items(folder: Path, items: list[tuple[str, int]], field: str) -> Pair:
    images = np.empty((len(items), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for row, (rel, _) in enumerate(items):
        try:
            image = load_rgb(folder / rel)
        except InputError as exc:
            raise InputError(field, str(exc)) from exc
        images[row] = np.asarray(center_crop(resize_short_side(image, IMAGE_SIZE), IMAGE_SIZE))
    return images, np.asarray([label for _, label in items], dtype=np.int64)


def _for_field(exc: InputError, field: str) -> InputError:
    """Re-address an error from a helper (which names its own argument) to the user's field."""
    message = str(exc)
    prefix = f"{exc.field}: "
    if message.startswith(prefix) and not Path(exc.field).is_absolute():
        message = message[len(prefix):]
    return InputError(field, message)


def _existing_dir(path: Path | str, field: str) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise InputError(field, f"{folder} does not exist; give a {FOLDER_NAME} folder or an "
                                "ImageNet-format folder of class sub-folders")
    if not folder.is_dir():
        raise InputError(field, f"{folder} is not a directory")
    return folder.resolve()


# --- held-out validation split --------------------------------------------------------------

def split_train_val(labels: Sequence[int] | np.ndarray, val_fraction: float, seed: int,
                    field: str = "data.val_fraction") -> tuple[np.ndarray, np.ndarray]:
    """Stratified seeded split of training indices: per class floor(n·val_fraction) to val.

    Returns sorted int64 index arrays (train, val); same labels + fraction + seed → same split.
    """
    array = np.asarray(labels)
    if array.ndim != 1 or len(array) == 0 or array.dtype.kind not in "iu":
        raise InputError("labels", f"must be a non-empty 1-D integer array, got {array.dtype} "
                                   f"of shape {array.shape}")
    if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) \
            or not math.isfinite(val_fraction) or not 0 < val_fraction < 1:
        raise InputError(field, f"must be a number with 0 < val_fraction < 1, got {val_fraction!r}")
    train, val = _stratified_split(array, lambda n: math.floor(n * val_fraction), _check_seed(seed, "seed"))
    if len(val) == 0:
        raise InputError(field, f"{val_fraction} of {len(array)} training images leaves no class "
                                "with a validation image; raise val_fraction or add images")
    return train, val


def _stratified_split(labels: np.ndarray, take: Callable[[int], int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class (sorted), shuffle that class's indices and move the first take(n) aside."""
    rng = np.random.default_rng(seed)
    kept, taken = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = min(take(len(members)), len(members) - 1)  # every class keeps one training image
        taken.append(members[:count])
        kept.append(members[count:])
    return np.sort(np.concatenate(kept)).astype(np.int64), np.sort(np.concatenate(taken)).astype(np.int64)


def _check_seed(seed: Any, field: str) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InputError(field, f"must be a non-negative integer, got {seed!r}")
    return int(seed)


# --- torch side: dataset, transforms, loaders ------------------------------------------------

class CifarNormalize:
    """uint8 RGB [3, H, W] tensor → float32, scaled to [0, 1] and normalized per channel; with
    channel_order "BGR" the channels are reversed first (mean/std then given in BGR order) —
    the same arithmetic as `data.transforms.Preprocess`, which the exported predictor runs."""

    def __init__(self, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                 channel_order: str = "RGB") -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise InputError("mean/std", f"need three numbers each (std positive), got {mean!r}, {std!r}")
        if channel_order not in ("RGB", "BGR"):
            raise InputError("channel_order", f"must be RGB or BGR, got {channel_order!r}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.bgr = channel_order == "BGR"

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = image.flip(0) if self.bgr else image
        return (image.to(torch.float32) / 255.0 - self.mean) / self.std


class CifarAugment:
    """The standard CIFAR training augmentation with its own seeded generator.

    Zero-pad `padding` pixels, take a random crop of the original size, flip horizontally with
    probability 0.5, then normalize. Draws come from `torch.Generator().manual_seed(seed)` in
    call order, so a loader that visits the same samples in the same order (num_workers=0,
    seeded shuffle) produces identical batches run after run.
    """

    def __init__(self, seed: int, padding: int = 4, flip: bool = True,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                 channel_order: str = "RGB") -> None:
        if not isinstance(padding, int) or padding < 0:
            raise InputError("padding", f"must be a non-negative integer, got {padding!r}")
        self.padding, self.flip = padding, flip
        self.generator = torch.Generator().manual_seed(_check_seed(seed, "seed"))
        self.normalize = CifarNormalize(mean, std, channel_order)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        channels, height, width = image.shape
        p = self.padding
        padded = image.new_zeros((channels, height + 2 * p, width + 2 * p))
        padded[:, p:p + height, p:p + width] = image
        top, left = (int(v) for v in torch.randint(0, 2 * p + 1, (2,), generator=self.generator))
        crop = padded[:, top:top + height, left:left + width]
        if self.flip and float(torch.rand((), generator=self.generator)) < 0.5:
            crop = crop.flip(-1)
        return self.normalize(crop)


class CifarArrays(Dataset):
    """Items (float32 [3, 32, 32] tensor, label id) over in-memory uint8 HWC images.

    `transform` receives each image as a uint8 [3, 32, 32] tensor (default: normalize only).
    """

    def __init__(self, images: np.ndarray, labels: Sequence[int] | np.ndarray,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        images = _check_images(images, "images")
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(images) or (len(labels) and labels.dtype.kind not in "iu"):
            raise InputError("labels", f"must be {len(images)} integers (one per image), got "
                                       f"{labels.dtype} values of shape {labels.shape}")
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        self.labels = labels.astype(np.int64)
        self.transform = transform if transform is not None else CifarNormalize()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


def cifar_loaders(train: Pair, val: Pair, batch_size: int, seed: int, augment: bool = True,
                  mean: Sequence[float] = CIFAR10_MEAN,
                  std: Sequence[float] = CIFAR10_STD, channel_order: str = "RGB") -> tuple[DataLoader, DataLoader]:
    """(train loader: seeded shuffle + augmentation, eval loader: in order, normalize only).

    `train` and `val` are (uint8 images [N, 32, 32, 3], labels [N]) pairs. Loading stays in the
    calling process (the arrays are in memory; worker copies would repeat the same draws). The
    training loader drops a last partial batch when there is more than one batch, so BatchNorm
    never sees a batch of one.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError("batch_size", f"must be a positive integer, got {batch_size!r}")
    seed = _check_seed(seed, "seed")
    shuffle_seed, augment_seed = derive_seed(seed, "cifar_loaders.shuffle"), derive_seed(seed, "cifar_loaders.augment")
    train_transform = (CifarAugment(augment_seed, mean=mean, std=std, channel_order=channel_order) if augment
                       else CifarNormalize(mean, std, channel_order))
    train_set = CifarArrays(*train, transform=train_transform)
    val_set = CifarArrays(*val, transform=CifarNormalize(mean, std, channel_order))
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(shuffle_seed),
                              drop_last=len(train_set) > batch_size)
    val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False)
    return train_loader, val_loader
