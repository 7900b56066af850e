"""Face detection data: the embedded COCO-format face set, WIDER FACE files, and AP@0.5.

Embedded set (the SANAS demo's data; nothing can be downloaded at run time): real 25x25 face
crops from scikit-image's `lfw_subset()` pasted at known boxes (16-48 px squares, 1-3 per
image, no overlaps) onto crops of scikit-image's bundled natural images (ones without human
faces). Every image also gets 0-2 distractors of the same size and treatment: LFW's non-face
crops and grey patches cut from the backgrounds, so "a pasted grey square" is not a face cue;
some backgrounds are turned grey for the same reason. Faces (and non-faces) are split
disjointly, 80 for training and 20 held out, so validation shows faces never seen in training.
The layout is the one a user's COCO folder has, so `data.coco.load_coco` reads both:

    root/train/*.png, root/val/*.png, root/annotations/instances_{train,val}.json

WIDER FACE (`wider_face_{train,val}_bbx_gt.txt`): per image a path line (relative to the
images folder), a face count line, then one line per face
`x y w h blur expression illumination invalid occlusion pose`; an image with no faces has
count 0 followed by one placeholder line of numbers. `read_wider_face` converts it to the
project's COCO structures. Faces flagged invalid (WIDER's "invalid image" label, which its
evaluation ignores) become `iscrowd: 1` annotations: pycocotools then ignores detections on
them (neither hit nor false alarm), and `CocoDetection` leaves them out of training targets.
Boxes with zero width or height (present in the official files) are dropped; boxes reaching
past the image are clipped to it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from core.errors import InputError
from core.paths import data_cache_dir
from core.text import excerpt
from data._build import CocoFolder, build_once
from data.coco import CocoSet, ImagesFolder, UnreadableImage, image_header_size, load_coco
from data.coco_eval import coco_map, to_coco_detections

__all__ = [
    "FacesCoco",
    "WIDER_FIELDS",
    "default_faces_coco",
    "face_ap",
    "make_faces_coco",
    "read_wider_face",
    "wider_face_to_coco",
    "write_wider_face",
]

FACE_CATEGORY = {"id": 1, "name": "face", "supercategory": "face"}
LFW_FACES = 100                    # lfw_subset(): first 100 crops are faces, the next 100 are not
HELD_OUT_PER_KIND = 20             # faces (and non-faces) reserved for validation images
MIN_FACE_PX, MAX_FACE_PX = 16, 48
MAX_FACES, MAX_DISTRACTORS = 3, 2
GREY_BACKGROUND_SHARE = 0.3
PLACEMENT_TRIES = 50
# scikit-image's bundled images without human faces (camera and astronaut show people).
BACKGROUNDS = ("coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
               "retina", "brick", "grass", "gravel", "coins", "moon", "clock", "page", "text", "cell")
WIDER_FIELDS = ("x", "y", "w", "h", "blur", "expression", "illumination", "invalid", "occlusion", "pose")
MAX_WIDER_FACES = 100_000          # faces in one image; WIDER's most crowded image has about 1,968
MAX_NUMBER_CHARS = 40              # characters in one number of a face line
_COUNT = re.compile(r"[0-9]+")     # ASCII digits only: str.isdigit() also accepts "²"


# --- the embedded set ------------------------------------------------------------------------

FacesCoco = CocoFolder  # the generated set's layout (data/_build.py)


def make_faces_coco(root: Path, num_train: int = 300, num_val: int = 100, image_size: int = 128,
                    seed: int = 0) -> FacesCoco:
    """Build (once) and return the embedded COCO-format face detection set under `root`."""
    _check_args(num_train, num_val, image_size, seed)
    params = {"kind": "faces_coco", "num_train": num_train, "num_val": num_val,
              "image_size": image_size, "seed": seed}
    root = build_once(Path(root), params,
                      lambda tmp: _write_dataset(tmp, num_train, num_val, image_size, seed))
    return CocoFolder.at(root)


def default_faces_coco() -> FacesCoco:
    """The demo set (300 train / 100 val images of 128 px) in the project's data cache."""
    return make_faces_coco(data_cache_dir() / "faces_coco_128")


def _check_args(num_train: int, num_val: int, image_size: int, seed: int) -> None:
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(name, f"must be a positive integer, got {value!r}")
    minimum = 2 * MAX_FACE_PX
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < minimum:
        raise InputError("image_size", f"must be an integer of at least {minimum} (room for two of "
                                       f"the largest {MAX_FACE_PX}-px faces), got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError("seed", f"must be a non-negative integer, got {seed!r}")


def load_backgrounds() -> list[np.ndarray]:
    """scikit-image's bundled photographs (BACKGROUNDS) as HWC uint8 RGB arrays."""
    from skimage import data as skdata  # heavy import, only needed when generating

    backgrounds = []
    for name in BACKGROUNDS:
        image = np.asarray(getattr(skdata, name)())
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        backgrounds.append(np.ascontiguousarray(image[..., :3].astype(np.uint8)))
    return backgrounds


def _load_sources() -> tuple[np.ndarray, list[np.ndarray]]:
    """(LFW crops uint8 [200, 25, 25], background images as HWC uint8 RGB arrays)."""
    from skimage import data as skdata  # heavy import, only needed when generating

    crops = np.clip(np.rint(skdata.lfw_subset() * 255.0), 0, 255).astype(np.uint8)
    return crops, load_backgrounds()


def _write_dataset(folder: Path, num_train: int, num_val: int, image_size: int, seed: int) -> None:
    crops, backgrounds = _load_sources()
    split_rng = np.random.default_rng(seed)
    faces = split_rng.permutation(LFW_FACES)
    non_faces = LFW_FACES + split_rng.permutation(len(crops) - LFW_FACES)
    pools = {"val": (np.sort(faces[:HELD_OUT_PER_KIND]), np.sort(non_faces[:HELD_OUT_PER_KIND])),
             "train": (np.sort(faces[HELD_OUT_PER_KIND:]), np.sort(non_faces[HELD_OUT_PER_KIND:]))}
    layout = CocoFolder.at(folder)
    layout.train_json.parent.mkdir(parents=True)
    for split, count, out_dir, out_json, stream in (
            ("train", num_train, layout.train_images, layout.train_json, 1),
            ("val", num_val, layout.val_images, layout.val_json, 2)):
        # A generator per split: the val images do not change when num_train does.
        rng = np.random.default_rng([seed, stream])
        out_dir.mkdir()
        coco = _write_split(out_dir, count, image_size, pools[split], crops, backgrounds, rng)
        out_json.write_text(json.dumps(coco, sort_keys=True, separators=(",", ":")))


def _write_split(out_dir: Path, count: int, size: int, pool: tuple[np.ndarray, np.ndarray],
                 crops: np.ndarray, backgrounds: list[np.ndarray], rng: np.random.Generator) -> dict:
    face_pool, non_face_pool = pool
    coco_images, annotations = [], []
    for image_id in range(1, count + 1):
        bg_index = int(rng.integers(len(backgrounds)))
        canvas = _background(backgrounds[bg_index], size, rng)
        squares: list[tuple[int, int, int]] = []
        distractors = []
        n_faces = int(rng.integers(1, MAX_FACES + 1))
        n_distractors = int(rng.integers(0, MAX_DISTRACTORS + 1))
        for k in range(n_faces + n_distractors):
            side = int(rng.integers(MIN_FACE_PX, MAX_FACE_PX + 1))
            spot = _free_spot(size, side, squares, rng)
            if spot is None:
                continue  # too crowded for this size: fewer objects rather than overlap
            x, y = spot
            if k < n_faces:
                index = int(rng.choice(face_pool))
                source = crops[index]
            elif rng.random() < 0.5:
                index = int(rng.choice(non_face_pool))
                source = crops[index]
            else:
                index = -1 - int(rng.integers(len(backgrounds)))  # negative: a background patch
                source = _grey_patch(backgrounds[-1 - index], rng)
            _paste(canvas, source, x, y, side, rng)
            squares.append((x, y, side))
            bbox = [float(x), float(y), float(side), float(side)]
            if k < n_faces:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": FACE_CATEGORY["id"], "bbox": bbox,
                                    "area": float(side * side), "iscrowd": 0,
                                    "lfw_index": index})  # provenance: index into lfw_subset()
            else:
                distractors.append({"bbox": bbox, "lfw_index": index if index >= 0 else None,
                                    "background": None if index >= 0 else BACKGROUNDS[-1 - index]})
        file_name = f"faces_{image_id:06d}.png"
        Image.fromarray(canvas).save(out_dir / file_name)
        coco_images.append({"id": image_id, "file_name": file_name, "width": size, "height": size,
                            "background": BACKGROUNDS[bg_index], "distractors": distractors})
    return {"info": {"description": "spnas embedded faces (scikit-image lfw_subset on natural images)"},
            "licenses": [], "images": coco_images, "annotations": annotations,
            "categories": [dict(FACE_CATEGORY)]}


def _background(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop (30-100 % of the short side), resized to size, maybe flipped/greyed."""
    height, width = image.shape[:2]
    short = min(height, width)
    side = int(rng.integers(max(size // 2, int(0.3 * short)), short + 1))
    top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
    crop = Image.fromarray(image[top:top + side, left:left + side]).resize(
        (size, size), Image.Resampling.BILINEAR)
    canvas = np.array(crop, dtype=np.uint8)
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1].copy()
    if rng.random() < GREY_BACKGROUND_SHARE:
        canvas[:] = _grey(canvas)[..., None]
    return canvas


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]), 0, 255).astype(np.uint8)


def _grey_patch(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grey square from a background image, cut at the scale of an LFW crop's content."""
    height, width = image.shape[:2]
    side = int(rng.integers(25, min(height, width) // 4 + 1))
    top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
    return _grey(image[top:top + side, left:left + side])


def _paste(canvas: np.ndarray, grey: np.ndarray, x: int, y: int, side: int,
           rng: np.random.Generator) -> None:
    """Resize a grey crop to side x side, jitter contrast/brightness, tint it, write it in place."""
    patch = np.asarray(Image.fromarray(grey).resize((side, side), Image.Resampling.BILINEAR),
                       dtype=np.float64)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    mean = patch.mean()
    patch = (patch - mean) * rng.uniform(0.7, 1.3) + mean + rng.uniform(-30.0, 30.0)
    tint = rng.uniform(0.85, 1.0, size=3)
    canvas[y:y + side, x:x + side] = np.clip(np.rint(patch[..., None] * tint), 0, 255).astype(np.uint8)


def _free_spot(size: int, side: int, squares: list[tuple[int, int, int]],
               rng: np.random.Generator) -> tuple[int, int] | None:
    for _ in range(PLACEMENT_TRIES):
        x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        if all(x + side <= ox or ox + oside <= x or y + side <= oy or oy + oside <= y
               for ox, oy, oside in squares):
            return x, y
    return None


# --- metric ----------------------------------------------------------------------------------

def face_ap(coco_set: CocoSet, image_ids: Sequence[int], outputs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """{"AP50": AP@0.5, "AP": AP@[.5:.95]} of torchvision detector outputs, by pycocotools.

    Only the images in `image_ids` count (the ones the detector was run on).
    """
    detections = to_coco_detections(image_ids, outputs, coco_set)
    scores = coco_map(coco_set, detections, image_ids=image_ids)
    return {"AP50": scores["mAP50"], "AP": scores["mAP"]}


# --- WIDER FACE ------------------------------------------------------------------------------

def read_wider_face(ann_file: Path | str, images_dir: Path | str) -> dict[str, Any]:
    """Parse a WIDER FACE `*_bbx_gt.txt` file into a COCO instances dict (one category "face").

    Image sizes come from the image files' headers (an image over PIL's decompression-bomb
    limit is refused). Image paths must lie inside `images_dir` (no absolute path, no `..`, no
    symlink leading out). Each annotation keeps the WIDER attributes under "wider". One
    InputError (field: the file) names the first problem and its line.
    """
    ann_file, images_dir = Path(ann_file), Path(images_dir)
    if not ann_file.is_file():
        raise InputError(str(ann_file), "does not exist; give a WIDER FACE *_bbx_gt.txt file")
    if not images_dir.is_dir():
        raise InputError(str(images_dir), "images folder does not exist; give WIDER FACE's images folder")
    try:
        lines = ann_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(str(ann_file), "is not UTF-8 text; give a WIDER FACE *_bbx_gt.txt file") from exc
    reader = _WiderLines(ann_file, lines)
    folder = ImagesFolder(images_dir)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    skipped = 0
    while reader.more():
        path_line, file_name = reader.next_path()
        escape = folder.escape(file_name)
        if escape:
            raise reader.fail(path_line, f"image path {excerpt(file_name)} {escape}; image paths must "
                                         f"lie inside the images folder {images_dir}")
        count = reader.next_count(file_name)
        width, height = _image_size(images_dir / file_name, ann_file, path_line)
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        if count == 0:
            reader.skip_placeholder()
            continue
        for _ in range(count):
            face = reader.next_face(file_name, count)
            bbox = _clip_box(face[:4], width, height)
            if bbox is None:
                skipped += 1
                continue
            attrs = dict(zip(WIDER_FIELDS[4:], (int(v) for v in face[4:])))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": FACE_CATEGORY["id"], "bbox": bbox,
                                "area": bbox[2] * bbox[3], "iscrowd": int(attrs["invalid"] == 1),
                                "wider": attrs})
    if not images:
        raise InputError(str(ann_file), "holds no images; expected WIDER FACE *_bbx_gt.txt lines")
    # The COCO file made from it must hold a box to train and score on (load_coco refuses it
    # otherwise, naming the converted file instead of this one).
    if not annotations:
        raise InputError(str(ann_file), f"holds no usable face ({len(images)} images, {skipped} zero-size "
                                        "boxes dropped); at least one face box is needed")
    if all(a["iscrowd"] for a in annotations):
        raise InputError(str(ann_file), f"has only faces flagged invalid ({len(annotations)}), which "
                                        "training and evaluation ignore; at least one valid face is needed")
    return {"info": {"description": f"WIDER FACE annotations from {ann_file.name}",
                     "degenerate_boxes_dropped": skipped},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": [dict(FACE_CATEGORY)]}


def wider_face_to_coco(ann_file: Path | str, images_dir: Path | str, out_json: Path | str) -> CocoSet:
    """Convert a WIDER FACE file to a COCO json at `out_json` and load it with `load_coco`."""
    data = read_wider_face(ann_file, images_dir)
    out_json = Path(out_json)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")))
    return load_coco(Path(images_dir), out_json)


def write_wider_face(path: Path | str, entries: Sequence[tuple[str, Sequence[Sequence[float]]]]) -> Path:
    """Write `(file_name, faces)` entries in WIDER FACE's *_bbx_gt.txt format.

    A face is `[x, y, w, h]` (attributes 0) or all ten WIDER_FIELDS; an image without faces
    gets count 0 and the placeholder line of zeros, as the official files have.
    """
    out: list[str] = []
    for file_name, faces in entries:
        out += [file_name, str(len(faces))]
        if not faces:
            out.append(" ".join(["0"] * len(WIDER_FIELDS)))
        for face in faces:
            if len(face) not in (4, len(WIDER_FIELDS)):
                raise InputError("faces", f"each face needs 4 or {len(WIDER_FIELDS)} numbers "
                                          f"({' '.join(WIDER_FIELDS)}), got {list(face)!r}")
            values = list(face) + [0] * (len(WIDER_FIELDS) - len(face))
            out.append(" ".join(_number_text(v) for v in values))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _WiderLines:
    """A cursor over the file's lines that reports problems with their 1-based line numbers."""

    def __init__(self, ann_file: Path, lines: list[str]) -> None:
        self.ann_file, self.lines, self.index = ann_file, lines, 0
        self._skip_blank()

    def fail(self, line_no: int, message: str) -> InputError:
        return InputError(str(self.ann_file), f"line {line_no}: {message}")

    def more(self) -> bool:
        return self.index < len(self.lines)

    def _skip_blank(self) -> None:
        while self.index < len(self.lines) and not self.lines[self.index].strip():
            self.index += 1

    def _take(self, what: str) -> tuple[int, str]:
        if self.index >= len(self.lines):
            raise self.fail(len(self.lines) + 1, f"the file ends where {what} was expected")
        line_no, text = self.index + 1, self.lines[self.index].strip()
        self.index += 1
        return line_no, text

    def next_path(self) -> tuple[int, str]:
        line_no, text = self._take("an image path")
        if _is_number_line(text):
            raise self.fail(line_no, f"expected an image path (e.g. 0--Parade/0_Parade_1.jpg), "
                                     f"got {excerpt(text)}")
        return line_no, text.replace("\\", "/")

    def next_count(self, file_name: str) -> int:
        line_no, text = self._take(f"the face count of {excerpt(file_name)}")
        if not _COUNT.fullmatch(text):
            raise self.fail(line_no, f"expected the face count of {excerpt(file_name)} (an integer >= 0), "
                                     f"got {excerpt(text)}")
        # Compared as text first: int() of a 5,000-digit string is refused by Python itself.
        digits = text.lstrip("0") or "0"
        if len(digits) > len(str(MAX_WIDER_FACES)) or int(digits) > MAX_WIDER_FACES:
            raise self.fail(line_no, f"face count of {excerpt(file_name)} is {excerpt(text, 30)}, more "
                                     f"than {MAX_WIDER_FACES:,} faces in one image; not a WIDER FACE count")
        return int(digits)

    def next_face(self, file_name: str, count: int) -> list[float]:
        line_no, text = self._take(f"one of the {count} faces of {excerpt(file_name)}")
        parts = text.split()
        if len(parts) < len(WIDER_FIELDS) or not _is_number_line(text):
            raise self.fail(line_no, f"expected {len(WIDER_FIELDS)} numbers "
                                     f"'{' '.join(WIDER_FIELDS)}' for a face of {excerpt(file_name)} "
                                     f"(count says {count}), got {excerpt(text)}")
        long = next((p for p in parts[:len(WIDER_FIELDS)] if len(p) > MAX_NUMBER_CHARS), None)
        if long is not None:
            raise self.fail(line_no, f"a number of a face of {excerpt(file_name)} has {len(long):,} "
                                     f"characters (at most {MAX_NUMBER_CHARS}): {excerpt(long, 30)}")
        values = [float(p) for p in parts[:len(WIDER_FIELDS)]]
        if any(not np.isfinite(v) for v in values) or any(not v.is_integer() for v in values[4:]):
            raise self.fail(line_no, f"face attributes of {excerpt(file_name)} must be integers and the box "
                                     f"finite, got {excerpt(text)}")
        return values

    def skip_placeholder(self) -> None:
        """After count 0 the official files hold one line of zeros; accept it or its absence."""
        if self.index < len(self.lines) and _is_number_line(self.lines[self.index].strip()):
            self.index += 1
        self._skip_blank()


def _is_number_line(text: str) -> bool:
    parts = text.split()
    if not parts:
        return False
    try:
        [float(p) for p in parts]
    except ValueError:
        return False
    return True


def _image_size(path: Path, ann_file: Path, line_no: int) -> tuple[int, int]:
    """The header's size (no decoding); missing, unreadable and oversized images name the line."""
    try:
        return image_header_size(path)
    except UnreadableImage as exc:
        raise InputError(str(ann_file), f"line {line_no}: image {path} {exc}") from None


def _clip_box(box: Sequence[float], width: int, height: int) -> list[float] | None:
    x, y, w, h = box
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        return None
    return [x1, y1, x2 - x1, y2 - y1]
