"""Hostile COCO and WIDER FACE files: each problem is one InputError naming the field, the file and
the offending image / line; nothing outside the images folder is read, no traceback."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from core.errors import InputError
from data.coco import CocoDetection, check_coco_files, load_coco
from data.coco_crops import make_crops_imagefolder
from data.faces import read_wider_face, write_wider_face

IMAGES_FIELD, JSON_FIELD = "data.train_images", "data.train_json"
W, H = 32, 24


# --- fixtures: a tiny COCO set and a tiny WIDER FACE set, written here ---------------------------

def _png(path: Path, size: tuple[int, int] = (W, H)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (80, 120, 160)).save(path)


@pytest.fixture
def coco_files(tmp_path) -> tuple[Path, Path, dict]:
    """(images folder, instances path, document): two 32x24 images, one box each."""
    images = tmp_path / "images"
    _png(images / "a.png")
    _png(images / "sub" / "b.png")
    (tmp_path / "outside").mkdir()
    _png(tmp_path / "outside" / "c.png")
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                      {"id": 2, "file_name": "sub/b.png", "width": W, "height": H}],
           "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 8], "iscrowd": 0},
                           {"id": 11, "image_id": 2, "category_id": 1, "bbox": [4, 4, 6, 6], "iscrowd": 0}],
           "categories": [{"id": 1, "name": "thing"}]}
    return images, tmp_path / "instances.json", doc


def _write(ann: Path, doc: dict) -> Path:
    ann.write_text(json.dumps(doc))
    return ann


def _assert_one_line(err: pytest.ExceptionInfo, field: str, *words: str) -> None:
    text = str(err.value)
    assert err.value.field == field, text
    assert "\n" not in text and len(text) < 600, text
    for word in words:
        assert word in text, (word, text)


# --- COCO: file_name must stay inside the images folder -------------------------------------------

def _name(value: str) -> Callable[[Path, dict], None]:
    def edit(images: Path, doc: dict) -> None:
        doc["images"][1]["file_name"] = value
    return edit


def _symlink_file(target: str) -> Callable[[Path, dict], None]:
    def edit(images: Path, doc: dict) -> None:
        os.symlink(target if target.startswith("/") else images.parent / target, images / "link.png")
        doc["images"][1]["file_name"] = "link.png"
    return edit


def _symlinked_folder(images: Path, doc: dict) -> None:
    os.symlink(images.parent / "outside", images / "out", target_is_directory=True)
    doc["images"][1]["file_name"] = "out/c.png"


def _symlink_loop(images: Path, doc: dict) -> None:
    os.symlink(images / "loop.png", images / "loop.png")
    doc["images"][1]["file_name"] = "loop.png"


ESCAPES = [
    ("dotdot-etc-passwd", _name("../../../../etc/passwd"), "'..'"),
    ("absolute", _name("/etc/hostname"), "absolute"),
    ("dotdot-after-sub", _name("sub/../../x.png"), "'..'"),
    ("dotdot-staying-inside", _name("sub/../a.png"), "'..'"),
    ("dotdot-to-sibling-file", _name("../outside/c.png"), "'..'"),
    ("nul-byte", _name("a.png\x00.txt"), "NUL"),
    ("empty", _name(""), "empty"),
    ("symlink-to-etc-hostname", _symlink_file("/etc/hostname"), "symlink"),
    ("symlink-to-outside-png", _symlink_file("outside/c.png"), "symlink"),
    ("symlink-to-missing-outside", _symlink_file("outside/none.png"), "symlink"),
    ("symlinked-sub-folder", _symlinked_folder, "symlinked folder"),
    ("symlink-loop", _symlink_loop, "cannot be resolved"),
]


@pytest.mark.parametrize("edit, words", [c[1:] for c in ESCAPES], ids=[c[0] for c in ESCAPES])
def test_coco_file_name_leaving_the_images_folder_is_refused(coco_files, edit, words):
    images, ann, doc = coco_files
    edit(images, doc)
    _write(ann, doc)
    with pytest.raises(InputError) as err:
        check_coco_files(images, ann, IMAGES_FIELD, JSON_FIELD)
    _assert_one_line(err, JSON_FIELD, str(ann), "image id 2", "file_name", words)
    # load_coco refuses it too (before any image is opened); without field names it names the file.
    with pytest.raises(InputError) as legacy:
        load_coco(images, ann)
    _assert_one_line(legacy, str(ann), "image id 2", "file_name", words)


def _inside_link(images: Path, doc: dict) -> None:
    os.symlink(images / "sub" / "b.png", images / "same.png")
    doc["images"][1]["file_name"] = "same.png"


def _inside_folder_link(images: Path, doc: dict) -> None:
    os.symlink(images / "sub", images / "alias", target_is_directory=True)
    doc["images"][1]["file_name"] = "alias/b.png"


@pytest.mark.parametrize("edit", [_name("sub/b.png"), _name("./sub//b.png"), _inside_link, _inside_folder_link],
                         ids=["sub-folder", "dot-and-double-slash", "symlink-inside", "folder-symlink-inside"])
def test_coco_paths_inside_the_folder_are_accepted(coco_files, edit):
    images, ann, doc = coco_files
    edit(images, doc)
    check_coco_files(images, _write(ann, doc), IMAGES_FIELD, JSON_FIELD)


def test_coco_images_folder_given_through_a_symlink_is_accepted(coco_files, tmp_path):
    images, ann, doc = coco_files
    os.symlink(images, tmp_path / "images_link", target_is_directory=True)
    check_coco_files(tmp_path / "images_link", _write(ann, doc), IMAGES_FIELD, JSON_FIELD)


# --- COCO semantics -------------------------------------------------------------------------------

def _set(path: tuple, value) -> Callable[[Path, dict], None]:
    def edit(images: Path, doc: dict) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _all_crowd(images: Path, doc: dict) -> None:
    for ann in doc["annotations"]:
        ann["iscrowd"] = 1


def _drop_ann_id(images: Path, doc: dict) -> None:
    del doc["annotations"][1]["id"]


def _corrupt_image(images: Path, doc: dict) -> None:
    (images / "sub" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


def _text_image(images: Path, doc: dict) -> None:
    (images / "sub" / "b.png").write_text("hello")


SEMANTICS = [
    ("duplicate-annotation-id", _set(("annotations", 1, "id"), 10), JSON_FIELD, ("annotation id 10", "unique")),
    ("duplicate-image-id", _set(("images", 1, "id"), 1), JSON_FIELD, ("image id 1", "unique")),
    ("no-annotations", _set(("annotations",), []), JSON_FIELD, ("no annotations",)),
    ("only-crowd", _all_crowd, JSON_FIELD, ("only crowd",)),
    ("annotation-without-id", _drop_ann_id, JSON_FIELD, ("annotations[1]", "integer id")),
    ("annotation-id-string", _set(("annotations", 1, "id"), "11"), JSON_FIELD, ("annotations[1]", "integer id")),
    ("iscrowd-2", _set(("annotations", 1, "iscrowd"), 2), JSON_FIELD, ("annotation 11", "iscrowd")),
    ("iscrowd-string", _set(("annotations", 1, "iscrowd"), "0"), JSON_FIELD, ("annotation 11", "iscrowd")),
    ("negative-area", _set(("annotations", 1, "area"), -3), JSON_FIELD, ("annotation 11", "area")),
    ("width-off-by-one", _set(("images", 1, "width"), W + 1), JSON_FIELD,
     ("image id 2", f"{W + 1}x{H}", f"is {W}x{H}", "b.png")),
    ("height-off-by-one", _set(("images", 1, "height"), H - 1), JSON_FIELD,
     ("image id 2", f"{W}x{H - 1}", f"is {W}x{H}")),
    ("width-huge", _set(("images", 1, "width"), 10 ** 400), JSON_FIELD, ("images[1]", "at most")),
    ("bbox-400-digit-int", _set(("annotations", 1, "bbox", 2), 10 ** 400), JSON_FIELD,
     ("annotation 11", "finite numbers")),
    ("bbox-1e30", _set(("annotations", 1, "bbox", 2), 10 ** 30), JSON_FIELD, ("annotation 11", "outside")),
    ("corrupt-image", _corrupt_image, IMAGES_FIELD, ("(id 2)", "b.png", "cannot be read")),
    ("text-as-image", _text_image, IMAGES_FIELD, ("(id 2)", "b.png", "cannot be read")),
]


@pytest.mark.parametrize("edit, field, words", [c[1:] for c in SEMANTICS], ids=[c[0] for c in SEMANTICS])
def test_coco_semantic_problems_are_refused(coco_files, edit, field, words):
    images, ann, doc = coco_files
    edit(images, doc)
    _write(ann, doc)
    with pytest.raises(InputError) as err:
        check_coco_files(images, ann, IMAGES_FIELD, JSON_FIELD)
    _assert_one_line(err, field, str(ann), *words)


def test_missing_area_is_filled_in_for_pycocotools(coco_files):
    images, ann, doc = coco_files
    coco = load_coco(images, _write(ann, doc))
    assert [a["area"] for a in coco.dataset["annotations"]] == [80.0, 36.0]


def test_some_crowd_and_images_without_boxes_stay_allowed(coco_files):
    images, ann, doc = coco_files
    doc["annotations"][0]["iscrowd"] = 1
    doc["images"].append({"id": 3, "file_name": "a.png", "width": W, "height": H})  # no box
    check_coco_files(images, _write(ann, doc), IMAGES_FIELD, JSON_FIELD)


# --- decompression bombs ------------------------------------------------------------------------------

# PIL raises DecompressionBombError above 2x the limit and warns above it: both paths are covered.
# The bomb is a 200x200 image (40,000 px); every other image has at most 3,072 px.
BOMB = (200, 200)
BOMB_LIMITS = [pytest.param(10_000, id="error-over-twice-the-limit"),
               pytest.param(30_000, id="warning-over-the-limit")]


@pytest.mark.parametrize("limit", BOMB_LIMITS)
def test_coco_bomb_image_is_refused_naming_the_file(coco_files, monkeypatch, limit):
    images, ann, doc = coco_files
    _png(images / "sub" / "b.png", BOMB)
    doc["images"][1].update(width=BOMB[0], height=BOMB[1])
    _write(ann, doc)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(InputError) as err:
        check_coco_files(images, ann, IMAGES_FIELD, JSON_FIELD)
    _assert_one_line(err, IMAGES_FIELD, str(ann), str(images / "sub" / "b.png"), "decompression-bomb", f"{limit:,}")


@pytest.mark.parametrize("limit", BOMB_LIMITS)
def test_bomb_image_at_load_time_is_one_input_error(coco_files, monkeypatch, tmp_path, limit):
    images, ann, doc = coco_files
    _png(images / "a.png", BOMB)
    doc["images"][0].update(width=BOMB[0], height=BOMB[1])
    doc["categories"].append({"id": 2, "name": "other"})  # reignite's crops need two classes
    doc["annotations"][1]["category_id"] = 2
    coco = load_coco(images, _write(ann, doc))  # no size check here: the Dataset meets the bomb
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(InputError) as err:
        CocoDetection(coco)[0]
    _assert_one_line(err, str(images / "a.png"), "decompression-bomb")
    with pytest.raises(InputError) as err:
        make_crops_imagefolder(images, ann, tmp_path / "crops", min_size=4, images_field=IMAGES_FIELD)
    _assert_one_line(err, IMAGES_FIELD, "a.png", "decompression-bomb")


# --- WIDER FACE --------------------------------------------------------------------------------------

@pytest.fixture
def wider(tmp_path) -> tuple[Path, Path]:
    """(images folder with two 64x48 images, annotation path to write)."""
    images = tmp_path / "images"
    _png(images / "0--Parade" / "0_Parade_1.jpg", (64, 48))
    _png(images / "0--Parade" / "0_Parade_2.jpg", (64, 48))
    _png(tmp_path / "outside" / "x.jpg", (64, 48))
    return images, tmp_path / "wider_face_train_bbx_gt.txt"


GOOD_FACE = "1 2 10 10 0 0 0 0 0 0"


def _wider_text(path: str, count: str = "1", face: str = GOOD_FACE) -> Callable[[Path], str]:
    return lambda images: f"0--Parade/0_Parade_1.jpg\n1\n{GOOD_FACE}\n{path}\n{count}\n{face}\n"


def _wider_link(target: str, name: str = "0--Parade/link.jpg") -> Callable[[Path], str]:
    def make(images: Path) -> str:
        os.symlink(target if target.startswith("/") else images.parent / target, images / name)
        return _wider_text(name)(images)
    return make


def _wider_folder_link(images: Path) -> str:
    os.symlink(images.parent / "outside", images / "out", target_is_directory=True)
    return _wider_text("out/x.jpg")(images)


def _wider_bomb(images: Path) -> str:
    _png(images / "0--Parade" / "0_Parade_2.jpg", BOMB)
    return _wider_text("0--Parade/0_Parade_2.jpg")(images)


def _wider_corrupt(images: Path) -> str:
    (images / "0--Parade" / "0_Parade_2.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return _wider_text("0--Parade/0_Parade_2.jpg")(images)


# (id, text builder, line, words); the image under test is the second one: path line 4, count 5, face 6.
WIDER_CASES = [
    ("dotdot", _wider_text("../outside/x.jpg"), 4, ("'..'",)),
    ("dotdot-etc-passwd", _wider_text("../../../../etc/passwd"), 4, ("'..'",)),
    ("absolute", _wider_text("/etc/hostname"), 4, ("absolute",)),
    ("dotdot-after-sub", _wider_text("0--Parade/../../x.jpg"), 4, ("'..'",)),
    ("backslash-dotdot", _wider_text("..\\..\\etc\\passwd"), 4, ("'..'",)),
    ("symlink-to-etc-hostname", _wider_link("/etc/hostname"), 4, ("symlink",)),
    ("symlink-to-outside", _wider_link("outside/x.jpg"), 4, ("symlink",)),
    ("symlinked-folder", _wider_folder_link, 4, ("symlinked folder",)),
    ("count-5000-digits", _wider_text("0--Parade/0_Parade_2.jpg", "9" * 5000), 5, ("face count", "100,000")),
    ("count-over-limit", _wider_text("0--Parade/0_Parade_2.jpg", "100001"), 5, ("face count", "100,000")),
    ("count-negative", _wider_text("0--Parade/0_Parade_2.jpg", "-3"), 5, ("face count", "integer >= 0")),
    ("count-superscript-digit", _wider_text("0--Parade/0_Parade_2.jpg", "\u00b2"), 5, ("face count",)),
    ("count-float", _wider_text("0--Parade/0_Parade_2.jpg", "1.0"), 5, ("face count",)),
    ("coordinate-5000-digits", _wider_text("0--Parade/0_Parade_2.jpg", "1", "7" * 5000 + " 2 10 10 0 0 0 0 0 0"),
     6, ("5,000 characters",)),
    ("coordinate-1e999", _wider_text("0--Parade/0_Parade_2.jpg", "1", "1e999 2 10 10 0 0 0 0 0 0"), 6, ("finite",)),
    ("coordinate-nan", _wider_text("0--Parade/0_Parade_2.jpg", "1", "nan 2 10 10 0 0 0 0 0 0"), 6, ("finite",)),
    ("corrupt-image", _wider_corrupt, 4, ("0_Parade_2.jpg", "cannot be read")),
]


@pytest.mark.parametrize("build, line, words", [c[1:] for c in WIDER_CASES], ids=[c[0] for c in WIDER_CASES])
def test_wider_problems_name_file_and_line(wider, build, line, words):
    images, ann = wider
    ann.write_text(build(images), encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_wider_face(ann, images)
    _assert_one_line(err, str(ann), f"line {line}:", *words)


@pytest.mark.parametrize("limit", BOMB_LIMITS)
def test_wider_bomb_image_is_refused(wider, monkeypatch, limit):
    images, ann = wider
    ann.write_text(_wider_bomb(images))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(InputError) as err:
        read_wider_face(ann, images)
    _assert_one_line(err, str(ann), "line 4:", "0_Parade_2.jpg", "decompression-bomb", f"{limit:,}")


@pytest.mark.parametrize("faces, words", [
    ([[0, 0, 0, 10], [5, 5, 10, 0]], "no usable face"),
    ([[1, 2, 10, 10, 0, 0, 0, 1, 0, 0]], "only faces flagged invalid"),
], ids=["only-zero-size-boxes", "only-invalid-faces"])
def test_wider_without_a_usable_face_is_refused(wider, faces, words):
    images, ann = wider
    write_wider_face(ann, [("0--Parade/0_Parade_1.jpg", faces), ("0--Parade/0_Parade_2.jpg", [])])
    with pytest.raises(InputError) as err:
        read_wider_face(ann, images)
    _assert_one_line(err, str(ann), words)


def test_wider_paths_inside_the_folder_are_accepted(wider):
    images, ann = wider
    os.symlink(images / "0--Parade" / "0_Parade_2.jpg", images / "same.jpg")
    ann.write_text(f"0--Parade\\0_Parade_1.jpg\n1\n{GOOD_FACE}\nsame.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n"
                   f"./0--Parade//0_Parade_2.jpg\n{'0' * 5000}1\n{GOOD_FACE}\n")
    data = read_wider_face(ann, images)
    assert [im["file_name"] for im in data["images"]] == ["0--Parade/0_Parade_1.jpg", "same.jpg",
                                                          "./0--Parade//0_Parade_2.jpg"]
    assert len(data["annotations"]) == 2


# --- the sets the project generates itself still pass, sizes included ----------------------------------

@pytest.mark.parametrize("kind", ["digits", "faces"])
def test_embedded_sets_pass_the_full_check(tmp_path, kind):
    if kind == "digits":
        from data.coco_digits import make_digits_coco as make
    else:
        from data.faces import make_faces_coco as make
    made = make(tmp_path / kind, num_train=4, num_val=2, seed=0)
    check_coco_files(made.train_images, made.train_json, IMAGES_FIELD, JSON_FIELD)
    check_coco_files(made.val_images, made.val_json, IMAGES_FIELD, JSON_FIELD)
