"""Is an embedded set hard enough for architectures to matter? ResNet-20 trained exactly as
prune-ea/full's default `train_base` stage trains it (the stage's own function, PruneTrain
defaults: 10 epochs, batch 64, SGD lr 0.1 after one warm-up epoch, cosine, pad-4 crop + flip),
and the same ResNet-20 with every channel group uniformly cut to the width that leaves about
`--pruned-macs` of the MACs (the first channels of each group kept; nas_models/prune_resnet.py),
trained from scratch with the same recipe, seed and data. Prints val and test accuracy per seed and the means.

The goal for a default data set: the full network well below saturation (test ≈ 0.6–0.85) and
the narrow one several points lower. The data and its train/val split are what the `data` stage
builds for that seed (the run's seed is the data seed and the training seed, as in the flow),
written to --out rather than the data cache, so `--set` can try other generator settings
(data.cifar's PHOTO_* constants, comma-separated for a range) without touching the cache. A
second run with the same --out and settings reuses the data and the finished base trainings.

    .venv/bin/python benchmarks/embedded_difficulty.py --kind photo_digits --seeds 0 1
    .venv/bin/python benchmarks/embedded_difficulty.py --kind photo_digits --seeds 0 1 --pruned-macs 0.1
    .venv/bin/python benchmarks/embedded_difficulty.py --kind digits --seeds 0
    .venv/bin/python benchmarks/embedded_difficulty.py --seeds 0 --set PHOTO_DIGIT_ALPHA=0.6,1.0 --threads 1

About 3 min per training of the full network on photo_digits (three renderings of each digit)
on one thread, 1 min on plain digits; asserts nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import data.cifar as cifar  # noqa: E402
from engine.runtime import configure_torch  # noqa: E402
from latency.timing import load_average  # noqa: E402
from nas_models.prune_resnet import build_prune_resnet, encoding_groups  # noqa: E402
from params.models import CifarData, ClassifierTrain, PruneTrain, Runtime  # noqa: E402
from tasks.cifar.data import cifar_sources  # noqa: E402
from tasks.cifar.training import measure, train_and_score  # noqa: E402
from tasks.prune_ea.train_base import train_base  # noqa: E402

DEPTH = 20
CPU = torch.device("cpu")


def uniform_encoding(keep: float) -> str:
    """Keep the first round(keep · width) channels (at least one) of every group."""
    bits = []
    for group in encoding_groups(DEPTH):
        kept = max(1, round(keep * group.length))
        bits.append("1" * kept + "0" * (group.length - kept))
    return "".join(bits)


def keep_for_macs(share: float) -> tuple[float, str, int]:
    """The uniform keep fraction whose network's MACs come closest to `share` of the full one's."""
    full = measure(build_prune_resnet(DEPTH))["macs"]
    best = None
    for step in range(1, 101):
        encoding = uniform_encoding(step / 100)
        macs = measure(build_prune_resnet(DEPTH, encoding))["macs"]
        if best is None or abs(macs / full - share) < abs(best[2] / full - share):
            best = (step / 100, encoding, macs)
    return best


def parse_override(text: str) -> tuple[str, object]:
    name, _, value = text.partition("=")
    if not name.startswith("PHOTO_") or not hasattr(cifar, name) or not value:
        known = sorted(n for n in vars(cifar) if n.startswith("PHOTO_"))
        raise SystemExit(f"--set {text!r}: expected NAME=value with NAME one of {known}")
    numbers = tuple(float(v) if "." in v else int(v) for v in value.split(","))
    return name, numbers if len(numbers) > 1 else numbers[0]


def build_data(kind: str, seed: int, out: Path):
    """The `data` stage's split of the embedded set `kind` for `seed`, from a folder under `out`."""
    folder = out / f"{kind}_seed{seed}"
    if not (folder / cifar.META_NAME).exists():
        cifar.write_cifar_set(folder, cifar.EMBEDDED[kind](seed))
    split_dir = out / f"split_seed{seed}"
    split_dir.mkdir(parents=True, exist_ok=True)
    return cifar_sources(CifarData(dataset_dir=str(folder)), seed, split_dir)


def train_pruned(data, encoding: str, cfg: ClassifierTrain, seed: int, threads: int | None) -> tuple[dict, list]:
    """train_base's recipe (threads + seeds, build, train_and_score) for a narrower network."""
    configure_torch(threads, seed)
    model = build_prune_resnet(DEPTH, encoding, num_classes=data.num_classes)
    scores = train_and_score(model, data, cfg, seed, CPU, None)
    return {"acc": scores["test_acc"], "val_acc": scores["val_acc"], **measure(model)}, scores["history"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="photo_digits", choices=sorted(cifar.EMBEDDED))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--pruned-macs", type=float, default=1 / 3, help="MACs share of the narrow network "
                                                                     "(0 = train the full network only)")
    ap.add_argument("--set", action="append", default=[], metavar="PHOTO_NAME=v[,v]",
                    help="override a photo-digits generator constant of data/cifar.py (repeatable)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    for name, value in map(parse_override, args.set):
        setattr(cifar, name, value)
    settings = {n: getattr(cifar, n) for n in sorted(vars(cifar)) if n.startswith("PHOTO_")}
    cfg = PruneTrain()
    models = [("full", None, None)]
    if args.pruned_macs > 0:
        keep, encoding, _ = keep_for_macs(args.pruned_macs)
        models.append((f"uniform x{keep:.2f}", encoding, keep))
    print(f"kind {args.kind}; base training {cfg.model_dump()}; threads {args.threads or 'all'}; "
          f"load {load_average()}")
    if args.kind == "photo_digits":
        print("generator: " + ", ".join(f"{k}={v}" for k, v in settings.items()))

    with tempfile.TemporaryDirectory(prefix="spnas-difficulty-") as tmp:
        # One folder per kind and generator setting: data and base checkpoints are reused only there.
        tag = hashlib.sha256(json.dumps(settings if args.kind == "photo_digits" else {}).encode()).hexdigest()[:8]
        out = (args.out or Path(tmp)) / f"{args.kind}_{tag}"
        rows = []
        for seed in args.seeds:
            data = build_data(args.kind, seed, out)
            for name, encoding, _ in models:
                t0 = time.perf_counter()
                if encoding is None:
                    base = train_base(data, DEPTH, cfg, seed, Runtime(device="cpu", num_threads=args.threads),
                                      out / f"base_seed{seed}")
                    perf, history = dict(base.performance), base.history
                else:
                    perf, history = train_pruned(data, encoding, cfg, seed, args.threads)
                rows.append({"seed": seed, "model": name, "macs": perf["macs"], "val": perf["val_acc"],
                             "test": perf["acc"], "s": time.perf_counter() - t0})
                r = rows[-1]
                curve = " ".join(f"{h['val_top1']:.2f}" for h in history)
                print(f"  seed {seed} {name:<14} {r['macs'] / 1e6:6.2f}M MACs  val {r['val']:.3f}  "
                      f"test {r['test']:.3f}  ({r['s']:.0f} s; val by epoch {curve})", flush=True)

    print(f"\n{'model':<15}{'MACs':>8}  " + "  ".join(f"test s{s}" for s in args.seeds) + "   mean   val mean")
    for name, _, _ in models:
        mine = [r for r in rows if r["model"] == name]
        tests = [r["test"] for r in mine]
        print(f"{name:<15}{mine[0]['macs'] / 1e6:7.2f}M  " + "  ".join(f"{t:7.3f}" for t in tests)
              + f"  {statistics.mean(tests):6.3f}   {statistics.mean(r['val'] for r in mine):6.3f}")


if __name__ == "__main__":
    main()
