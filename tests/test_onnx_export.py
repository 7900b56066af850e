"""ONNX export of a small PP-LCNet with softmax: ORT matches torch at batch 1 and 3."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from deploy.onnx_export import WithSoftmax, export_onnx, make_session, max_abs_diff_vs_torch
from nas_models.lcnet import build_lcnet
from spnas.errors import InputError


def _calibrated_model() -> nn.Module:
    # Fresh BN statistics leave a random PP-LCNet's outputs near zero (uniform softmax), which
    # would make any comparison pass; real batch statistics and a wider classifier do not.
    torch.manual_seed(0)
    model = WithSoftmax(build_lcnet(0.25, num_classes=10))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one batch sets the stats exactly
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 64, 64))
        # The classifier's std-0.01 init keeps logits within ~0.1 of each other; widen it.
        nn.init.normal_(model.model.classifier.weight, std=0.3)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = _calibrated_model()
    path = tmp_path_factory.mktemp("onnx") / "lcnet.onnx"
    assert export_onnx(model, torch.randn(1, 3, 64, 64), path, output_name="probabilities") == path
    return model, path


@pytest.mark.parametrize("batch", [1, 3])
def test_ort_matches_torch(exported: tuple[nn.Module, Path], batch: int) -> None:
    model, path = exported
    session = make_session(path, threads=1)
    x = torch.randn(batch, 3, 64, 64)
    probs = session.run(None, {"image": x.numpy()})[0]
    assert probs.shape == (batch, 10)
    assert probs.sum(axis=1) == pytest.approx([1.0] * batch, abs=1e-5)
    assert probs.max() > 0.15  # not uniform, so the comparison below means something
    assert max_abs_diff_vs_torch(model, session, x) < 1e-4


def test_graph_names_and_dynamic_batch(exported: tuple[nn.Module, Path]) -> None:
    _, path = exported
    session = make_session(path)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("image", "probabilities")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 64, 64]
    assert [p.name for p in path.parent.iterdir()] == ["lcnet.onnx"]  # temp file renamed away


def test_export_restores_training_flag(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 2), nn.Dropout()).train()
    export_onnx(model, torch.randn(2, 4), tmp_path / "m.onnx", input_name="x")
    assert model.training and model[1].training


def test_static_batch(tmp_path: Path) -> None:
    model = nn.Linear(4, 2)
    path = export_onnx(model, torch.randn(2, 4), tmp_path / "m.onnx", dynamic_batch=False,
                       input_name="x")
    assert make_session(path).get_inputs()[0].shape == [2, 4]


def test_bad_session_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        make_session(tmp_path / "missing.onnx")
    assert err.value.field == "path"
    with pytest.raises(InputError) as err:
        make_session(tmp_path / "missing.onnx", threads=0)
    assert err.value.field == "threads"


@pytest.mark.slow
def test_dynamo_exporter(tmp_path: Path) -> None:
    # The torch.export path (~11 s here); ends at opset 18 whatever `opset` asks (see module doc).
    model = _calibrated_model()
    path = export_onnx(model, torch.randn(1, 3, 64, 64), tmp_path / "d.onnx", dynamo=True)
    session = make_session(path)
    assert max_abs_diff_vs_torch(model, session, torch.randn(3, 3, 64, 64)) < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["d.onnx"]
