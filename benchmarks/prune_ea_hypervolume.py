"""Does NSGA-III earn its keep? Hypervolume (pymoo) of PruneEA's final front vs random search
with the same number of evaluations, the same seed, the same trained base model and the same
candidate evaluation (inherited weights + BN re-estimation + short fine-tune + val accuracy).
Goal: ratio ≥ 1.10.

Random search draws each encoding like PruneEA's initial population (a per-individual keep
probability p ~ U(0, 1), then the same all-zero-group repair). Reference point: the base
network's MACs and accuracy 0. The two sides are interleaved generation by generation.

One pair per search seed (`--seeds`, one base model trained with the first): at 64
evaluations a single pair swings by about ±0.08 with the seed, so the mean over seeds is the
figure to read. `--ceiling K` adds how much there is to gain at all: random search with K times
the evaluations over random search (first seed only).

    .venv/bin/python benchmarks/prune_ea_hypervolume.py                  # the prune-ea/full defaults
    .venv/bin/python benchmarks/prune_ea_hypervolume.py --seeds 0 1 2 --finetune-steps 0 --ceiling 4
    .venv/bin/python benchmarks/prune_ea_hypervolume.py --generations 31 --population 32 --random 64  # the seed's
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--generations", type=int, default=6)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--random", type=int, default=16, help="random_models of NSGA-III (its first generation)")
    ap.add_argument("--base-epochs", type=int, default=10)
    ap.add_argument("--finetune-steps", type=int, default=40)
    ap.add_argument("--bn-batches", type=int, default=8, help="bn_recalibration_batches (0 = the base model's BN "
                                                                  "statistics)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one NSGA-III/random pair per seed")
    ap.add_argument("--ceiling", type=int, default=0, metavar="K",
                    help="also random search with K x the evaluations vs random search (first seed)")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="spnas-bench-"))
    os.environ.setdefault("SPNAS_HOME", str(home))

    import numpy as np
    import torch

    from nas_models.prune_resnet import encoding_length, repair_encoding
    from params.models import ClassifierTrain, CifarData, PruneSearchParams, Runtime
    from strategies.pareto import hypervolume, pareto_front
    from strategies.prune_ea import PruneEASearch
    from tasks.cifar.data import cifar_sources
    from tasks.prune_ea.prune_search import evaluate_candidate, load_base
    from tasks.prune_ea.train_base import train_base

    runtime = Runtime(device="cpu")
    (home / "data").mkdir()
    (home / "base").mkdir()
    data = cifar_sources(CifarData(), args.seeds[0], home / "data")
    t0 = time.perf_counter()
    base = train_base(data, args.depth, ClassifierTrain(epochs=args.base_epochs), args.seeds[0], runtime,
                      home / "base")
    print(f"base ResNet-{args.depth}: test acc {base.performance['acc']:.4f} "
          f"({time.perf_counter() - t0:.0f} s, torch threads {torch.get_num_threads()}); {data.source}")
    full_state = load_base(base).state_dict()
    cfg = PruneSearchParams(num_generation=args.generations, num_individual=args.population,
                            random_models=args.random, finetune_steps=args.finetune_steps,
                            bn_recalibration_batches=args.bn_batches)
    n = encoding_length(args.depth)
    repair = lambda bits: [int(b) for b in repair_encoding(bits, args.depth, full_state)]  # noqa: E731
    ref = (float(base.performance["macs"]), 0.0)
    hv = lambda pts: hypervolume(pts, (False, True), ref)  # noqa: E731
    print(f"per side: {args.random} random + {args.generations} x {args.population} evaluations; BN re-estimation "
          f"{args.bn_batches} batches, fine-tune {args.finetune_steps} steps; reference point (MACs "
          f"{ref[0] / 1e6:.2f}M, acc 0)")

    def evaluate(side: str, cid: int, encoding: str, seed: int) -> tuple[float, float]:
        folder = home / f"seed{seed}" / side
        folder.mkdir(parents=True, exist_ok=True)
        out = evaluate_candidate({"id": cid, "generation": 0, "encoding": encoding}, base, data, cfg, 64, seed,
                                 runtime, folder)
        return out["performance"]["macs"], out["performance"]["acc"]

    def random_encoding(rng: np.random.Generator) -> str:
        p = rng.uniform()
        return "".join(map(str, repair((rng.uniform(size=n) < p).astype(int).tolist())))

    ratios = []
    for seed in args.seeds:
        t1 = time.perf_counter()
        ea = PruneEASearch(n, seed, num_generation=args.generations, num_individual=args.population,
                           random_models=args.random, repair=repair)
        rng = np.random.default_rng(seed)
        points: dict[str, list[tuple[float, float]]] = {"nsga3": [], "random": []}
        while not ea.done:
            batch = ea.ask(max(args.random, args.population))
            for cand in batch:  # NSGA-III's generation, then as many random encodings
                macs, acc = evaluate("nsga3", len(points["nsga3"]), cand.code, seed)
                points["nsga3"].append((macs, acc))
                ea.tell(cand.id, {"macs": macs, "acc": acc})
            for _ in batch:
                points["random"].append(evaluate("random", len(points["random"]), random_encoding(rng), seed))
        ratios.append(hv(points["nsga3"]) / hv(points["random"]))
        fronts = {side: len(pareto_front(pts, (False, True))) for side, pts in points.items()}
        print(f"seed {seed}: NSGA-III front {fronts['nsga3']} points, hypervolume {hv(points['nsga3']):.4e}; random "
              f"front {fronts['random']} points, {hv(points['random']):.4e}; ratio {ratios[-1]:.3f}x "
              f"({len(points['nsga3'])} evaluations per side, {time.perf_counter() - t1:.0f} s)")
        if args.ceiling > 1 and seed == args.seeds[0]:
            more = points["random"] + [evaluate("random", len(points["random"]) + i, random_encoding(rng), seed)
                                       for i in range(len(points["random"]) * (args.ceiling - 1))]
            print(f"ceiling, seed {seed}: random search with {len(more)} evaluations / with {len(points['random'])}: "
                  f"{hv(more) / hv(points['random']):.3f}x; NSGA-III / random with {len(more)}: "
                  f"{hv(points['nsga3']) / hv(more):.3f}x")
    print(f"hypervolume NSGA-III / random over {len(ratios)} seeds: mean {statistics.fmean(ratios):.3f}x, "
          f"min {min(ratios):.3f}x, max {max(ratios):.3f}x (goal >= 1.10)")


if __name__ == "__main__":
    main()
