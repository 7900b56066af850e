"""What a latency limit (`max_latency_ms`) costs per proposal, and how repeatable its figure is.

For each search space with a latency limit — SP-NAS (detector backbone + FPN), prune-ea (pruned
CIFAR ResNet), SPOS (ShuffleNetV2 path) — times a few different networks once each through the
gate's own `latency.direct.NetworkLatency` (export + ORT session + timing: the cost a proposal
pays), then one network `--repeats` times afresh (the spread of its figure, ±% of the median).
Torch runs on one thread. A benchmark reports figures; it asserts nothing.

    .venv/bin/python benchmarks/latency_gate.py [--repeats 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import torch  # noqa: E402

from latency.direct import NetworkLatency  # noqa: E402
from latency.timing import load_average  # noqa: E402


def spaces(threads: int) -> dict[str, tuple[Callable[[], NetworkLatency], list[Any]]]:
    from nas_models.prune_resnet import encoding_length
    from params.models import DetectorModel
    from tasks.prune_ea.prune_search import encoding_latency
    from tasks.spnas.detectors import latency_of
    from tasks.spos.search import path_latency

    rng = random.Random(0)
    n = encoding_length(20)
    encodings = ["1" * n] + ["".join("1" if rng.random() < p else "0" for _ in range(n)) for p in (0.4, 0.7)]
    paths = [[0] * 20] + [[rng.randrange(4) for _ in range(20)] for _ in range(2)]
    model = DetectorModel()
    return {
        "spnas detector body+FPN (96 px)": (lambda: latency_of(model, 11, threads=threads),
                                            [model.backbone_code, "112-1-21-21", "11-211-21-21"]),
        "prune-ea ResNet-20 (32 px)": (lambda: encoding_latency(20, 10, threads=threads), encodings),
        "spos small path (32 px)": (lambda: path_latency("small", 10, threads=threads), paths),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"load average {load_average()}, {args.threads} ORT thread(s)")
    for name, (make, archs) in spaces(args.threads).items():
        gate = make()
        costs = []
        for arch in archs:
            t0 = time.perf_counter()
            gate(arch)
            costs.append(time.perf_counter() - t0)
        again, fresh_costs = [], []
        for _ in range(args.repeats):
            fresh = make()
            t0 = time.perf_counter()
            again.append(fresh(archs[0]))
            fresh_costs.append(time.perf_counter() - t0)
        med = statistics.median(again)
        spread = max(abs(v - med) for v in again) / med * 100
        figures = ", ".join(f"{v:.3f}" for v in gate.measured.values())
        later = costs[1:] + [statistics.median(fresh_costs)]
        print(f"{name}: per proposal {min(later):.2f}-{max(later):.2f} s (the space's first {costs[0]:.2f} s: "
              f"first export and session of the process); figures {figures} ms; {args.repeats} fresh measurements "
              f"of the first: median {med:.3f} ms, ±{spread:.1f} %")


if __name__ == "__main__":
    main()
