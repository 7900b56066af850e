"""Export parity checks the flow and kill-resume tests share: what the export stage reported
(eager torch vs ONNX Runtime vs the torch.export program), and the two files on disk run
against each other on inputs whose outputs are not empty or constant."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def assert_reported_parity(rows: Iterable[Mapping[str, Any]], tol: float = 1e-4) -> None:
    """Every exported model's ONNX and program outputs matched eager torch within `tol`."""
    rows = list(rows)
    assert rows, "no exported model reported"
    for row in rows:
        name = row.get("model", "model")
        for key in ("onnx_max_abs_diff", "pt2_max_abs_diff"):
            assert key in row and np.isfinite(row[key]), f"{name}: {key} missing"
            assert row[key] < tol, f"{name}: {key} {row[key]:.2e} >= {tol}"


def assert_files_agree(model_dir: Path, tol: float = 1e-4, batch: int = 3) -> None:
    """model.onnx and model.pt2 in `model_dir` give the same outputs on `batch` different inputs
    of the declared size, and those outputs differ between inputs (a model that returns the
    same or no values everywhere would agree trivially)."""
    import torch

    from deploy.onnx_export import load_program, make_session

    model_dir = Path(model_dir)
    meta = yaml.safe_load((model_dir / "model.yml").read_text())
    size = int(meta["input"]["size"])
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(batch, 3, size, size, generator=generator)
    session = make_session(model_dir / meta["files"]["onnx"], 1)
    onnx_out = session.run(None, {meta["input"]["name"]: inputs.numpy()})
    with torch.no_grad():
        program_out = load_program(model_dir / meta["files"]["program"]).module()(inputs)
    program_out = [program_out] if isinstance(program_out, torch.Tensor) else list(program_out)
    assert len(onnx_out) == len(program_out), (len(onnx_out), len(program_out))
    for got, ref in zip(onnx_out, program_out):
        ref = ref.detach().numpy()
        assert got.shape == ref.shape and got.shape[0] == batch and got.size > batch, (got.shape, ref.shape)
        assert np.isfinite(got).all() and np.isfinite(ref).all()
        assert float(np.abs(got - ref).max()) < tol, f"{model_dir}: ONNX vs program {np.abs(got - ref).max():.2e}"
        per_input = ref.reshape(batch, -1)
        assert float(np.abs(per_input[1:] - per_input[0]).max()) > 1e-6, f"{model_dir}: same output for every input"


def assert_detector_parity(report: Mapping[str, Any], nonempty: bool = True, tol_px: float = 1e-2,
                           tol_score: float = 1e-4) -> None:
    """The detector export's parity report: ONNX and the program found every detection eager
    torch found (same label, box within `tol_px`, score within `tol_score`); with `nonempty`,
    there were detections to compare."""
    if nonempty:
        assert report["torch_detections"] > 0, "parity was checked on images without a single detection"
    assert report["pt2_images"] > 0, "the program ran on no image"
    for runtime in ("onnx", "pt2"):
        assert report[f"{runtime}_images_with_count_mismatch"] == 0, report
        assert report[f"{runtime}_matched"] == report[f"{runtime}_detections"], report
        assert report[f"{runtime}_max_box_diff"] <= tol_px and report[f"{runtime}_max_score_diff"] <= tol_score, report
    assert report["onnx_detections"] == report["torch_detections"], report
