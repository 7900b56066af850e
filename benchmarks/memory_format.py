"""Does `torch.channels_last` pay on this CPU? For each model family we train, at its default
size, batch and thread count: one eager training step (forward, loss, backward, SGD) and one
inference batch, with the weights in the default (NCHW) and in channels_last memory format (inputs as the
loaders give them), timed interleaved
(A, B, A, B, ...) after warm-up so machine noise hits both alike. Prints median ms and the ratio
channels_last / default (below 1: channels_last is faster) and the largest output difference
between the two formats (the same weights: it must be float noise). Asserts nothing.

    .venv/bin/python benchmarks/memory_format.py [--threads 2] [--repeats 15] [--only spos,lcnet]
"""
from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from latency.timing import interleaved_times, load_average  # noqa: E402

CL = torch.channels_last


def _boxes(batch: int, size: int, labels: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(batch):
        xy = torch.rand(2, 2, generator=g) * size * 0.5
        wh = 8 + torch.rand(2, 2, generator=g) * size * 0.4
        out.append({"boxes": torch.cat([xy, (xy + wh).clamp(max=size - 1)], 1),
                    "labels": torch.randint(1, labels, (2,), generator=g)})
    return out


def families() -> dict[str, Callable[[], tuple[nn.Module, Any, Callable[[nn.Module, Any], torch.Tensor], Callable]]]:
    """name -> builder of (model, batch, training loss of model on batch, inference call)."""
    from nas_models.blazeface import build_from_tokens, init_tokens
    from nas_models.detector import build_detector
    from nas_models.lcnet import build_lcnet
    from nas_models.prune_resnet import build_prune_resnet
    from nas_models.spos_shufflenet import build_supernet, subnet_from_supernet
    from strategies.path_sampler import uniform

    ce = nn.CrossEntropyLoss()

    def classifier(model: nn.Module, batch: int, size: int):
        x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
        return model, (x, y), lambda m, b: ce(m(b[0]), b[1]), lambda m, b: m(b[0])

    def detector(model: nn.Module, batch: int, size: int, labels: int):
        images = [torch.rand(3, size, size) for _ in range(batch)]
        targets = _boxes(batch, size, labels)
        return (model, (images, targets), lambda m, b: sum(m(b[0], b[1]).values()),
                lambda m, b: m(b[0]))

    def spos():
        supernet = build_supernet("small", num_classes=10)
        return classifier(subnet_from_supernet(supernet, uniform(random.Random(0))), 64, 32)

    return {
        "lcnet (x1.0, 32 px, batch 32)": lambda: classifier(build_lcnet(1.0, num_classes=10), 32, 32),
        "cifar resnet-20 (batch 64)": lambda: classifier(build_prune_resnet(20), 64, 32),
        "spos path (small, batch 64)": spos,
        "serial-backbone detector (96 px, batch 8)": lambda: detector(build_detector("11-21-21-21"), 8, 96, 11),
        "blazeface (128 px, batch 16)": lambda: detector(build_from_tokens(init_tokens()), 16, 128, 2),
    }


def measure(name: str, build: Callable, repeats: int, warmup: int) -> dict[str, float]:
    torch.manual_seed(0)
    model, batch, loss_of, infer = build()
    models = {"default": model, "channels_last": copy.deepcopy(model).to(memory_format=CL)}
    # Only the weights change format, as the engine does it: a conv with channels_last weights
    # gives channels_last outputs, so the rest of the network follows.
    batches = {"default": batch, "channels_last": batch}
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in models.items()}

    def step(k: str) -> Callable[[], None]:
        def run() -> None:
            models[k].train()
            opts[k].zero_grad(set_to_none=True)
            loss_of(models[k], batches[k]).backward()
            opts[k].step()
        return run

    def inference(k: str) -> Callable[[], None]:
        def run() -> None:
            models[k].eval()
            with torch.inference_mode():
                infer(models[k], batches[k])
        return run

    # Same weights, eval mode: how far apart are the two formats' outputs?
    ref = copy.deepcopy(model).eval()
    cl = copy.deepcopy(model).to(memory_format=CL).eval()
    with torch.inference_mode():
        a, b = infer(ref, batch), infer(cl, batch)
    if isinstance(a, torch.Tensor):
        diff = float((a - b).abs().max())
    else:  # detections: compare the scores of matching outputs where both found the same count
        diff = max((float((x["scores"] - y["scores"]).abs().max()) for x, y in zip(a, b)
                    if len(x["scores"]) == len(y["scores"]) and len(x["scores"])), default=0.0)
    train = interleaved_times({k: step(k) for k in models}, warmup, repeats)
    test = interleaved_times({k: inference(k) for k in models}, warmup, repeats)
    med = {f"{phase}_{k}": statistics.median(t[k]) for phase, t in (("train", train), ("infer", test)) for k in t}
    return {**med, "train_ratio": med["train_channels_last"] / med["train_default"],
            "infer_ratio": med["infer_channels_last"] / med["infer_default"], "max_abs_diff": diff}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated name prefixes")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, load average {load_average()}, "
          f"median of {args.repeats} interleaved repeats")
    print(f"{'model':44} {'train ms':>9} {'CL':>9} {'ratio':>6}   {'infer ms':>9} {'CL':>9} {'ratio':>6}  max|diff|")
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    for name, build in families().items():
        if wanted and not any(name.startswith(w) for w in wanted):
            continue
        r = measure(name, build, args.repeats, args.warmup)
        print(f"{name:44} {r['train_default']:9.1f} {r['train_channels_last']:9.1f} {r['train_ratio']:6.2f}   "
              f"{r['infer_default']:9.1f} {r['infer_channels_last']:9.1f} {r['infer_ratio']:6.2f}  "
              f"{r['max_abs_diff']:.1e}", flush=True)


if __name__ == "__main__":
    main()
