"""Export a trained classifier as an inference-model folder (PaddleX `export_inference` analogue):

    model.onnx   softmax inside the graph, dynamic batch (run by ONNX Runtime)
    model.ts     TorchScript of the same module
    model.yml    labels, input size, preprocessing and file names — all a Predictor needs
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from data.transforms import Preprocess
from deploy.onnx_export import WithSoftmax, export_onnx, make_session, max_abs_diff_vs_torch

ONNX_FILE, TORCHSCRIPT_FILE, MODEL_YML = "model.onnx", "model.ts", "model.yml"


def export_classifier(model: nn.Module, desc: dict[str, Any], labels: list[str], preprocess: Preprocess,
                      out_dir: Path) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped = WithSoftmax(model).eval()
    example = torch.zeros(1, 3, preprocess.input_size, preprocess.input_size)
    onnx_path = export_onnx(wrapped, example, out_dir / ONNX_FILE, input_name="image", output_name="probabilities")
    with torch.no_grad():
        scripted = torch.jit.trace(wrapped, example)
    ts_tmp = out_dir / (TORCHSCRIPT_FILE + ".tmp")
    scripted.save(str(ts_tmp))
    os.replace(ts_tmp, out_dir / TORCHSCRIPT_FILE)
    meta = {
        "model": desc,
        "labels": list(labels),
        "input": {"name": "image", "layout": "NCHW", "channel_order": "RGB", "size": preprocess.input_size},
        "transforms": preprocess.to_dict(),
        "output": {"name": "probabilities", "softmax": True},
        "files": {"onnx": ONNX_FILE, "torchscript": TORCHSCRIPT_FILE},
    }
    yml_tmp = out_dir / (MODEL_YML + ".tmp")
    yml_tmp.write_text(yaml.safe_dump(meta, sort_keys=False))
    os.replace(yml_tmp, out_dir / MODEL_YML)
    return {"model_dir": str(out_dir), "onnx": str(onnx_path), "torchscript": str(out_dir / TORCHSCRIPT_FILE),
            "model_yml": str(out_dir / MODEL_YML)}


def parity(model: nn.Module, onnx_path: Path, images: torch.Tensor, threads: int = 2) -> dict[str, float]:
    """Max |ORT − torch| on the softmax outputs, and the TorchScript file against eager torch."""
    wrapped = WithSoftmax(model).eval()
    ort_diff = max_abs_diff_vs_torch(wrapped, make_session(onnx_path, threads), images)
    scripted = torch.jit.load(str(Path(onnx_path).with_name(TORCHSCRIPT_FILE)))
    with torch.no_grad():
        ts_diff = (scripted(images) - wrapped(images)).abs().max().item()
    return {"onnx_max_abs_diff": float(ort_diff), "torchscript_max_abs_diff": float(ts_diff)}
