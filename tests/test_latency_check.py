"""latency.check: exported files timed end to end, and the ±10 % flag on a prediction."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deploy.onnx_export import export_onnx
from latency.check import LatencyCheck, measure_onnx_ms
from latency.measure import TimingConfig


@pytest.mark.parametrize("predicted, error, flagged", [
    (None, None, False), (1.05, 5.0, False), (1.10, 10.0, False), (0.89, -11.0, True), (1.5, 50.0, True)])
def test_flag_beyond_ten_percent(predicted: float | None, error: float | None, flagged: bool) -> None:
    check = LatencyCheck(measured_ms=1.0, predicted_ms=predicted)
    assert check.error_pct == (None if error is None else pytest.approx(error))
    assert check.flagged is flagged
    fields = check.fields()
    assert fields["measured_ms"] == 1.0
    assert ("prediction_flag" in fields) is (predicted is not None)
    assert (check.note("found") is not None) is flagged
    if flagged:
        assert "found: predicted" in check.note("found")


def test_exported_files_are_timed(tmp_path: Path) -> None:
    small = torch.nn.Conv2d(3, 4, 3, padding=1).eval()
    big = torch.nn.Sequential(*[torch.nn.Conv2d(3, 3, 3, padding=1) for _ in range(12)]).eval()
    x = torch.randn(1, 3, 32, 32)
    files = {}
    for name, model in (("small", small), ("big", big)):
        path = export_onnx(model, x, tmp_path / f"{name}.onnx", input_name="image", dynamo=False)
        files[name] = (path, {"image": x.numpy()})
    ms = measure_onnx_ms(files, threads=1, timing=TimingConfig(warmup=1, rounds=3, number=3, passes=1))
    assert set(ms) == {"small", "big"} and all(v > 0 for v in ms.values())
    assert ms["big"] > ms["small"]  # twelve convs cost more than one
