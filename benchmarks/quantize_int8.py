"""Static int8 (ORT QDQ) vs float ONNX on a PP-LCNet trained here on the embedded digits: accuracy on
the 300 test digits and batch-1 latency, timed interleaved on the same threads, for a few
quantization choices (deploy/quantize.py's docstring quotes the result).

    .venv/bin/python benchmarks/quantize_int8.py [--scale 1.0] [--epochs 4] [--passes 4] [--threads 1]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from data.cifar import embedded_digits_cifar
from data.transforms import Preprocess
from deploy.classifier_export import export_classifier
from deploy.onnx_export import make_session
from deploy.quantize import quantize_onnx
from latency.measure import TimingConfig, interleaved_ms
from latency.timing import load_average
from nas_models.lcnet import build_lcnet

MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def _prep(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255 - MEAN) / STD).transpose(0, 3, 1, 2).copy()


def _ort_acc(session, x: np.ndarray, y: np.ndarray) -> float:
    probs = np.concatenate([session.run(None, {"image": x[i:i + 100]})[0] for i in range(0, len(x), 100)])
    return float((probs.argmax(1) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--passes", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency-size", type=int, default=0, help="also time the same weights at this input size")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cifar = embedded_digits_cifar(0)
    xtr, ytr = torch.from_numpy(_prep(cifar.train_images)), torch.from_numpy(cifar.train_labels).long()
    xte, yte = _prep(cifar.test_images), cifar.test_labels
    model = build_lcnet(args.scale, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=4e-5)
    for _ in range(args.epochs):
        model.train()
        for idx in torch.randperm(len(xtr)).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    model.eval()
    work = Path(tempfile.mkdtemp(prefix="quant-bench-"))
    files = export_classifier(model, {"type": "PPLCNet", "scale": args.scale, "num_classes": 10},
                              [str(i) for i in range(10)], Preprocess(input_size=32, resize_short=32), work / "float")
    calib = xtr[:32].numpy()
    variants = {"u8s8_pt": {}, "s8s8_pt": {"activation_int8": True}, "u8s8_pc": {"per_channel": True},
                "u8s8_pc_rr": {"per_channel": True, "reduce_range": True}, "conv_pt": {"op_types": ("Conv", "Gemm")}}
    sessions = {"float": make_session(Path(files["onnx"]), args.threads)}
    for name, kw in variants.items():
        q = quantize_onnx(Path(files["onnx"]), work / name / "model.onnx", calib, **kw)
        print(f"{name}: quantized in {q.seconds:.2f} s, ops {q.op_types}, {q.qdq_nodes} Q/DQ nodes")
        sessions[name] = make_session(Path(q.path), args.threads)
    accs = {name: _ort_acc(s, xte, yte) for name, s in sessions.items()}
    one = xte[:1]
    ms = interleaved_ms({n: (lambda s=s: s.run(None, {"image": one})) for n, s in sessions.items()},
                        TimingConfig(passes=args.passes))
    if args.latency_size:
        _time_at(model, args, calib, variants, work)
    print(f"load average {load_average()}; PP-LCNet x{args.scale}, {args.epochs} epochs, {args.threads} thread(s), "
          f"{args.passes} passes")
    for name in sessions:
        print(f"{name:8s} acc {accs[name]:.4f} (delta {100 * (accs[name] - accs['float']):+.2f} pts)  "
              f"{ms[name]:.3f} ms  ratio {ms[name] / ms['float']:.3f}")
    shutil.rmtree(work, ignore_errors=True)


def _time_at(model, args, calib, variants, work: Path) -> None:
    """Latency only: the 32-px weights run at another size (PP-LCNet ends in global pooling)."""
    size = args.latency_size
    files = export_classifier(model, {"type": "PPLCNet", "scale": args.scale, "num_classes": 10},
                              [str(i) for i in range(10)], Preprocess(input_size=size, resize_short=size),
                              work / f"float{size}")
    big = torch.nn.functional.interpolate(torch.from_numpy(calib), size=(size, size), mode="bilinear").numpy()
    sessions = {"float": make_session(Path(files["onnx"]), args.threads)}
    for name, kw in variants.items():
        q = quantize_onnx(Path(files["onnx"]), work / f"{name}{size}" / "model.onnx", big, **kw)
        sessions[name] = make_session(Path(q.path), args.threads)
    one = big[:1]
    ms = interleaved_ms({n: (lambda s=s: s.run(None, {"image": one})) for n, s in sessions.items()},
                        TimingConfig(passes=args.passes, rounds=3, number=5))
    for name in sessions:
        print(f"{size} px {name:8s} {ms[name]:.3f} ms  ratio {ms[name] / ms['float']:.3f}")


if __name__ == "__main__":
    main()
