"""Export a trained classifier as an inference-model folder (PaddleX `export_inference` analogue):

    model.onnx   softmax inside the graph, dynamic batch (run by ONNX Runtime)
    model.pt2    torch.export program of the same module (load with
                 `deploy.onnx_export.load_program`, call `.module()(images)`); dynamic batch
    model.yml    labels, input size, preprocessing and file names — all a Predictor needs

Both model files come from one torch.export capture: the program is saved as is and
converted to ONNX by the dynamo exporter (see deploy/onnx_export.py for the checks behind
that choice). TorchScript (`model.ts` until torch 2.14 deprecated it) is no longer written.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from data.transforms import Preprocess
from deploy.onnx_export import (
    ONNX_OPSET,
    WithSoftmax,
    export_program,
    load_program,
    make_session,
    max_abs_diff_vs_torch,
    program_to_onnx,
    save_program,
)

ONNX_FILE, PROGRAM_FILE, MODEL_YML = "model.onnx", "model.pt2", "model.yml"


def export_classifier(model: nn.Module, desc: dict[str, Any], labels: list[str], preprocess: Preprocess,
                      out_dir: Path) -> dict[str, str]:
    """Write model.onnx, model.pt2 and model.yml into `out_dir`; returns their paths
    (keys model_dir, onnx, program, model_yml)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped = WithSoftmax(model).eval()
    example = torch.zeros(1, 3, preprocess.input_size, preprocess.input_size)
    program = export_program(wrapped, example)
    onnx_path = program_to_onnx(program, out_dir / ONNX_FILE, input_name="image", output_name="probabilities")
    program_path = save_program(program, out_dir / PROGRAM_FILE)
    meta = {
        "model": desc,
        "labels": list(labels),
        "input": {"name": "image", "layout": "NCHW", "channel_order": preprocess.channel_order, "size": preprocess.input_size},
        "transforms": preprocess.to_dict(),
        "output": {"name": "probabilities", "softmax": True},
        "files": {"onnx": ONNX_FILE, "program": PROGRAM_FILE},
        "export": {"onnx_exporter": "torch.export (dynamo=True)", "onnx_opset": ONNX_OPSET,
                   "torch": str(torch.__version__)},
    }
    yml_tmp = out_dir / (MODEL_YML + ".tmp")
    yml_tmp.write_text(yaml.safe_dump(meta, sort_keys=False))
    os.replace(yml_tmp, out_dir / MODEL_YML)
    return {"model_dir": str(out_dir), "onnx": str(onnx_path), "program": str(program_path),
            "model_yml": str(out_dir / MODEL_YML)}


def parity(model: nn.Module, onnx_path: Path, images: torch.Tensor, threads: int = 2) -> dict[str, float]:
    """Max |ORT − torch| on the softmax outputs, and the same for the torch.export program
    (model.pt2 beside `onnx_path`) loaded back from disk."""
    wrapped = WithSoftmax(model).eval()
    ort_diff = max_abs_diff_vs_torch(wrapped, make_session(onnx_path, threads), images)
    program = load_program(Path(onnx_path).with_name(PROGRAM_FILE)).module()
    with torch.no_grad():
        expected, got = wrapped(images), program(images)
    if got.shape != expected.shape:  # never let broadcasting hide a wrong batch axis
        raise ValueError(f"output shape {tuple(got.shape)} from the program, {tuple(expected.shape)} from torch")
    pt2_diff = (got.double() - expected.double()).abs().max().item()
    return {"onnx_max_abs_diff": float(ort_diff), "pt2_max_abs_diff": float(pt2_diff)}
