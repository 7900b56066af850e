"""Does NSGA-III earn its keep? Hypervolume (pymoo) of PruneEA's final front vs random search
with the same number of evaluations, the same seed, the same trained base model and the same
candidate evaluation (inherited weights + short fine-tune + val accuracy). Goal: ratio ≥ 1.10.

Random search draws each encoding like PruneEA's initial population (a per-individual keep
probability p ~ U(0, 1), then the same all-zero-group repair). Reference point: the base
network's MACs and accuracy 0. The two sides are interleaved generation by generation.

    .venv/bin/python benchmarks/prune_ea_hypervolume.py                  # the prune-ea/full defaults
    .venv/bin/python benchmarks/prune_ea_hypervolume.py --generations 8 --population 16 --random 32
"""
from __future__ import annotations

import argparse
import os
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
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="spnas-bench-"))
    os.environ.setdefault("SPNAS_HOME", str(home))

    import numpy as np
    import torch

    from nas_models.prune_resnet import encoding_length, repair_encoding
    from params.models import ClassifierTrain, CifarData, PruneSearchParams, Runtime
    from strategies.pareto import hypervolume, pareto_front
    from strategies.prune_ea import PruneEASearch
    from tasks.prepare_data import cifar_sources
    from tasks.prune_search import evaluate_candidate, load_base
    from tasks.train_base import train_base

    runtime = Runtime(device="cpu")
    (home / "data").mkdir()
    (home / "base").mkdir()
    data = cifar_sources(CifarData(), args.seed, home / "data")
    t0 = time.perf_counter()
    base = train_base(data, args.depth, ClassifierTrain(epochs=args.base_epochs), args.seed, runtime, home / "base")
    print(f"base ResNet-{args.depth}: test acc {base['performance']['acc']:.4f} "
          f"({time.perf_counter() - t0:.0f} s, torch threads {torch.get_num_threads()})")
    full_state = load_base(base).state_dict()
    cfg = PruneSearchParams(num_generation=args.generations, num_individual=args.population,
                            random_models=args.random, finetune_steps=args.finetune_steps,
                            bn_recalibration_batches=args.bn_batches)
    n = encoding_length(args.depth)
    ea = PruneEASearch(n, args.seed, num_generation=args.generations, num_individual=args.population,
                       random_models=args.random,
                       repair=lambda bits: [int(b) for b in repair_encoding(bits, args.depth, full_state)])
    rng = np.random.default_rng(args.seed)
    points: dict[str, list[tuple[float, float]]] = {"nsga3": [], "random": []}
    work = {k: home / k for k in points}
    for folder in work.values():
        folder.mkdir()
    next_id = {"nsga3": 0, "random": 0}

    def evaluate(side: str, encoding: str) -> dict:
        cid = next_id[side]
        next_id[side] += 1
        out = evaluate_candidate({"id": cid, "generation": 0, "encoding": encoding}, base, data, cfg, 64, args.seed,
                                 runtime, work[side])
        points[side].append((out["performance"]["macs"], out["performance"]["acc"]))
        return out["performance"]

    while not ea.done:
        batch = ea.ask(max(args.random, args.population))
        for cand in batch:  # NSGA-III's generation, then as many random encodings
            ea.tell(cand.id, evaluate("nsga3", cand.code))
        for _ in batch:
            p = rng.uniform()
            evaluate("random", repair_encoding((rng.uniform(size=n) < p).astype(int).tolist(), args.depth, full_state))
    ref = (float(base["performance"]["macs"]), 0.0)
    hv = {side: hypervolume(pts, (False, True), ref) for side, pts in points.items()}
    fronts = {side: len(pareto_front(pts, (False, True))) for side, pts in points.items()}
    print(f"evaluations per side: {len(points['nsga3'])} (NSGA-III: {args.random} random + {args.generations} x "
          f"{args.population}); BN recalibration {args.bn_batches} batches, fine-tune {args.finetune_steps} steps; "
          f"reference point (MACs {ref[0] / 1e6:.2f}M, acc 0)")
    print(f"NSGA-III front: {fronts['nsga3']} points, hypervolume {hv['nsga3']:.4e}")
    print(f"random front  : {fronts['random']} points, hypervolume {hv['random']:.4e}")
    print(f"hypervolume NSGA-III / random: {hv['nsga3'] / hv['random']:.3f}x (goal >= 1.10)")


if __name__ == "__main__":
    main()
