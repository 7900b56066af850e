"""`spnas predict` on bad input: one line `error: <flag>: ...` on stderr and exit code 2, never a
traceback from ONNX Runtime, YAML or range(); and one good run for contrast.

A real classifier folder is exported once per module (tiny PP-LCNet); each bad case works on
its own copy with one thing broken.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.transforms import Preprocess
from deploy.classifier_export import MODEL_YML, ONNX_FILE, export_classifier
from deploy.onnx_export import WithSoftmax
from nas_models.lcnet import build_lcnet
from spnas.cli import main

LABELS = ["cat", "dog", "panda"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    torch.manual_seed(0)
    model = build_lcnet(0.25, num_classes=len(LABELS))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32))
        torch.nn.init.normal_(model.classifier.weight, std=0.3)  # outputs not all ~1/3
    model.eval()
    pre = Preprocess(input_size=32, resize_short=36)
    root = tmp_path_factory.mktemp("predict")
    out = export_classifier(model, {"type": "PPLCNet", "scale": 0.25}, LABELS, pre,
                            root / "inference_model")
    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(path)
        images.append(path)
    return {"model_dir": Path(out["model_dir"]), "images": images, "model": model, "pre": pre}


def _copy(exported: dict[str, object], tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(exported["model_dir"], target)
    return target


def _with_file(name: str, content: bytes | None) -> Callable[[dict[str, object], Path], Path]:
    """A copy of the folder with `name` replaced by `content` (None: deleted)."""
    def make(exported: dict[str, object], tmp_path: Path) -> Path:
        folder = _copy(exported, tmp_path)
        if content is None:
            (folder / name).unlink()
        else:
            (folder / name).write_bytes(content)
        return folder
    return make


def _yml_without(key: str) -> Callable[[dict[str, object], Path], Path]:
    def make(exported: dict[str, object], tmp_path: Path) -> Path:
        folder = _copy(exported, tmp_path)
        lines = (folder / MODEL_YML).read_text().splitlines()
        # Top-level key and its indented block.
        kept, skipping = [], False
        for line in lines:
            if line.startswith(f"{key}:"):
                skipping = True
                continue
            if skipping and (line.startswith(" ") or line.startswith("- ")):
                continue
            skipping = False
            kept.append(line)
        (folder / MODEL_YML).write_text("\n".join(kept) + "\n")
        return folder
    return make


def _good_folder(exported: dict[str, object], tmp_path: Path) -> Path:
    return exported["model_dir"]


def _missing_folder(exported: dict[str, object], tmp_path: Path) -> Path:
    return tmp_path / "no_such_folder"


def _file_not_folder(exported: dict[str, object], tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    shutil.copy(exported["model_dir"] / ONNX_FILE, path)
    return path


RANDOM_BYTES = np.random.default_rng(1).integers(0, 256, size=4096, dtype=np.uint8).tobytes()

# (id, model folder maker, extra argv, image argv (None: the good images), field named)
CASES = [
    ("onnx-random-bytes", _with_file(ONNX_FILE, RANDOM_BYTES), [], None, "--model-dir"),
    ("onnx-empty", _with_file(ONNX_FILE, b""), [], None, "--model-dir"),
    ("onnx-missing", _with_file(ONNX_FILE, None), [], None, "--model-dir"),
    ("yml-missing", _with_file(MODEL_YML, None), [], None, "--model-dir"),
    ("yml-parser-error", _with_file(MODEL_YML, b"labels: [cat, dog\nfiles: {onnx: model.onnx\n"),
     [], None, "--model-dir"),
    ("yml-binary", _with_file(MODEL_YML, RANDOM_BYTES), [], None, "--model-dir"),
    ("yml-not-a-mapping", _with_file(MODEL_YML, b"- just\n- a list\n"), [], None, "--model-dir"),
    ("yml-without-labels", _yml_without("labels"), [], None, "--model-dir"),
    ("yml-without-files", _yml_without("files"), [], None, "--model-dir"),
    ("yml-without-transforms", _yml_without("transforms"), [], None, "--model-dir"),
    ("folder-missing", _missing_folder, [], None, "--model-dir"),
    ("folder-is-a-file", _file_not_folder, [], None, "--model-dir"),
    ("batch-size-0", _good_folder, ["--batch-size", "0"], None, "--batch-size"),
    ("topk-0", _good_folder, ["--topk", "0"], None, "--topk"),
    ("topk-negative", _good_folder, ["--topk", "-2"], None, "--topk"),
    ("repeats-0", _good_folder, ["--repeats", "0"], None, "--repeats"),
    ("warmup-negative", _good_folder, ["--warmup", "-1"], None, "--warmup"),
    ("threads-0", _good_folder, ["--threads", "0"], None, "--threads"),
    # Counts are checked before the folder is even opened.
    ("topk-0-and-no-folder", _missing_folder, ["--topk", "0"], None, "--topk"),
    ("image-missing", _good_folder, [], ["missing.png"], "images"),
    ("image-not-an-image", _good_folder, [], ["notes.png"], "images"),
    ("image-is-a-folder", _good_folder, [], ["."], "images"),
]


@pytest.mark.parametrize(("make_folder", "extra", "image_args", "field"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(exported, tmp_path: Path, capsys, make_folder,
                                          extra: list[str], image_args: list[str] | None,
                                          field: str) -> None:
    folder = make_folder(exported, tmp_path)
    (tmp_path / "notes.png").write_text("not an image\n")
    images = ([str(tmp_path / a) for a in image_args] if image_args
              else [str(p) for p in exported["images"]])
    code = main(["predict", "--model-dir", str(folder), *extra, *images])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {field}: "), err
    assert out == ""


def test_good_input_prints_topk_per_image(exported, capsys) -> None:
    images = [str(p) for p in exported["images"]]
    code = main(["predict", "--model-dir", str(exported["model_dir"]), "--topk", "2",
                 "--batch-size", "2", "--warmup", "1", "--repeats", "2", *images])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    records = [json.loads(line) for line in lines[:len(images)]]
    assert [r["image"] for r in records] == images
    pre, model = exported["pre"], exported["model"]
    with torch.no_grad():
        probs = WithSoftmax(model)(torch.from_numpy(np.stack(
            [pre(Image.open(p).convert("RGB")) for p in images])))
    for record, p in zip(records, probs):
        result = record["result"]
        assert len(result) == 2
        assert [r["category_id"] for r in result] == p.argsort(descending=True)[:2].tolist()
        assert all(r["category"] == LABELS[r["category_id"]] for r in result)
        assert result[0]["score"] >= result[1]["score"]
        assert result[0]["score"] == pytest.approx(p.max().item(), abs=1e-4)
    assert "Inference Time Info" in out and "img_num: 4" in out  # 2 timed passes x 2 images


# --- DetectorPredictor: the same checks through the Python API ------------------------------

def _detector_folder(exported: dict[str, object], tmp_path: Path, onnx: bytes | None = None,
                     yml: str | None = None) -> Path:
    """A detector folder's model.yml over some ONNX file. The checks under test all run
    before a graph is executed, so any loadable graph (the classifier's) stands in."""
    folder = tmp_path / "detector"
    folder.mkdir()
    if onnx is None:
        shutil.copy(exported["model_dir"] / ONNX_FILE, folder / ONNX_FILE)
    else:
        (folder / ONNX_FILE).write_bytes(onnx)
    (folder / MODEL_YML).write_text(yml if yml is not None else
                                    "task: detection\nlabels: [__background__, digit]\n"
                                    "files: {onnx: model.onnx}\n")
    return folder


DETECTOR_CASES = [
    # (id, folder kwargs, constructor kwargs, predict kwargs, images (None: good), field)
    ("onnx-random-bytes", {"onnx": RANDOM_BYTES}, {}, None, None, "model_dir"),
    ("onnx-empty", {"onnx": b""}, {}, None, None, "model_dir"),
    ("yml-parser-error", {"yml": "task: detection\nlabels: [a, b\n"}, {}, None, None, "model_dir"),
    ("yml-without-labels", {"yml": "task: detection\nfiles: {onnx: model.onnx}\n"}, {}, None,
     None, "model_dir"),
    ("threads-0", {}, {"threads": 0}, None, None, "threads"),
    ("score-threshold", {}, {"score_threshold": 2.0}, None, None, "score_threshold"),
    ("warmup-negative", {}, {}, {"warmup": -1}, None, "warmup"),
    ("repeats-0", {}, {}, {"repeats": 0}, None, "repeats"),
    ("image-missing", {}, {}, {}, ["missing.png"], "images"),
    ("image-not-an-image", {}, {}, {}, ["notes.png"], "images"),
]


@pytest.mark.parametrize(("folder_kw", "init_kw", "predict_kw", "image_names", "field"),
                         [c[1:] for c in DETECTOR_CASES], ids=[c[0] for c in DETECTOR_CASES])
def test_detector_predictor_bad_input(exported, tmp_path: Path, folder_kw: dict, init_kw: dict,
                                      predict_kw: dict | None, image_names: list[str] | None,
                                      field: str) -> None:
    from deploy.detector_predictor import DetectorPredictor
    from core.errors import InputError

    folder = _detector_folder(exported, tmp_path, **folder_kw)
    (tmp_path / "notes.png").write_text("not an image\n")
    images = ([str(tmp_path / n) for n in image_names] if image_names
              else [str(p) for p in exported["images"]])
    if predict_kw is None:  # the folder or a constructor argument is refused
        with pytest.raises(InputError) as err:
            DetectorPredictor(folder, **init_kw)
    else:
        predictor = DetectorPredictor(folder, **init_kw)
        with pytest.raises(InputError) as err:
            predictor.predict(images, **predict_kw)
    assert err.value.field == field
    assert "\n" not in str(err.value)
