"""Static int8 export (deploy/quantize.py): a classifier's int8 twin folder loads and predicts through
the same Predictor as the float one, its accuracy delta and latency ratio are computed, a failed
quantization keeps the float model and names why, the export params are bounded, and `spnas
compare` puts the int8 figures in a section of their own."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from core.errors import InputError
from data.transforms import Preprocess
from deploy.classifier_export import (INT8_DIR, MODEL_YML, ONNX_FILE, export_classifier, export_int8, int8_figures,
                                      int8_twin, top1_agreement)
from deploy.predictor import ClassifierPredictor
from deploy.quantize import QuantizationError, quantize_onnx
from latency.measure import TimingConfig, interleaved_ms
from nas_models.lcnet import build_lcnet
from params.models import ClassifierExportParams, DetectorExportParams, FaceExportParams

LABELS = ["cat", "dog", "panda"]
QUICK = TimingConfig(warmup=1, rounds=2, number=3, passes=1)


def _quick_ms(fns):
    return interleaved_ms(fns, QUICK)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Preprocess, np.ndarray]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_lcnet(0.25, num_classes=3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # one batch sets the statistics exactly
    model.train()
    calibration = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        model(calibration)
        torch.nn.init.normal_(model.classifier.weight, std=0.3)  # outputs that differ between classes
    model.eval()
    pre = Preprocess(input_size=32, resize_short=36)
    out = export_classifier(model, {"type": "PPLCNet", "scale": 0.25, "num_classes": 3}, LABELS, pre,
                            tmp_path_factory.mktemp("q") / "inference_model")
    return Path(out["model_dir"]), pre, calibration.numpy()


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(40 + i, 48, 3), dtype=np.uint8) for i in range(n)]


def test_int8_folder_predicts_like_the_float_one(exported) -> None:
    float_dir, pre, calibration = exported
    q = export_int8(float_dir, calibration, max_images=8)
    int8_dir = float_dir.parent / INT8_DIR
    assert Path(q.path) == int8_dir / ONNX_FILE and q.calibration_images == 8
    assert q.qdq_nodes > 0 and "Conv" in q.op_types and "Softmax" not in q.op_types
    assert sorted(p.name for p in int8_dir.iterdir()) == sorted([ONNX_FILE, MODEL_YML])
    float_meta = yaml.safe_load((float_dir / MODEL_YML).read_text())
    meta = yaml.safe_load((int8_dir / MODEL_YML).read_text())
    assert meta["labels"] == float_meta["labels"] and meta["transforms"] == float_meta["transforms"]
    assert meta["files"] == {"onnx": ONNX_FILE}
    block = meta["quantization"]
    assert (block["method"], block["dtype"], block["format"]) == ("static", "int8", "QDQ")
    assert block["calibration"]["images"] == 8 and block["calibration"]["source"] == "training images"
    agreement = block["weights_chosen_by"]["top1_agreement_with_float"]
    assert 0 <= agreement["per_tensor"] <= 1 and q.per_channel == (agreement.get("per_channel", 0) > agreement["per_tensor"])
    images = _images(3)
    got = ClassifierPredictor(int8_dir, threads=1).predict(images, topk=2)
    want = ClassifierPredictor(float_dir, threads=1).predict(images, topk=2)
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        assert [sorted(d) for d in g] == [sorted(d) for d in w]  # same keys, same shape of output
        assert {d["category"] for d in g} <= set(LABELS)
        assert all(0.0 <= d["score"] <= 1.0 for d in g)


@pytest.mark.parametrize("per_channel_agrees", [1.0, 0.25])
def test_weights_go_per_channel_when_per_tensor_disagrees_with_float(exported, monkeypatch,
                                                                     per_channel_agrees: float) -> None:
    # Measured on SPOS paths: per-tensor weights kept 0.25-0.63 test top-1 of 0.83-0.92 (affine-free
    # BatchNorm folded into convolutions), per-channel lost nothing. Here the agreement is staged.
    import deploy.classifier_export as ce

    float_dir, pre, calibration = exported
    seen = []

    def agreement(float_onnx, int8_onnx, images):
        per_channel = Path(int8_onnx).name.startswith(".per_channel")
        seen.append((per_channel, len(images), Path(int8_onnx).is_file()))
        return per_channel_agrees if per_channel else 0.5

    monkeypatch.setattr(ce, "top1_agreement", agreement)
    q = export_int8(float_dir, calibration, max_images=8)
    assert seen == [(False, 8, True), (True, 8, True)]  # calibration images only, never held-out ones
    chose = per_channel_agrees > 0.5
    assert q.per_channel == chose and Path(q.path) == float_dir.parent / INT8_DIR / ONNX_FILE
    int8_dir = float_dir.parent / INT8_DIR
    assert sorted(p.name for p in int8_dir.iterdir()) == sorted([ONNX_FILE, MODEL_YML])  # the trial is gone
    block = yaml.safe_load((int8_dir / MODEL_YML).read_text())["quantization"]
    assert block["weights_chosen_by"]["top1_agreement_with_float"] == {"per_tensor": 0.5,
                                                                       "per_channel": per_channel_agrees}
    assert ("per-channel" in block["weights"]) == chose
    got = ClassifierPredictor(int8_dir, threads=1).predict(_images(2), topk=1)
    assert len(got) == 2 and {d["category"] for g in got for d in g} <= set(LABELS)


def test_a_failed_per_channel_retry_keeps_the_per_tensor_model(exported, monkeypatch) -> None:
    import deploy.classifier_export as ce

    float_dir, _, calibration = exported
    real = ce.quantize_onnx

    def per_channel_fails(*args, **kwargs):
        if kwargs.get("per_channel"):
            raise QuantizationError("ORT cannot quantize op 'Conv' per channel", "Conv")
        return real(*args, **kwargs)

    monkeypatch.setattr(ce, "quantize_onnx", per_channel_fails)
    monkeypatch.setattr(ce, "top1_agreement", lambda *a: 0.5)
    q = export_int8(float_dir, calibration, max_images=8)
    int8_dir = float_dir.parent / INT8_DIR
    assert not q.per_channel and (int8_dir / ONNX_FILE).is_file()
    assert sorted(p.name for p in int8_dir.iterdir()) == sorted([ONNX_FILE, MODEL_YML])
    block = yaml.safe_load((int8_dir / MODEL_YML).read_text())["quantization"]
    assert "per channel" in block["weights_chosen_by"]["per_channel_error"]


def test_real_agreement_of_a_model_with_itself_is_one(exported) -> None:
    float_dir, _, calibration = exported
    assert top1_agreement(float_dir / ONNX_FILE, float_dir / ONNX_FILE, calibration) == 1.0


def test_accuracy_delta_and_latency_ratio(exported) -> None:
    float_dir, pre, calibration = exported
    export_int8(float_dir, calibration)
    held_out = np.stack([pre(im) for im in _images(12)])
    labels = np.arange(12) % 3
    figures = int8_figures(float_dir / ONNX_FILE, float_dir.parent / INT8_DIR / ONNX_FILE, held_out, labels, 1,
                           _quick_ms)
    assert figures["int8_eval_images"] == 12
    assert 0.0 <= figures["int8_acc"] <= 1.0 and 0.0 <= figures["float_ort_acc"] <= 1.0
    delta = figures["int8_acc_delta"]  # points: int8 − float
    assert math.isfinite(delta) and delta == pytest.approx(100 * (figures["int8_acc"] - figures["float_ort_acc"]))
    assert figures["int8_ms_batch1"] > 0 and math.isfinite(figures["int8_latency_ratio"])
    assert figures["int8_latency_ratio"] > 0


def test_failed_quantization_keeps_the_float_model_and_names_the_op(exported, monkeypatch) -> None:
    float_dir, pre, calibration = exported
    int8_dir = float_dir.parent / INT8_DIR
    export_int8(float_dir, calibration)  # a stale int8 folder from an earlier export
    before = (float_dir / ONNX_FILE).read_bytes()
    import onnxruntime.quantization as oq

    def fails(*args, **kwargs):
        # ORT's own wording for a node it cannot handle
        raise RuntimeError("[ShapeInferenceError] (op_type:HardSwish, node name: /features/act): input 0 "
                           "has an unsupported type")

    monkeypatch.setattr(oq, "quantize_static", fails)
    held_out = np.stack([pre(im) for im in _images(4)])
    result = int8_twin(float_dir, calibration, held_out, np.zeros(4, dtype=np.int64), 1, _quick_ms)
    assert set(result) == {"int8_error"}
    assert "HardSwish" in result["int8_error"] and "\n" not in result["int8_error"]
    assert not int8_dir.exists(), "a stale int8 folder must not outlive a failed quantization"
    assert (float_dir / ONNX_FILE).read_bytes() == before
    with pytest.raises(QuantizationError) as info:
        quantize_onnx(float_dir / ONNX_FILE, int8_dir / ONNX_FILE, calibration)
    assert info.value.op == "HardSwish"


def test_real_ort_failure_is_a_reason_not_a_crash(exported, tmp_path: Path) -> None:
    float_dir, _, calibration = exported
    wrong = np.zeros((2, 4, 32, 32), dtype=np.float32)  # 4 channels for a 3-channel graph: ORT refuses
    with pytest.raises(QuantizationError) as info:
        quantize_onnx(float_dir / ONNX_FILE, tmp_path / "int8" / ONNX_FILE, wrong)
    assert "static int8 quantization failed" in info.value.reason
    assert not (tmp_path / "int8" / ONNX_FILE).exists()
    with pytest.raises(InputError, match="calibration_images"):
        quantize_onnx(float_dir / ONNX_FILE, tmp_path / "x.onnx", [])
    with pytest.raises(InputError, match="max_images"):
        quantize_onnx(float_dir / ONNX_FILE, tmp_path / "x.onnx", calibration, max_images=0)


@pytest.mark.parametrize("model", [ClassifierExportParams, DetectorExportParams, FaceExportParams])
def test_export_params_bounds(model) -> None:
    assert model().quantize is True
    assert model(calibration_images=1).calibration_images == 1
    for bad in (0, 10_001, True, "many"):
        with pytest.raises(ValidationError):
            model(calibration_images=bad)
    with pytest.raises(ValidationError):
        model(quantise=True)  # a typo'd key is refused


def test_compare_puts_int8_figures_in_their_own_section() -> None:
    from spnas.compare import INT8_SECTION, RunInfo, figure_rows

    def run(summary):
        return RunInfo(ref="r", run_id="id", name="n", flow="prune-ea", status="FINISHED", start_time=None,
                       params={}, tags={}, metrics={}, summary=summary)

    rows = figure_rows([run({"baseline_acc": 0.9, "baseline_int8_acc_delta": -0.5, "baseline_int8_latency_ratio": 1.2,
                             "baseline_int8_acc": 0.895}),
                        run({"baseline_acc": 0.92, "baseline_int8_error": "static int8 quantization failed"})])
    int8 = {r["name"]: r["values"] for r in rows if r["section"] == INT8_SECTION}
    assert int8 == {"baseline_int8_acc_delta": [-0.5, None], "baseline_int8_latency_ratio": [1.2, None],
                    "baseline_int8_error": [None, "static int8 quantization failed"]}
    final = {r["name"] for r in rows if r["section"] == "final"}
    assert final == {"baseline_acc", "baseline_int8_acc"}
    assert [r["section"] for r in rows].index(INT8_SECTION) > 0  # after the final figures
