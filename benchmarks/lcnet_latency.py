"""PP-LCNet x1.0 vs MobileNetV3-small x1.25 and MobileNetV3-large x1.0 on CPU with ONNX Runtime,
float and static int8, on 1 and 2 threads, side by side.

The paper (Intel Xeon, MKLDNN) reports 2.46 ms vs 3.95 ms (MobileNetV3-small x1.25). Here every
model gets random weights (nothing can be downloaded) with BatchNorm statistics set from one
random batch, the same input and the same thread count; each is exported to ONNX and quantized
with the project's int8 export (deploy/quantize.py: ORT static QDQ, calibrated on 8 random
images — latency only, accuracy is meaningless with random weights). Per thread count, after
warm-up all six sessions are timed interleaved (A, B, C, ...) so machine noise hits them alike,
and we print min-of-N and median, and int8 / float. A second comparison times eager torch vs ONNX
Runtime for PP-LCNet x1.0. A benchmark reports figures; it asserts nothing.

    .venv/bin/python benchmarks/lcnet_latency.py [--threads 1 2] [--size 224] [--repeats 50]
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
from deploy.quantize import quantize_onnx  # noqa: E402
from latency.flops import count_macs_params, format_count  # noqa: E402
from latency.measure import cpu_model  # noqa: E402
from latency.timing import interleaved_times, load_average  # noqa: E402
from nas_models.lcnet import build_lcnet  # noqa: E402

PAPER_MS = {"PP-LCNet x1.0": 2.46, "MobileNetV3-small x1.25": 3.95}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts, ORT and torch")
    p.add_argument("--size", type=int, default=224, help="input height = width (px)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=50, help="timed runs per model")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs per model first")
    p.add_argument("--eager-repeats", type=int, default=20,
                   help="timed runs for eager torch vs ORT (eager is ~10x slower)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if min(args.threads) < 1:
        p.error("--threads must be at least 1")
    for name in ("size", "batch", "repeats", "eager_repeats"):
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


def time_models(models: dict[str, nn.Module], x: torch.Tensor, threads: int, args: argparse.Namespace,
                tmp: Path) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """ORT times of every model, float and int8, interleaved; then eager torch vs ORT for the first."""
    feed = x.numpy()
    torch.set_num_threads(threads)
    fns = {}
    for i, (name, model) in enumerate(models.items()):
        path = tmp / f"model{i}.onnx"
        if not path.is_file():
            t0 = time.perf_counter()
            export_onnx(WithSoftmax(model), x, path, output_name="probabilities")
            quantize_onnx(path, tmp / f"model{i}.int8.onnx", torch.randn(8, *x.shape[1:]).numpy())
            print(f"exported and quantized {name} in {time.perf_counter() - t0:.1f} s")
        for kind, file in (("float", path), ("int8", tmp / f"model{i}.int8.onnx")):
            session = make_session(file, threads=threads)
            fns[f"{name} {kind}"] = (lambda s=session: s.run(None, {"image": feed}))
    ort_ms = interleaved_times(fns, args.warmup, args.repeats)
    first = next(iter(models))
    softmax = WithSoftmax(models[first]).eval()

    def eager() -> torch.Tensor:
        with torch.inference_mode():
            return softmax(x)

    eager_ms = interleaved_times({"torch": eager, "ort": fns[f"{first} float"]}, min(args.warmup, 3),
                                 args.eager_repeats)
    return ort_ms, eager_ms


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    shape = (args.batch, 3, args.size, args.size)
    x = torch.randn(shape)
    lc_name = "PP-LCNet x1.0"
    small, small_name = mobilenet_v3_small_x125()
    models = {lc_name: build_lcnet(1.0, num_classes=1000), small_name: small,
              "MobileNetV3-large x1.0": torchvision.models.mobilenet_v3_large(weights=None)}
    calib = torch.randn(8, 3, args.size, args.size)
    for model in models.values():
        calibrate_bn(model, calib)

    print(f"CPU: {cpu_model()} | torch {torch.__version__} | onnxruntime {ort.__version__}")
    print(f"threads {args.threads} (ORT intra-op and torch) | input {shape[0]}x3x{args.size}x"
          f"{args.size} | warm-up {args.warmup} | {args.repeats} interleaved runs each")
    print("all models have random weights; int8 = static QDQ (deploy/quantize.py)")
    print(f"load average before: {load_average()} on {os.cpu_count()} CPUs "
          "(shared machine: compare min-of-N first)\n")
    per_image = (1, 3, args.size, args.size)
    counts = {name: count_macs_params(model, per_image) for name, model in models.items()}
    with tempfile.TemporaryDirectory(prefix="lcnet-bench-") as tmp:
        for threads in args.threads:
            ort_ms, eager_ms = time_models(models, x, threads, args, Path(tmp))
            print(f"\nONNX Runtime latency per batch ({threads} thread{'s' * (threads > 1)}, {args.size} px)")
            print(f"{'model':<26}{'float min':>10}{'p50':>8}{'int8 min':>10}{'p50':>8}{'int8/float':>11}"
                  f"{'paper ms':>10}{'MACs':>9}{'params':>8}")
            for name in models:
                lo_f, med_f = summary(ort_ms[f"{name} float"])
                lo_q, med_q = summary(ort_ms[f"{name} int8"])
                paper = f"{PAPER_MS[name]:.2f}" if name in PAPER_MS else "-"
                macs, params = counts[name]
                print(f"{name:<26}{lo_f:>10.2f}{med_f:>8.2f}{lo_q:>10.2f}{med_q:>8.2f}{med_q / med_f:>10.2f}x"
                      f"{paper:>10}{format_count(macs):>9}{format_count(params):>8}")
            lc = summary(ort_ms[f"{lc_name} float"])
            for name in list(models)[1:]:
                other = summary(ort_ms[f"{name} float"])
                print(f"{name} / PP-LCNet (float): min {other[0] / lc[0]:.2f}x, p50 {other[1] / lc[1]:.2f}x")
            print(f"(paper: MobileNetV3-small x1.25 / PP-LCNet = "
                  f"{PAPER_MS['MobileNetV3-small x1.25'] / PAPER_MS[lc_name]:.2f}x)")
            (lo_t, med_t), (lo_o, med_o) = summary(eager_ms["torch"]), summary(eager_ms["ort"])
            print(f"PP-LCNet x1.0 eager torch min {lo_t:.2f} / p50 {med_t:.2f} ms vs ORT min {lo_o:.2f} / "
                  f"p50 {med_o:.2f} ms: torch / ORT {med_t / med_o:.2f}x (p50)")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
