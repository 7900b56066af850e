"""Does a Dask cluster scale the search? Candidates per second on 1 worker vs 2 workers.

1. Once, in a temporary SPNAS_HOME: the embedded digit canvases, the detection split and the
   fine-tuned starting detector (spnas/full's data → split → fine_tune, small budgets).
2. One batch of serial-search candidates (default 8): children of the start code made by
   SpNasS mutations (swap / expand / add-stage), each inheriting the fine-tuned weights, as the
   serial stage's second round does.
3. For k = 1 and k = 2: a `distributed.LocalCluster(n_workers=k, threads_per_worker=1,
   processes=True, host="127.0.0.1")`, warmed up (every worker imports torch and the project
   and evaluates one tiny candidate, untimed), then the whole batch submitted at once through
   `train_candidate` — the plain function the serial search's candidate task wraps — with torch
   threads 1 in each worker. Wall time from the first submit to the last result.

Prints candidates/s for each, the ratio (goal >= 1.7 on 2 idle cores: each worker is one
process with one torch thread, so two should do nearly twice the work), which worker ran which
candidate, and the load average (a busy machine moves the figures). A benchmark reports; it
asserts nothing.

    .venv/bin/python benchmarks/dask_scaling.py [--candidates 8] [--steps 30] [--eval-images 24]
        [--fine-tune-epochs 1] [--train-images 240] [--val-images 40] [--repeats 1]
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the project is imported after SPNAS_HOME is set (main)
    from tasks.spnas.fine_tune import FineTuned
    from tasks.spnas.split import Split

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=8, help="serial-search candidates in the batch")
    p.add_argument("--steps", type=int, default=30, help="training steps per candidate")
    p.add_argument("--eval-images", type=int, default=24, help="search-val images each candidate is scored on")
    p.add_argument("--fine-tune-epochs", type=int, default=1, help="epochs of the starting detector (once)")
    p.add_argument("--train-images", type=int, default=240, help="embedded training canvases")
    p.add_argument("--val-images", type=int, default=40, help="embedded held-out canvases")
    p.add_argument("--workers", default="1,2", help="cluster sizes compared, e.g. 1,2")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of the cluster sizes in turn (1, 2, 1, 2, ...): load drift hits both alike")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def evaluate_on_worker(candidate: dict[str, Any], data: Split, optimizer: Any, steps: int, seed: int,
                       out_dir: str) -> dict[str, Any]:
    """Runs inside a Dask worker: one candidate, and who ran it when (absolute clock, for the timeline)."""
    from distributed import get_worker

    from params.models import Runtime
    from tasks.spnas.train_candidate import train_candidate

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    started = time.time()
    out = train_candidate(candidate, data, optimizer, steps, seed, Runtime(device="cpu", num_threads=1),
                          Path(out_dir), stage="serial")  # serial mutations of the start code
    return {"id": candidate["id"], "code": candidate["code"], "worker": get_worker().address, "started": started,
            "seconds": time.time() - started, "mAP": out["performance"]["mAP"]}


def prepare(args: argparse.Namespace, home: Path) -> tuple[Any, Split, FineTuned, list[dict[str, Any]]]:
    """The split, the fine-tuned start and the candidate batch (built once, in this process)."""
    from params.models import Runtime, SpnasParams
    from strategies.serial import mutate
    from tasks.spnas.detectors import desc_for
    from tasks.spnas.fine_tune import fine_tune_detector
    from tasks.spnas.data import detection_sources
    from tasks.spnas.split import split_detection

    p = SpnasParams.model_validate({
        "seed": args.seed, "data": {"num_train_images": args.train_images, "num_val_images": args.val_images},
        "fine_tune": {"epochs": args.fine_tune_epochs}, "optimizer": {"eval_max_images": args.eval_images}})
    for d in ("split", "fine_tune"):
        (home / d).mkdir(parents=True, exist_ok=True)
    data = split_detection(detection_sources(p.data, p.model.image_size, p.seed), p.data, p.seed, home / "split")
    start = fine_tune_detector(data, p.model, p.optimizer, p.fine_tune, p.seed, Runtime(device="cpu"),
                               home / "fine_tune")
    rng, s = random.Random(args.seed), p.serial
    batch, seen = [], {p.model.backbone_code}
    while len(batch) < args.candidates:  # distinct children of the start code, as SpNasS proposes them
        code, kinds = mutate(p.model.backbone_code, rng, s.num_mutate, s.expend_ratio, s.add_stage_ratio,
                             s.max_stages)
        if code in seen:
            continue
        seen.add(code)
        batch.append({"id": len(batch) + 1, "code": code, "parent_id": 0, "mutations": "+".join(kinds),
                      "desc": desc_for(p.model, data.num_classes, code), "parent_model": start.model_path,
                      "freeze": False})
    return p.optimizer, data, start, batch


def run_cluster(k: int, batch: list[dict[str, Any]], data: Split, optimizer: Any, args: argparse.Namespace,
                out_dir: Path) -> tuple[float, list[dict[str, Any]], float]:
    """(wall seconds for the batch, per-candidate records, warm-up seconds) on a fresh k-worker cluster."""
    from distributed import Client, LocalCluster, wait

    out_dir.mkdir(parents=True, exist_ok=True)
    with LocalCluster(n_workers=k, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(k)
        workers = list(client.scheduler_info()["workers"])
        # Warm-up, untimed: one tiny candidate pinned to each worker (imports torch, torchvision,
        # the project, builds a detector, reads the COCO files).
        t0 = time.perf_counter()
        tiny = {**batch[0], "id": 0}
        warm = [client.submit(evaluate_on_worker, tiny, data, optimizer, 1, args.seed, str(out_dir / f"warm{i}"),
                              workers=[w], allow_other_workers=False, pure=False) for i, w in enumerate(workers)]
        wait(warm)
        [f.result() for f in warm]  # a failing worker fails here, not in the timing
        warmup = time.perf_counter() - t0
        t0 = time.perf_counter()
        futures = [client.submit(evaluate_on_worker, c, data, optimizer, args.steps, args.seed, str(out_dir),
                                 pure=False) for c in batch]
        records = client.gather(futures)
        wall = time.perf_counter() - t0
    return wall, records, warmup


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = [int(k) for k in args.workers.split(",")]
    home = Path(tempfile.mkdtemp(prefix="spnas-dask-bench-"))
    os.environ["SPNAS_HOME"] = str(home)  # before the project reads it; the workers inherit it
    from latency.timing import load_average

    print(f"load average before: {load_average()} on {os.cpu_count()} CPUs | SPNAS_HOME {home}", flush=True)
    t0 = time.perf_counter()
    optimizer, data, start, batch = prepare(args, home)
    print(f"prepared in {time.perf_counter() - t0:.0f} s: {len(batch)} candidates of start "
          f"{start.code} (mAP {start.performance['mAP']:.3f}); {args.steps} steps, "
          f"{args.eval_images} scoring images each", flush=True)
    walls: dict[int, list[float]] = {k: [] for k in sizes}
    for r in range(args.repeats):
        for k in sizes:
            wall, records, warmup = run_cluster(k, batch, data, optimizer, args, home / f"run{r}-k{k}")
            walls[k].append(wall)
            print(f"\n{k} worker(s), round {r + 1}: {len(batch)} candidates in {wall:.1f} s = "
                  f"{len(batch) / wall:.3f} candidates/s (warm-up {warmup:.0f} s, untimed)", flush=True)
            first = min(rec["started"] for rec in records)
            for rec in sorted(records, key=lambda x: x["id"]):
                print(f"  candidate {rec['id']:>2} {rec['code']:<24} on {rec['worker']:<22} "
                      f"started +{rec['started'] - first:6.1f} s, took {rec['seconds']:6.1f} s, mAP {rec['mAP']:.3f}")
            per_worker = {w: sum(1 for rec in records if rec["worker"] == w) for w in {rec["worker"] for rec in records}}
            print(f"  candidates per worker: {per_worker}")
    best = {k: len(batch) / min(v) for k, v in walls.items()}
    print("\nthroughput (best round): " + ", ".join(f"{k} worker(s) {t:.3f} candidates/s" for k, t in best.items()))
    if 1 in best and 2 in best:
        print(f"ratio 2 workers / 1 worker: {best[2] / best[1]:.2f} (goal >= 1.7)")
    print(f"load average after: {load_average()} (shared machine: figures move with load)")
    shutil.rmtree(home, ignore_errors=True)  # ~2 GB of candidate weights per run


if __name__ == "__main__":
    main()
