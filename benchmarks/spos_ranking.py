"""Does the SPOS supernet rank architectures? The rank check of spos/full at benchmark size, for
the warm-started supernet and the paper's recipe at the same total number of steps.

`--paths` paths spread over the small space's MACs range (the rank check's own choice) are each
trained stand-alone for `--standalone-steps` (constant lr, long enough to stop moving on the
embedded digits) and scored on every held-out image (val split + test set). Each supernet
recipe then scores the same paths with its weights, with and without BN recalibration, and
Kendall tau with its p-value, a paired bootstrap interval over the images and the verdict
(core/stats.py) are printed, with the mean accuracy of the paths and each supernet's wall time.
Stand-alone scores and trained supernets are kept in --out and reused by a second run with the
same settings (a new --out measures everything again; its train-time column is then honest).
May run long (about 20-30 min on 2 cores at the defaults); asserts nothing.

    .venv/bin/python benchmarks/spos_ranking.py [--paths 10] [--standalone-steps 1000]
        [--total-steps 1200] [--recalib-batches 8] [--seed 0] [--out /tmp/spos_ranking]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from core.seeds import derive_seed  # noqa: E402
from core.stats import rank_agreement  # noqa: E402
from engine.runtime import configure_torch  # noqa: E402
from latency.timing import load_average  # noqa: E402
from nas_models.spos_shufflenet import build_subnet  # noqa: E402
from params.models import CifarData, Runtime, SposModel, SupernetTrain, SupernetWarmStart  # noqa: E402
from tasks.cifar.data import cifar_sources  # noqa: E402
from tasks.cifar.training import finetune, held_out_hits  # noqa: E402
from tasks.spos.rank_check import spread_paths  # noqa: E402
from tasks.spos.shared import macs_table, supernet_path  # noqa: E402
from tasks.spos.supernet import train  # noqa: E402

CPU = torch.device("cpu")


def standalone(paths: list[list[int]], data, steps: int, seed: int, threads: int, out: Path) -> np.ndarray:
    rows = []
    for i, choices in enumerate(paths):
        saved = out / f"standalone_{i}_{steps}.json"
        if saved.exists() and json.loads(saved.read_text())["choices"] == choices:
            bits = json.loads(saved.read_text())["hits"]
        else:
            configure_torch(threads, derive_seed(seed, "spos.rank_check", i))
            model = build_subnet(choices, "small", num_classes=data.num_classes)
            t0 = time.perf_counter()
            finetune(model, data, steps, 0.05, 64, seed, CPU)
            bits = "".join(str(int(h)) for h in held_out_hits(model, data, CPU))
            saved.write_text(json.dumps({"choices": choices, "hits": bits}))
            print(f"  stand-alone path {i}: {bits.count('1') / len(bits):.3f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
        rows.append(np.frombuffer(bits.encode(), dtype=np.uint8) - ord("0"))
    return np.stack(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--paths", type=int, default=10)
    p.add_argument("--standalone-steps", type=int, default=1000)
    p.add_argument("--total-steps", type=int, default=1200, help="supernet steps of either recipe, warm start included")
    p.add_argument("--recalib-batches", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("/tmp/spos_ranking"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {args.threads} threads, load average {load_average()}")
    data = cifar_sources(CifarData(), args.seed, args.out)
    paths = spread_paths(macs_table("small", data.num_classes, args.out), args.paths, args.seed)
    print(f"{len(paths)} paths; stand-alone training {args.standalone_steps} steps each", flush=True)
    stand = standalone(paths, data, args.standalone_steps, args.seed, args.threads, args.out)
    print(f"stand-alone accuracy: mean {stand.mean():.3f}, range {stand.mean(1).min():.3f}-{stand.mean(1).max():.3f} "
          f"on {stand.shape[1]} held-out images")
    warm = SupernetWarmStart()
    recipes = {"warm-started": SupernetTrain(steps=args.total_steps - warm.reference_steps - warm.align_steps),
               "paper recipe": SupernetTrain(steps=args.total_steps, warm_start=None)}
    rows = []
    for name, cfg in recipes.items():
        t0 = time.perf_counter()
        folder = args.out / name.split()[0] / str(args.total_steps)
        folder.mkdir(parents=True, exist_ok=True)
        trained = train(data, SposModel(), cfg, args.seed, Runtime(device="cpu", num_threads=args.threads), folder)
        seconds = time.perf_counter() - t0
        supernet = trained.load()
        for recalib in (args.recalib_batches, 0):
            hits = np.stack([held_out_hits(supernet_path(supernet, c, data, recalib, 128, args.seed, "rgb", CPU),
                                           data, CPU) for c in paths])
            a = rank_agreement(stand, hits, 1000, args.seed)
            rows.append((name, "recalibrated" if recalib else "supernet BN", hits.mean(), trained.loss_first,
                         trained.loss, seconds, a))
            print(f"  {name}, {rows[-1][1]}: {a.describe()}", flush=True)
    print(f"\n{'recipe':14} {'BN':13} {'path acc':>8} {'loss first/last 50':>19} {'train s':>8}  rank agreement")
    for name, bn, acc, first, last, seconds, a in rows:
        print(f"{name:14} {bn:13} {acc:8.3f} {first:9.3f}/{last:<9.3f} {seconds:8.0f}  {a.describe()}")
    print(f"(stand-alone mean {stand.mean():.3f}; goal: tau >= 0.5 with p < 0.05 for the warm-started supernet)")


if __name__ == "__main__":
    main()
