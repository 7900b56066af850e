"""What does weight sharing cost per step? One SPOS supernet training step on a path vs one step
of the same path built as a stand-alone subnet. Goal: supernet / subnet ≤ 1.10.

Both sides: the same path, the same batch, the same weights (the subnet is
`subnet_from_supernet`, so both compute the same function), cross-entropy, backward, and
SGD (momentum 0.9, weight decay 4e-5) over *all* of the model's parameters with
`zero_grad(set_to_none=True)` — for the supernet that is how training runs (off-path tensors
get no gradient and SGD skips them). The supernet side also pays for validating the path and
indexing the chosen op of each block. After warm-up the two are timed interleaved
(A, B, A, B, ...) so machine noise hits both alike; min-of-N and median are printed.
A benchmark reports figures; it asserts nothing.

    .venv/bin/python benchmarks/spos_step.py [--threads 2] [--batch 64] [--repeats 40]
                                             [--channels-last]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from latency.flops import count_macs_params, format_count  # noqa: E402
from nas_models.spos_shufflenet import (  # noqa: E402
    build_supernet,
    get_preset,
    subnet_from_supernet,
)
from latency.timing import interleaved_times, load_average  # noqa: E402
from strategies.path_sampler import uniform  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=40, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per side first")
    p.add_argument("--seed", type=int, default=0, help="picks the path and the batch")
    p.add_argument("--channels-last", action="store_true",
                   help="both models and the batch in channels_last (faster depthwise backward)")
    args = p.parse_args(argv)
    for name in ("threads", "batch", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be at least 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    size = preset.input_size
    path = uniform(random.Random(args.seed))

    supernet = build_supernet(preset, num_classes=10).train()
    subnet = subnet_from_supernet(supernet, path).train()
    x = torch.randn(args.batch, 3, size, size)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    supernet.to(memory_format=memory_format)
    subnet.to(memory_format=memory_format)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (args.batch,))
    loss_fn = nn.CrossEntropyLoss()

    def sgd(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=4e-5)

    opt_super, opt_sub = sgd(supernet), sgd(subnet)

    def super_step() -> None:
        opt_super.zero_grad(set_to_none=True)
        loss_fn(supernet(x, path), y).backward()
        opt_super.step()

    def sub_step() -> None:
        opt_sub.zero_grad(set_to_none=True)
        loss_fn(subnet(x), y).backward()
        opt_sub.step()

    macs, params = count_macs_params(subnet, (1, 3, size, size))
    n_super = sum(p.numel() for p in supernet.parameters())
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | preset {preset.name} | "
          f"input {args.batch}x3x{size}x{size} ({'channels_last' if args.channels_last else 'NCHW'})"
          f" | warm-up {args.warmup} | {args.repeats} interleaved steps each")
    print(f"path {path}: {format_count(macs)} MACs/image, {format_count(params)} params "
          f"(supernet {format_count(n_super)} params)")
    print(f"load average before: {load_average()} on {os.cpu_count()} CPUs "
          "(shared machine: compare min-of-N first)\n")

    ms = interleaved_times({"supernet": super_step, "subnet": sub_step}, args.warmup, args.repeats)

    print(f"{'one training step':<20}{'min ms':>9}{'p50 ms':>9}")
    for name, values in ms.items():
        print(f"{name:<20}{min(values):>9.1f}{statistics.median(values):>9.1f}")
    lo = min(ms["supernet"]) / min(ms["subnet"])
    med = statistics.median(ms["supernet"]) / statistics.median(ms["subnet"])
    print(f"supernet / subnet: min {lo:.3f}x, p50 {med:.3f}x (goal <= 1.10)")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
