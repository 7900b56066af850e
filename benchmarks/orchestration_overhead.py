"""What Prefect + MLflow cost: the lcnet pipeline as a flow (tasks, persisted results, MLflow
runs and artifacts, Prefect artifacts) vs the same stage functions called plainly.

Runs A (plain) and B (flow) interleaved, A B A B ..., with the same small parameters, and
prints min and median wall times and their ratio. The flow talks to a throwaway Prefect
server (prefect_test_harness) unless PREFECT_API_URL is set, and to a local MLflow SQLite
store unless MLFLOW_TRACKING_URI is set. Every flow run uses refresh_from="all" so it trains.

    .venv/bin/python benchmarks/orchestration_overhead.py --repeats 2
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--scale", type=float, default=0.5)
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="spnas-bench-"))
    os.environ.setdefault("SPNAS_HOME", str(home))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(home / "results")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

    import torch

    from flows.lcnet import lcnet
    from params.loader import load_params
    from params.models import LcnetParams, runtime_of
    from tasks.evaluate_classifier import evaluate_classifier
    from tasks.export_classifier import export_stage
    from tasks.predict import predict_stage
    from tasks.prepare_data import classification_sources
    from tasks.split import split_dataset
    from tasks.train_classifier import train_classifier

    overrides = {"train": {"epochs": args.epochs}, "model": {"scale": args.scale}, "output_root": str(home / "out")}
    p = load_params(LcnetParams, "params/lcnet.yaml", overrides)
    runtime = runtime_of(p)

    def plain() -> None:
        run = Path(tempfile.mkdtemp(dir=home))
        dirs = {n: run / n for n in ("split", "train", "evaluate", "export", "predict")}
        for d in dirs.values():
            d.mkdir()
        split = split_dataset(classification_sources(p.data)["dataset_dir"], p.data, p.seed, dirs["split"])
        trained = train_classifier(split, p.model, p.train, p.seed, runtime, dirs["train"])
        evaluate_classifier(split, trained, p.model, p.train.topk, p.seed, runtime, dirs["evaluate"])
        exported = export_stage(split, trained, p.model, p.seed, runtime, dirs["export"])
        predict_stage(split, exported, p.predict, runtime, dirs["predict"])

    def flow() -> None:
        lcnet(params_file="params/lcnet.yaml", overrides=overrides, refresh_from="all")

    harness = contextlib.nullcontext()
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.testing.utilities import prefect_test_harness

        harness = prefect_test_harness(server_startup_timeout=120)
    times: dict[str, list[float]] = {"plain": [], "flow": []}
    with harness:
        plain()  # warm-up: builds the embedded data, loads libraries
        for _ in range(args.repeats):
            for name, fn in (("plain", plain), ("flow", flow)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    a, b = times["plain"], times["flow"]
    print(f"lcnet pipeline, PP-LCNet x{args.scale}, {args.epochs} epochs, torch threads {torch.get_num_threads()}, "
          f"input {p.model.input_size}px, {args.repeats} interleaved repeats")
    print(f"plain functions : min {min(a):7.2f} s  median {statistics.median(a):7.2f} s")
    print(f"Prefect + MLflow: min {min(b):7.2f} s  median {statistics.median(b):7.2f} s")
    print(f"flow / plain    : min {min(b) / min(a):.3f}x  median {statistics.median(b) / statistics.median(a):.3f}x "
          f"(overhead {min(b) - min(a):+.2f} s)")


if __name__ == "__main__":
    main()
