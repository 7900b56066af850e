"""PP-LCNet x1.0 vs MobileNetV3-small x1.25 on CPU with ONNX Runtime, side by side.

The paper (Intel Xeon, MKLDNN) reports 2.46 ms vs 3.95 ms. Here both models get random
weights (nothing can be downloaded), the same input and the same thread count; after warm-up
the two are timed interleaved (A, B, A, B, ...) so machine noise hits both alike, and we
print min-of-N and median. A second comparison times eager torch vs ONNX Runtime for
PP-LCNet x1.0. A benchmark reports figures; it asserts nothing.

    .venv/bin/python benchmarks/lcnet_latency.py [--threads 2] [--size 224] [--repeats 50]
"""
from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from deploy.onnx_export import WithSoftmax, export_onnx, make_session  # noqa: E402
from latency.flops import count_macs_params, format_count  # noqa: E402
from latency.measure import cpu_model  # noqa: E402
from latency.timing import interleaved_times, load_average  # noqa: E402
from nas_models.lcnet import build_lcnet  # noqa: E402

PAPER_MS = {"PP-LCNet x1.0": 2.46, "MobileNetV3-small x1.25": 3.95}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="intra-op threads, ORT and torch")
    p.add_argument("--size", type=int, default=224, help="input height = width (px)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=50, help="timed runs per model")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per model first")
    p.add_argument("--eager-repeats", type=int, default=20,
                   help="timed runs for eager torch vs ORT (eager is ~10x slower)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("threads", "size", "batch", "repeats", "eager_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be at least 0")
    return args


def mobilenet_v3_small_x125() -> tuple[nn.Module, str]:
    """torchvision's MobileNetV3-small at width 1.25 if this torchvision takes width_mult."""
    conf_params = inspect.signature(torchvision.models.mobilenetv3._mobilenet_v3_conf).parameters
    if "width_mult" in conf_params:
        return torchvision.models.mobilenet_v3_small(weights=None, width_mult=1.25), \
            "MobileNetV3-small x1.25"
    return torchvision.models.mobilenet_v3_small(weights=None), \
        "MobileNetV3-small x1.0 (this torchvision has no width_mult)"


def calibrate_bn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set BN statistics from one batch: with fresh statistics random weights drive the
    activations towards zero, which is not what a trained network computes."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def summary(ms: list[float]) -> tuple[float, float]:
    return min(ms), statistics.median(ms)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    shape = (args.batch, 3, args.size, args.size)
    x = torch.randn(shape)
    feed = x.numpy()

    lcnet = build_lcnet(1.0, num_classes=1000)
    mbv3, mbv3_name = mobilenet_v3_small_x125()
    models = {"PP-LCNet x1.0": lcnet, mbv3_name: mbv3}
    calib = torch.randn(8, 3, args.size, args.size)
    for model in models.values():
        calibrate_bn(model, calib)

    print(f"CPU: {cpu_model()} | torch {torch.__version__} | onnxruntime {ort.__version__}")
    print(f"threads {args.threads} (ORT intra-op and torch) | input {shape[0]}x3x{args.size}x"
          f"{args.size} | warm-up {args.warmup} | {args.repeats} interleaved runs each")
    print(f"MobileNetV3 baseline: {mbv3_name} (random weights; so is PP-LCNet)")
    print(f"load average before: {load_average()} on {os.cpu_count()} CPUs "
          "(shared machine: compare min-of-N first)\n")

    with tempfile.TemporaryDirectory(prefix="lcnet-bench-") as tmp:
        sessions: dict[str, ort.InferenceSession] = {}
        for i, (name, model) in enumerate(models.items()):
            t0 = time.perf_counter()
            path = export_onnx(WithSoftmax(model), x, Path(tmp) / f"model{i}.onnx",
                               output_name="probabilities")
            sessions[name] = make_session(path, threads=args.threads)
            print(f"exported {name} in {time.perf_counter() - t0:.1f} s "
                  f"({path.stat().st_size / 1e6:.1f} MB)")

        ort_fns = {name: (lambda s=s: s.run(None, {"image": feed})) for name, s in sessions.items()}
        ort_ms = interleaved_times(ort_fns, args.warmup, args.repeats)

        lc_name = "PP-LCNet x1.0"
        lc_softmax = WithSoftmax(lcnet).eval()

        def eager() -> torch.Tensor:
            with torch.inference_mode():
                return lc_softmax(x)

        eager_ms = interleaved_times({"torch": eager, "ort": ort_fns[lc_name]},
                                    min(args.warmup, 3), args.eager_repeats)

    print(f"\nONNX Runtime latency per batch ({args.threads} threads, {args.size} px)")
    print(f"{'model':<26}{'min ms':>8}{'p50 ms':>8}{'paper ms':>10}{'MACs':>9}{'params':>8}")
    per_image = (1, 3, args.size, args.size)
    for name, model in models.items():
        macs, params = count_macs_params(model, per_image)
        lo, med = summary(ort_ms[name])
        paper = f"{PAPER_MS[name]:.2f}" if name in PAPER_MS else "-"
        print(f"{name:<26}{lo:>8.2f}{med:>8.2f}{paper:>10}{format_count(macs):>9}"
              f"{format_count(params):>8}")
    (lo_a, med_a), (lo_b, med_b) = (summary(ort_ms[n]) for n in models)
    paper_ratio = PAPER_MS["MobileNetV3-small x1.25"] / PAPER_MS[lc_name]
    print(f"MobileNetV3 / PP-LCNet: min {lo_b / lo_a:.2f}x, p50 {med_b / med_a:.2f}x "
          f"(paper {paper_ratio:.2f}x); MACs and params are per image, counted here")

    (lo_t, med_t), (lo_o, med_o) = summary(eager_ms["torch"]), summary(eager_ms["ort"])
    print(f"\nPP-LCNet x1.0, eager torch vs ONNX Runtime ({args.threads} threads, {args.size} px)")
    print(f"eager torch  min {lo_t:.2f} ms  p50 {med_t:.2f} ms")
    print(f"ONNX Runtime min {lo_o:.2f} ms  p50 {med_o:.2f} ms")
    print(f"torch / ORT: min {lo_t / lo_o:.2f}x, p50 {med_t / med_o:.2f}x "
          f"({args.eager_repeats} interleaved runs each)")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
