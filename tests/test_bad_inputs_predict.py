"""`spnas predict` on bad input: one line `error: <flag>: ...` on stderr and exit code 2, never a
traceback from ONNX Runtime, YAML or range(); and one good run for contrast.

A real classifier folder is exported once per module (tiny PP-LCNet); each bad case works on
its own copy with one thing broken: a model.yml value out of range, a model.yml that disagrees
with the graph, or a small hand-built ONNX graph (onnx.helper, no export) whose shapes do not fit
or that fails inside ONNX Runtime.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from onnx import TensorProto, helper, numpy_helper
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


def _onnx_bytes(nodes: list, inputs: list, outputs: list, inits: list) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


def _classifier_onnx(batch: int | str = "N", channels: int | str = 3, size: int | str = "s",
                     classes: int = 3, hidden_classes: bool = False,
                     in_type: int = TensorProto.FLOAT, flat: int | None = None,
                     collapse_batch: bool = False, out_rank: int = 2,
                     two_inputs: bool = False) -> bytes:
    """image [batch, channels, size, size] -> mean per channel (or a Reshape to [-1, flat]) ->
    MatMul -> Softmax -> probabilities [batch, classes]: a stand-in export in milliseconds.
    `hidden_classes`: the first `classes` pixels instead, a count ORT cannot see in the graph."""
    shape = [batch, channels, size, size]
    nodes, inits = [], []
    x = "image"
    if in_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [x], ["x32"], to=TensorProto.FLOAT))
        x = "x32"
    if hidden_classes:
        for name, value in (("starts", 0), ("ends", classes), ("axes", 1)):
            inits.append(numpy_helper.from_array(np.array([value], dtype=np.int64), name))
        nodes += [helper.make_node("Flatten", [x], ["features"], axis=1),
                  helper.make_node("Slice", ["features", "starts", "ends", "axes"], ["logits"])]
    else:
        if flat:
            inits.append(numpy_helper.from_array(np.array([-1, flat], dtype=np.int64),
                                                 "flat_shape"))
            nodes.append(helper.make_node("Reshape", [x, "flat_shape"], ["features"]))
            width = flat
        else:
            nodes += [helper.make_node("GlobalAveragePool", [x], ["pooled"]),
                      helper.make_node("Flatten", ["pooled"], ["features"], axis=1)]
            width = channels if isinstance(channels, int) else 3
        features = "features"
        if collapse_batch:  # [N, 3] -> [1, 3N]: MatMul fails at run time for N > 1
            inits.append(numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "one_row"))
            nodes.append(helper.make_node("Reshape", [features, "one_row"], ["rows"]))
            features = "rows"
        weight = np.random.default_rng(2).normal(size=(width, classes)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, "weight"))
        nodes.append(helper.make_node("MatMul", [features, "weight"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
    out_shape = [batch, "C" if hidden_classes else classes]
    if out_rank == 3:
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"))
        nodes.append(helper.make_node("Unsqueeze", ["probs", "axis1"], ["probabilities"]))
        out_shape = [batch, 1, out_shape[1]]
    else:
        nodes.append(helper.make_node("Identity", ["probs"], ["probabilities"]))
    inputs = [helper.make_tensor_value_info("image", in_type, shape)]
    if two_inputs:
        inputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    return _onnx_bytes(nodes, inputs,
                       [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, out_shape)],
                       inits)


def _detector_onnx(shape: tuple = (3, "height", "width"), flat: int | None = None,
                   outputs: tuple[str, ...] = ("boxes", "labels", "scores")) -> bytes:
    """image [3, H, W] -> one box [[1, 2, 10, 12]], label 1, score = the brightest pixel (after
    a Reshape to [3, flat] when `flat` is given: ONNX Runtime then fails on other sizes)."""
    nodes, inits = [], []
    x = "image"
    if flat:
        inits.append(numpy_helper.from_array(np.array([3, flat], dtype=np.int64), "flat_shape"))
        nodes.append(helper.make_node("Reshape", [x, "flat_shape"], ["flat"]))
        x = "flat"
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "one"))
    nodes += [helper.make_node("ReduceMax", [x], ["peak"], keepdims=1),
              helper.make_node("Reshape", ["peak", "one"], [outputs[2]]),
              helper.make_node("Constant", [], [outputs[0]], value=numpy_helper.from_array(
                  np.array([[1, 2, 10, 12]], dtype=np.float32))),
              helper.make_node("Constant", [], [outputs[1]], value=numpy_helper.from_array(
                  np.array([1], dtype=np.int64)))]
    return _onnx_bytes(
        nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(outputs[0], TensorProto.FLOAT, ["n", 4]),
         helper.make_tensor_value_info(outputs[1], TensorProto.INT64, ["n"]),
         helper.make_tensor_value_info(outputs[2], TensorProto.FLOAT, ["n"])], inits)


def _with_onnx(**graph: object) -> Callable[[dict[str, object], Path], Path]:
    """A copy of the folder whose model.onnx is a hand-built classifier graph."""
    return _with_file(ONNX_FILE, _classifier_onnx(**graph))


def _with_yml(edit: Callable[[dict], object]) -> Callable[[dict[str, object], Path], Path]:
    """A copy of the folder with model.yml loaded, changed by `edit` in place, written back."""
    def make(exported: dict[str, object], tmp_path: Path) -> Path:
        folder = _copy(exported, tmp_path)
        meta = yaml.safe_load((folder / MODEL_YML).read_text())
        edit(meta)
        (folder / MODEL_YML).write_text(yaml.safe_dump(meta, sort_keys=False))
        return folder
    return make


def _set(path: str, value: object) -> Callable[[dict], None]:
    """An edit setting model.yml's dotted `path` to `value`."""
    def edit(meta: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            meta = meta[key]
        meta[last] = value
    return edit


def _special(name: str, kind: str) -> Callable[[dict[str, object], Path], Path]:
    """A copy of the folder whose `name` is a FIFO (which a plain read would block on) or a
    folder."""
    def make(exported: dict[str, object], tmp_path: Path) -> Path:
        folder = _copy(exported, tmp_path)
        (folder / name).unlink()
        if kind == "fifo":
            os.mkfifo(folder / name)
        else:
            (folder / name).mkdir()
        return folder
    return make


def _truncated_onnx(exported: dict[str, object], tmp_path: Path) -> Path:
    folder = _copy(exported, tmp_path)
    data = (folder / ONNX_FILE).read_bytes()
    (folder / ONNX_FILE).write_bytes(data[: len(data) // 2])
    return folder


def _yml_text(exported: dict[str, object], extra: str) -> bytes:
    """The exported model.yml's text with `extra` appended (for keys yaml.safe_dump cannot write)."""
    return (exported["model_dir"] / MODEL_YML).read_bytes() + extra.encode()


def _yml_plus(extra: str) -> Callable[[dict[str, object], Path], Path]:
    def make(exported: dict[str, object], tmp_path: Path) -> Path:
        return _with_file(MODEL_YML, _yml_text(exported, extra))(exported, tmp_path)
    return make


def _wide_image_folder(exported: dict[str, object], tmp_path: Path) -> Path:
    Image.new("RGB", (70_000, 1)).save(tmp_path / "strip.png")  # resized: 36 x 2,520,000 px
    return exported["model_dir"]


def _big_input_folder(exported: dict[str, object], tmp_path: Path) -> Path:
    """A 4096 px model with a fixed batch of 64: one batch would be 12 GiB of float32."""
    folder = _with_onnx(batch=64, size=4096)(exported, tmp_path)
    meta = yaml.safe_load((folder / MODEL_YML).read_text())
    meta["transforms"].update(input_size=4096, resize_short=4096)
    meta["input"]["size"] = 4096
    (folder / MODEL_YML).write_text(yaml.safe_dump(meta, sort_keys=False))
    return folder


FLAT_INPUT_ONNX = _onnx_bytes(  # image [N, 3]: no height or width
    [helper.make_node("Softmax", ["image"], ["probabilities"], axis=-1)],
    [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3])],
    [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])], [])
BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))


def _many_labels(exported: dict[str, object], tmp_path: Path) -> Path:
    """10,000 labels, written compactly so that model.yml stays under its 64 KiB limit."""
    folder = _yml_without("labels")(exported, tmp_path)
    with (folder / MODEL_YML).open("a") as handle:
        handle.write("labels: [" + ",".join(f"c{i}" for i in range(10_000)) + "]\n")
    assert (folder / MODEL_YML).stat().st_size < 64 * 1024
    return folder


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
    ("image-extreme-aspect", _wide_image_folder, [], ["strip.png"], "images"),
    # model.yml as a file: what it is, how big, and what the safe YAML loader refuses.
    ("yml-fifo", _special(MODEL_YML, "fifo"), [], None, "--model-dir"),
    ("yml-is-a-folder", _special(MODEL_YML, "folder"), [], None, "--model-dir"),
    ("yml-over-64-kib", _yml_plus("#" * 70_000 + "\n"), [], None, "--model-dir"),
    ("yml-alias-bomb", _yml_plus(BILLION_LAUGHS), [], None, "--model-dir"),
    ("yml-duplicate-key", _yml_plus("labels: [a, b, c]\n"), [], None, "--model-dir"),
    ("yml-huge-int", _yml_plus("extra: " + "9" * 5000 + "\n"), [], None, "--model-dir"),
    ("yml-deep-nesting", _yml_plus("extra: " + "[" * 200 + "]" * 200 + "\n"), [], None,
     "--model-dir"),
    # model.yml values out of range: the line names the key.
    ("yml-std-0", _with_yml(_set("transforms.std", [0.0, 0.2, 0.2])), [], None, "--model-dir"),
    ("yml-std-negative", _with_yml(_set("transforms.std", [-0.2, 0.2, 0.2])), [], None,
     "--model-dir"),
    ("yml-std-nan", _with_yml(_set("transforms.std", [float("nan"), 0.2, 0.2])), [], None,
     "--model-dir"),
    ("yml-mean-2-numbers", _with_yml(_set("transforms.mean", [0.5, 0.5])), [], None, "--model-dir"),
    ("yml-mean-huge", _with_yml(_set("transforms.mean", [1e300, 0.0, 0.0])), [], None,
     "--model-dir"),
    ("yml-mean-29-digit-int", _with_yml(_set("transforms.mean", [10 ** 28, 0, 0])), [], None,
     "--model-dir"),
    ("yml-mean-strings", _with_yml(_set("transforms.mean", ["a", "b", "c"])), [], None,
     "--model-dir"),
    ("yml-input-size-0", _with_yml(_set("transforms.input_size", 0)), [], None, "--model-dir"),
    ("yml-input-size-huge", _with_yml(_set("transforms.input_size", 100_000)), [], None,
     "--model-dir"),
    ("yml-input-size-bool", _with_yml(_set("transforms.input_size", True)), [], None, "--model-dir"),
    ("yml-input-size-float", _with_yml(_set("transforms.input_size", 32.5)), [], None,
     "--model-dir"),
    ("yml-resize-below-crop", _with_yml(_set("transforms.resize_short", 16)), [], None,
     "--model-dir"),
    ("yml-resize-huge", _with_yml(_set("transforms.resize_short", 10 ** 6)), [], None,
     "--model-dir"),
    ("yml-channel-order", _with_yml(_set("transforms.channel_order", "GRB")), [], None,
     "--model-dir"),
    ("yml-transforms-a-list", _with_yml(_set("transforms", [1, 2])), [], None, "--model-dir"),
    ("yml-10000-labels", _many_labels, [], None, "--model-dir"),
    ("yml-no-labels", _with_yml(_set("labels", [])), [], None, "--model-dir"),
    ("yml-duplicate-labels", _with_yml(_set("labels", ["cat", "dog", "cat"])), [], None,
     "--model-dir"),
    ("yml-label-ansi-escape", _with_yml(_set("labels", ["cat", "\x1b[31mdog", "panda"])), [], None,
     "--model-dir"),
    ("yml-label-empty", _with_yml(_set("labels", ["cat", "", "panda"])), [], None, "--model-dir"),
    ("yml-label-too-long", _with_yml(_set("labels", ["cat", "x" * 1000, "panda"])), [], None,
     "--model-dir"),
    ("yml-label-numbers", _with_yml(_set("labels", [1, 2, 3])), [], None, "--model-dir"),
    ("yml-onnx-outside-folder", _with_yml(_set("files.onnx", "../model.onnx")), [], None,
     "--model-dir"),
    ("yml-onnx-device", _with_yml(_set("files.onnx", "/dev/zero")), [], None, "--model-dir"),
    ("yml-input-size-disagrees", _with_yml(_set("input.size", 64)), [], None, "--model-dir"),
    ("yml-input-order-disagrees", _with_yml(_set("input.channel_order", "BGR")), [], None,
     "--model-dir"),
    # model.yml against the graph's shapes (read from the session before anything runs).
    ("yml-size-vs-onnx-32", _with_yml(lambda m: (m["transforms"].update(input_size=64,
                                                                         resize_short=72),
                                                  m["input"].update(size=64))), [], None,
     "--model-dir"),
    ("yml-2-labels-vs-onnx-3", _with_yml(_set("labels", ["cat", "dog"])), [], None, "--model-dir"),
    ("onnx-fixed-64px", _with_onnx(size=64), [], None, "--model-dir"),
    ("onnx-1-channel", _with_onnx(channels=1), [], None, "--model-dir"),
    ("onnx-5-classes", _with_onnx(classes=5), [], None, "--model-dir"),
    ("onnx-2d-input", _with_file(ONNX_FILE, FLAT_INPUT_ONNX), [], None, "--model-dir"),
    ("onnx-double-input", _with_onnx(in_type=TensorProto.DOUBLE), [], None, "--model-dir"),
    ("onnx-two-inputs", _with_onnx(two_inputs=True), [], None, "--model-dir"),
    ("onnx-3d-output", _with_onnx(out_rank=3), [], None, "--model-dir"),
    ("onnx-truncated", _truncated_onnx, [], None, "--model-dir"),
    ("onnx-text", _with_file(ONNX_FILE, b"ir_version: 9\ngraph { name: 'g' }\n"), [], None,
     "--model-dir"),
    ("onnx-is-a-folder", _special(ONNX_FILE, "folder"), [], None, "--model-dir"),
    # Batch size against a fixed batch dimension: refused before running.
    ("onnx-fixed-batch-1", _with_onnx(batch=1), ["--batch-size", "2"], None, "--batch-size"),
    ("onnx-fixed-batch-2", _with_onnx(batch=2), [], None, "--batch-size"),
    ("batch-over-2-gib", _big_input_folder, ["--batch-size", "64"], None, "--batch-size"),
    # ONNX Runtime errors while running: one line quoting ORT, on the field that caused it.
    ("ort-reshape-fails", _with_onnx(flat=3 * 64 * 64), [], None, "--model-dir"),
    ("ort-batch-collapse", _with_onnx(collapse_batch=True), ["--batch-size", "2"], None,
     "--model-dir"),
    ("ort-output-5-classes", _with_onnx(classes=5, hidden_classes=True), [], None, "--model-dir"),
]

# What the one line must also say (the key, the values compared, ...).
MENTIONS = {
    "image-extreme-aspect": "70000x1",
    "yml-fifo": "not a regular file", "yml-is-a-folder": "not a regular file",
    "yml-over-64-kib": "65,536-byte limit", "yml-alias-bomb": "aliases",
    "yml-duplicate-key": "appears twice", "yml-huge-int": "digits", "yml-deep-nesting": "nests",
    "yml-std-0": "'transforms.std'", "yml-std-negative": "'transforms.std'",
    "yml-std-nan": "'transforms.std'", "yml-mean-2-numbers": "'transforms.mean'",
    "yml-mean-huge": "'transforms.mean'", "yml-mean-29-digit-int": "'transforms.mean'",
    "yml-mean-strings": "'transforms.mean'",
    "yml-input-size-0": "'transforms.input_size'", "yml-input-size-huge": "'transforms.input_size'",
    "yml-input-size-bool": "'transforms.input_size'",
    "yml-input-size-float": "'transforms.input_size'",
    "yml-resize-below-crop": "'transforms.resize_short'",
    "yml-resize-huge": "'transforms.resize_short'",
    "yml-channel-order": "'transforms.channel_order'", "yml-transforms-a-list": "'transforms'",
    "yml-10000-labels": "10,000 names", "yml-no-labels": "'labels'",
    "yml-duplicate-labels": "'cat' twice", "yml-label-ansi-escape": "'labels[1]'",
    "yml-label-empty": "'labels[1]'", "yml-label-too-long": "'labels[1]'",
    "yml-label-numbers": "'labels[0]'", "yml-onnx-outside-folder": "'files.onnx'",
    "yml-onnx-device": "'files.onnx'", "yml-input-size-disagrees": "'input.size' is 64",
    "yml-input-order-disagrees": "'input.channel_order' is BGR",
    "yml-size-vs-onnx-32": "height 32", "yml-2-labels-vs-onnx-3": "outputs 3 classes",
    "onnx-fixed-64px": "height 64", "onnx-1-channel": "1-channel",
    "onnx-5-classes": "outputs 5 classes", "onnx-2d-input": "2-D input",
    "onnx-double-input": "tensor(double)", "onnx-two-inputs": "2 inputs",
    "onnx-3d-output": "3-D", "onnx-truncated": "not a loadable ONNX model",
    "onnx-text": "not a loadable ONNX model", "onnx-is-a-folder": "missing",
    "onnx-fixed-batch-1": "fixed batch of 1", "onnx-fixed-batch-2": "fixed batch of 2",
    "batch-over-2-gib": "GiB", "ort-reshape-fails": "ONNX Runtime refused",
    "ort-batch-collapse": "ONNX Runtime refused", "ort-output-5-classes": "[1, 5]",
}


@pytest.mark.parametrize(("make_folder", "extra", "image_args", "field"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(exported, tmp_path: Path, capfd, request, make_folder,
                                          extra: list[str], image_args: list[str] | None,
                                          field: str) -> None:
    folder = make_folder(exported, tmp_path)
    (tmp_path / "notes.png").write_text("not an image\n")
    images = ([str(tmp_path / a) for a in image_args] if image_args
              else [str(p) for p in exported["images"]])
    before = sorted(tmp_path.rglob("*"))
    code = main(["predict", "--model-dir", str(folder), *extra, *images])
    out, err = capfd.readouterr()  # fd 2 too: ONNX Runtime logs there
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {field}: "), err
    assert lines[0].isprintable() and "Traceback" not in err, err
    assert request.node.callspec.id not in MENTIONS or MENTIONS[request.node.callspec.id] in err, err
    assert out == ""
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_fixed_batch_pads_the_last_batch(exported, tmp_path: Path, capsys) -> None:
    """A graph with a fixed batch of 2 runs 3 images with --batch-size 2 (the last batch
    padded), with the same scores as a dynamic-batch graph of the same weights."""
    images = [str(p) for p in exported["images"]] + [str(exported["images"][0])]
    scores = []
    for batch in (2, "N"):
        folder = _with_onnx(batch=batch)(exported, tmp_path / str(batch))
        code = main(["predict", "--model-dir", str(folder), "--batch-size", "2", "--topk", "3",
                     *images])
        out, err = capsys.readouterr()
        assert code == 0, err
        records = [json.loads(line) for line in out.splitlines()[:3]]
        assert [r["image"] for r in records] == images
        scores.append([c["score"] for r in records for c in r["result"]])
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)


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

DETECTOR_ONNX = _detector_onnx()
DETECTOR_YML = "task: detection\nlabels: [__background__, digit]\nfiles: {onnx: model.onnx}\n"


def _detector_folder(exported: dict[str, object], tmp_path: Path, onnx: bytes | None = None,
                     yml: str | None = None, yml_fifo: bool = False) -> Path:
    """A detector folder: model.yml over a hand-built stand-in graph (one float [3, H, W] image
    in; boxes, labels, scores out) unless `onnx` gives other bytes."""
    folder = tmp_path / "detector"
    folder.mkdir()
    (folder / ONNX_FILE).write_bytes(DETECTOR_ONNX if onnx is None else onnx)
    if yml_fifo:
        os.mkfifo(folder / MODEL_YML)
    else:
        (folder / MODEL_YML).write_text(yml if yml is not None else DETECTOR_YML)
    return folder


def _detector_yml(labels: str = "[__background__, digit]", extra: str = "") -> str:
    return f"task: detection\nlabels: {labels}\nfiles: {{onnx: model.onnx}}\n{extra}"


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
    # model.yml: the file itself and its values.
    ("yml-fifo", {"yml_fifo": True}, {}, None, None, "model_dir"),
    ("yml-over-64-kib", {"yml": DETECTOR_YML + "#" * 70_000 + "\n"}, {}, None, None, "model_dir"),
    ("yml-alias-bomb", {"yml": DETECTOR_YML + BILLION_LAUGHS}, {}, None, None, "model_dir"),
    ("yml-task-classifier", {"yml": DETECTOR_YML.replace("detection", "classification")}, {},
     None, None, "model_dir"),
    ("yml-only-background", {"yml": _detector_yml("[__background__]")}, {}, None, None,
     "model_dir"),
    ("yml-duplicate-labels", {"yml": _detector_yml("[__background__, digit, digit]")}, {}, None,
     None, "model_dir"),
    ("yml-label-ansi-escape", {"yml": _detector_yml('[__background__, "\\e[2Jdigit"]')}, {}, None,
     None, "model_dir"),
    ("yml-10000-labels", {"yml": _detector_yml("[" + ",".join(f"c{i}" for i in range(10_000))
                                               + "]")}, {}, None, None, "model_dir"),
    ("yml-onnx-outside-folder", {"yml": DETECTOR_YML.replace("onnx: model.onnx",
                                                             "onnx: ../../model.onnx")}, {},
     None, None, "model_dir"),
    ("yml-image-size-0", {"yml": _detector_yml(extra="image_size: 0\n")}, {}, None, None,
     "model_dir"),
    ("yml-image-size-huge", {"yml": _detector_yml(extra="image_size: 1000000\n")}, {}, None,
     None, "model_dir"),
    ("yml-bgr-input", {"yml": _detector_yml(extra="input: {channel_order: BGR}\n")}, {}, None,
     None, "model_dir"),
    # The graph: a classifier's, a batch input, 1 channel, outputs not named as an export's.
    ("onnx-classifier-graph", {"onnx": _classifier_onnx()}, {}, None, None, "model_dir"),
    ("onnx-batched-input", {"onnx": _detector_onnx(shape=(1, 3, "h", "w"))}, {}, None, None,
     "model_dir"),
    ("onnx-1-channel", {"onnx": _detector_onnx(shape=(1, "h", "w"))}, {}, None, None,
     "model_dir"),
    ("onnx-other-outputs", {"onnx": _detector_onnx(outputs=("b", "l", "s"))}, {}, None, None,
     "model_dir"),
    ("onnx-truncated", {"onnx": DETECTOR_ONNX[: len(DETECTOR_ONNX) // 2]}, {}, None, None,
     "model_dir"),
    # Refused at predict: an image the fixed-size graph cannot take, an error inside ORT.
    ("onnx-fixed-32px-vs-40x48", {"onnx": _detector_onnx(shape=(3, 32, 32))}, {}, {}, None,
     "images"),
    ("ort-reshape-fails", {"onnx": _detector_onnx(flat=32 * 32)}, {}, {}, None, "model_dir"),
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
    assert "\n" not in str(err.value) and str(err.value).isprintable()


def test_detector_stand_in_predicts(exported, tmp_path: Path) -> None:
    """The stand-in detector graph runs: one box per image, scored by its brightest pixel."""
    from deploy.detector_predictor import DetectorPredictor

    predictor = DetectorPredictor(_detector_folder(exported, tmp_path), score_threshold=0.0)
    results = predictor.predict([str(p) for p in exported["images"]])
    assert [[d["category"] for d in r] for r in results] == [["digit"], ["digit"]]
    assert results[0][0]["bbox"] == [1.0, 2.0, 10.0, 12.0]
    assert 0.9 < results[0][0]["score"] <= 1.0
