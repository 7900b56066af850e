"""Train/val/test split of an ImageNet-format folder, as PaddleX `split_dataset --format ImageNet`.

Input: a folder of class sub-folders holding images. Per class (classes sorted by name, label
ids 0..C-1), the sorted image files are shuffled, the first floor(n·val) go to val, the next
floor(n·test) to test and the rest to train. Output files (default: inside the data folder,
as PaddleX does): `train_list.txt`, `val_list.txt`, `test_list.txt` (only when non-empty) and
`labels.txt`, with lines `<class>/<file> <label_id>`.

Everything is validated before anything is written, and files are replaced atomically, so a
failed call leaves an earlier split untouched.
"""
from __future__ import annotations

import math
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path


from core.errors import InputError
from data.transforms import check_image

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
LIST_NAMES = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
LABELS_NAME = "labels.txt"
SUBSETS = ("train", "val", "test")


@dataclass
class SplitResult:
    dataset_dir: Path
    output_dir: Path
    labels: list[str]
    counts: dict[str, int]                    # subset -> number of images
    class_counts: dict[str, dict[str, int]]   # class name -> subset -> number of images
    train_list: Path
    val_list: Path
    test_list: Path | None                    # None when the test share is empty
    labels_file: Path
    seed: int = 0
    ratios: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-friendly form (paths as strings) for task results and tracking."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
        return out


def split_imagenet_folder(dataset_dir: Path, val_value: float, test_value: float,
                          seed: int = 0, output_dir: Path | None = None) -> SplitResult:
    """Split `dataset_dir` into list files; see the module docstring for the exact rules."""
    _check_ratios(val_value, test_value)
    dataset_dir = _check_dataset_dir(dataset_dir)
    output_dir = _check_output_dir(dataset_dir if output_dir is None else Path(output_dir))
    classes = check_image_folder(dataset_dir)

    rng = random.Random(seed)  # one generator across classes in sorted order (reproducible)
    lines: dict[str, list[str]] = {name: [] for name in SUBSETS}
    class_counts: dict[str, dict[str, int]] = {}
    for label_id, (class_name, files) in enumerate(classes.items()):
        parts = _split_class(files, val_value, test_value, rng)
        class_counts[class_name] = {name: len(parts[name]) for name in SUBSETS}
        for name in SUBSETS:
            lines[name].extend(f"{class_name}/{file} {label_id}" for file in parts[name])

    labels = list(classes)
    paths = _write_outputs(output_dir, lines, labels)
    return SplitResult(
        dataset_dir=dataset_dir, output_dir=output_dir, labels=labels,
        counts={name: len(lines[name]) for name in SUBSETS}, class_counts=class_counts,
        train_list=paths["train"], val_list=paths["val"], test_list=paths.get("test"),
        labels_file=output_dir / LABELS_NAME, seed=seed,
        ratios={"val_value": val_value, "test_value": test_value})


def format_split_summary(result: SplitResult) -> str:
    """A small table (class × subset) for the command line."""
    width = max([len("class")] + [len(name) for name in result.labels])
    header = f"{'class':<{width}}  {'train':>6} {'val':>6} {'test':>6}"
    rows = [header, "-" * len(header)]
    for name in result.labels:
        c = result.class_counts[name]
        rows.append(f"{name:<{width}}  {c['train']:>6} {c['val']:>6} {c['test']:>6}")
    t = result.counts
    rows.append("-" * len(header))
    rows.append(f"{'total':<{width}}  {t['train']:>6} {t['val']:>6} {t['test']:>6}")
    written = [result.train_list, result.val_list, result.test_list, result.labels_file]
    rows.append("wrote " + ", ".join(str(p) for p in written if p is not None))
    return "\n".join(rows)


def check_image_folder(dataset_dir: Path | str, field: str = "dataset_dir") -> dict[str, list[str]]:
    """An ImageNet-format folder, checked as a run would read it, writing nothing: at least two
    class sub-folders, each with images, every image decodable (truncated files and
    decompression bombs included). Returns class name -> sorted image file names; one
    InputError under `field` naming the folder or file otherwise."""
    folder = _check_dataset_dir(Path(dataset_dir), field)
    classes = _scan_classes(folder, field)
    if len(classes) < 2:
        raise InputError(field, f"{folder} has one class sub-folder ({next(iter(classes))!r}); a classifier "
                                "needs at least two")
    _verify_images(folder, classes, field)
    return classes


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


# --- validation -----------------------------------------------------------------------------

def _check_ratios(val_value: float, test_value: float) -> None:
    if not _is_number(val_value) or not 0 < val_value < 1:
        raise InputError("val_value", f"must be a number with 0 < val_value < 1, got {val_value!r}")
    if not _is_number(test_value) or not 0 <= test_value < 1:
        raise InputError("test_value", f"must be a number with 0 <= test_value < 1, got {test_value!r}")
    if val_value + test_value >= 1:
        raise InputError("test_value", f"val_value + test_value must be below 1 so some images "
                                       f"stay for training, got {val_value} + {test_value}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_dataset_dir(dataset_dir: Path, field: str = "dataset_dir") -> Path:
    path = Path(dataset_dir)
    if not path.exists():
        raise InputError(field, f"{path} does not exist; give a folder of class sub-folders")
    if not path.is_dir():
        raise InputError(field, f"{path} is not a directory; give a folder of class sub-folders")
    return path.resolve()


def _check_output_dir(output_dir: Path) -> Path:
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError("output_dir", f"{output_dir} exists and is not a directory")
    return output_dir.resolve()


def _scan_classes(dataset_dir: Path, field: str = "dataset_dir") -> dict[str, list[str]]:
    """Sorted class name -> sorted image file names; hidden folders are ignored."""
    class_dirs = sorted((p for p in dataset_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: p.name)
    if not class_dirs:
        raise InputError(field, f"{dataset_dir} has no class sub-folders; expected "
                                        "<dataset_dir>/<class>/<image> (ImageNet format)")
    classes: dict[str, list[str]] = {}
    for class_dir in class_dirs:
        _check_name(class_dir, field)
        files = sorted(p.name for p in class_dir.iterdir() if is_image_file(p))
        if not files:
            raise InputError(field, f"class folder {class_dir} holds no images "
                                            f"({', '.join(sorted(IMAGE_EXTENSIONS))})")
        for file in files:
            _check_name(class_dir / file, field)
        classes[class_dir.name] = files
    return classes


def _check_name(path: Path, field: str = "dataset_dir") -> None:
    # A list line is "<path> <label>": a line break inside a name would corrupt the file.
    if any(ch in path.name for ch in "\n\r"):
        raise InputError(field, f"{path!r} has a line break in its name; rename it")


def _verify_images(dataset_dir: Path, classes: dict[str, list[str]], field: str = "dataset_dir") -> None:
    for class_name, files in classes.items():
        for file in files:
            check_image(dataset_dir / class_name / file, field)


# --- splitting and writing ------------------------------------------------------------------

def _split_class(files: list[str], val_value: float, test_value: float,
                 rng: random.Random) -> dict[str, list[str]]:
    shuffled = list(files)
    rng.shuffle(shuffled)
    n_val = math.floor(len(shuffled) * val_value)
    n_test = math.floor(len(shuffled) * test_value)
    return {"val": shuffled[:n_val], "test": shuffled[n_val:n_val + n_test],
            "train": shuffled[n_val + n_test:]}


def _write_outputs(output_dir: Path, lines: dict[str, list[str]], labels: list[str]) -> dict[str, Path]:
    """All or nothing: every file is written to a temp name first, the earlier split's files are
    kept aside (hard links), then the new ones are swapped in with os.replace; if any step fails
    the earlier files are put back and the error is one line naming the folder."""
    contents = {output_dir / LIST_NAMES[name]: lines[name] for name in SUBSETS
                if name != "test" or lines["test"]}
    contents[output_dir / LABELS_NAME] = labels
    stale = [] if lines["test"] else [output_dir / LIST_NAMES["test"]]  # from an earlier split
    staged: dict[Path, Path] = {}
    kept: dict[Path, Path] = {}      # target -> its earlier file, kept aside
    swapped: list[Path] = []
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for target, rows in contents.items():
            staged[target] = _stage(target, rows)
        for target in [*contents, *stale]:
            if target.exists() or target.is_symlink():
                kept[target] = _keep_aside(target)
        for target, tmp in staged.items():
            os.replace(tmp, target)
            swapped.append(target)
        for target in stale:
            if target in kept:
                target.unlink()
    except OSError as exc:
        for target in swapped:  # put the earlier split back
            if target in kept:
                os.replace(kept.pop(target), target)
            else:
                target.unlink(missing_ok=True)
        raise InputError("output_dir", f"{output_dir}: cannot write the split ({exc.strerror or exc}"
                                       f"{f': {exc.filename}' if exc.filename else ''}); the earlier split, if "
                                       "any, is unchanged") from None
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        for aside in kept.values():
            aside.unlink(missing_ok=True)
    return {name: output_dir / LIST_NAMES[name] for name in SUBSETS if name != "test" or lines["test"]}


def _keep_aside(target: Path) -> Path:
    """A hard link to `target` under a temp name in its folder (a copy where links are refused)."""
    import shutil

    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".earlier", dir=target.parent)
    os.close(fd)
    os.unlink(name)
    try:
        os.link(target, name, follow_symlinks=False)
    except OSError:
        shutil.copy2(target, name, follow_symlinks=False)
    return Path(name)


def _stage(target: Path, rows: list[str]) -> Path:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("".join(f"{row}\n" for row in rows))
    os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; list files are meant to be shared
    return Path(tmp_name)
