"""ONNX export (torch.export-based by default, the legacy TorchScript-based one on request) of a
small PP-LCNet with softmax: ORT matches torch at batch 1 and 3; torch.export programs round-trip."""
from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from deploy.onnx_export import (
    ONNX_OPSET,
    WithSoftmax,
    export_onnx,
    export_program,
    load_program,
    make_session,
    max_abs_diff_vs_torch,
    save_program,
)
from core.errors import InputError
from nas_models.lcnet import build_lcnet


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


def test_default_exporter_is_torch_export_at_its_opset(exported: tuple[nn.Module, Path]) -> None:
    _, path = exported
    opsets = {o.domain: o.version for o in onnx.load(str(path)).opset_import}
    assert opsets[""] == ONNX_OPSET


def test_legacy_exporter_matches_and_stays_quiet(tmp_path: Path) -> None:
    # dynamo=False, the deprecated TorchScript-based exporter: same numbers, and its two
    # deprecation notices are filtered (nothing else is).
    model = _calibrated_model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_onnx(model, torch.randn(1, 3, 64, 64), tmp_path / "t.onnx", opset=17,
                           dynamo=False)
    assert not [w for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))], \
        [str(w.message) for w in caught]
    session = make_session(path)
    assert session.get_inputs()[0].shape[0] == "batch"
    assert max_abs_diff_vs_torch(model, session, torch.randn(3, 3, 64, 64)) < 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["t.onnx"]


def test_program_round_trip_with_dynamic_batch(tmp_path: Path) -> None:
    model = _calibrated_model()
    # A batch-1 example: torch.export would specialise it to 1; export_program must not.
    program = export_program(model, torch.randn(1, 3, 64, 64))
    assert save_program(program, tmp_path / "m.pt2") == tmp_path / "m.pt2"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt2"]
    loaded = load_program(tmp_path / "m.pt2").module()
    for batch in (1, 4):
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            expected, got = model(x), loaded(x)
        assert got.shape == (batch, 10) and expected.max() > 0.15
        assert torch.allclose(got, expected, atol=1e-6)
    with pytest.raises(InputError, match="m2.pt2"):
        load_program(tmp_path / "m2.pt2")


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage" * 50], ids=["empty", "random-bytes"])
def test_unloadable_onnx_file_is_input_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a loadable ONNX model") as err:
        make_session(path, field="model_dir")
    assert err.value.field == "model_dir"
