"""Exported classifier folder (ONNX + torch.export program), parity with eager torch, and its
ONNX Runtime Predictor (PaddleX-style results and timing)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from core.errors import InputError
from data.transforms import Preprocess
from deploy.classifier_export import MODEL_YML, ONNX_FILE, PROGRAM_FILE, export_classifier, parity
from deploy.onnx_export import WithSoftmax, load_program
from deploy.predictor import ClassifierPredictor
from nas_models.lcnet import build_lcnet

LABELS = ["cat", "dog", "panda"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Preprocess]:
    torch.manual_seed(0)
    model = build_lcnet(0.25, num_classes=3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32))
        # Fresh statistics and the std-0.01 classifier init leave the softmax at ~1/3 for every
        # class, which any comparison would pass; a wider classifier makes outputs differ.
        torch.nn.init.normal_(model.classifier.weight, std=0.3)
    model.eval()
    pre = Preprocess(input_size=32, resize_short=36)
    out = export_classifier(model, {"type": "PPLCNet", "scale": 0.25, "num_classes": 3}, LABELS, pre,
                            tmp_path_factory.mktemp("export") / "inference_model")
    return model, Path(out["model_dir"]), pre


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(40 + i, 48, 3), dtype=np.uint8) for i in range(n)]


def test_folder_and_parity(exported) -> None:
    model, model_dir, pre = exported
    assert sorted(p.name for p in model_dir.iterdir()) == sorted([ONNX_FILE, PROGRAM_FILE, MODEL_YML])
    meta = yaml.safe_load((model_dir / MODEL_YML).read_text())
    assert meta["labels"] == LABELS and meta["transforms"] == pre.to_dict()
    assert meta["files"] == {"onnx": ONNX_FILE, "program": PROGRAM_FILE}
    images = torch.from_numpy(np.stack([pre(im) for im in _images(4)]))
    with torch.no_grad():
        assert WithSoftmax(model)(images).max() > 0.5  # not uniform, so the diffs mean something
    checks = parity(model, model_dir / ONNX_FILE, images)
    assert checks["onnx_max_abs_diff"] < 1e-4 and checks["pt2_max_abs_diff"] < 1e-5


def test_program_runs_any_batch(exported) -> None:
    model, model_dir, pre = exported
    program = load_program(model_dir / PROGRAM_FILE).module()
    for batch in (1, 3):
        x = torch.from_numpy(np.stack([pre(im) for im in _images(batch)]))
        with torch.no_grad():
            expected, got = WithSoftmax(model)(x), program(x)
        assert got.shape == (batch, len(LABELS))
        assert torch.allclose(got, expected, atol=1e-5)


def test_predictor_matches_torch_and_times(exported) -> None:
    model, model_dir, pre = exported
    images = _images(3)
    predictor = ClassifierPredictor(model_dir, threads=1)
    results = predictor.predict(images, topk=2, warmup=2, repeats=3)
    with torch.no_grad():
        probs = WithSoftmax(model)(torch.from_numpy(np.stack([pre(im) for im in images])))
    for result, p in zip(results, probs):
        assert [r["category_id"] for r in result] == p.argsort(descending=True)[:2].tolist()
        assert result[0]["category"] == LABELS[result[0]["category_id"]]
        assert result[0]["score"] == pytest.approx(p.max().item(), abs=1e-4)
    info = predictor.time_info.as_dict()
    assert info["img_num"] == 9 and info["batch_size"] == 1  # 3 timed passes over 3 images
    assert "Inference Time Info" in predictor.time_info.report()
    single = predictor.predict(Image.fromarray(images[0]), topk=1)
    assert len(single) == 1 and single[0][0]["category_id"] == results[0][0]["category_id"]


def test_predictor_rejects_a_folder_without_model_yml(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="model_dir"):
        ClassifierPredictor(tmp_path)
