"""What Prefect + MLflow cost: a pipeline as a flow (tasks, subflows, persisted results, MLflow
runs and artifacts, Prefect artifacts) vs the same stage functions called plainly.

`--pipeline spnas` (default): spnas/full at its defaults (params/spnas.yaml; about 10 min per
side on 2 cores) — the plain side is benchmarks/plain_spnas.py (the functions each task wraps,
in the flow's order, same params and seed). `--pipeline lcnet`: the small lcnet pipeline.

Runs A (plain) and B (flow) interleaved, A B A B ..., after a warm-up of both sides on a tiny
budget (imports, embedded data, the MLflow store's schema, first torch/ONNX calls), and prints
min and median wall times, their ratio, and where the flow's extra time goes: per stage, plain
vs flow wall time, and inside the flow the time spent in tracking/tracker.py calls (MLflow
runs/params/metrics; MLflow artifact files and plots; Prefect artifacts), in Prefect's result
store (persisting task results), computing stage cache keys, clearing and linking work
folders; the rest is the engine itself (task/flow runs and state transitions: server round
trips, counted as Prefect API requests, and the log and event threads competing for the cores).
Every flow run uses refresh_from="all", so it computes every stage. The plain side runs in a
worker thread, as Prefect runs task functions (--plain-thread main to change it: on a busy
machine torch's OpenMP team in the main thread burns several times the CPU, which once made the
plain side 3x slower than the flow). The temporary state folder is deleted at the end (--keep).

The flow talks to a throwaway Prefect server (prefect_test_harness) unless PREFECT_API_URL is
set, and to a local MLflow SQLite store unless MLFLOW_TRACKING_URI is set (the deployed stack
uses an MLflow server: point MLFLOW_TRACKING_URI at one to measure that). Prefect's log level
is INFO for spnas (as deployed: logs are shipped to the API), WARNING for lcnet; set
PREFECT_LOGGING_LEVEL to change it. Prefect's console logs go to stderr.

    nice -n 10 .venv/bin/python benchmarks/orchestration_overhead.py 2>overhead.log     # spnas, full size
    .venv/bin/python benchmarks/orchestration_overhead.py --set serial.max_sample=2 --set fully_train.epochs=1
    .venv/bin/python benchmarks/orchestration_overhead.py --pipeline lcnet --repeats 2
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GOAL = 1.05
OUTSIDE = "(outside stages)"
# Categories of orchestration work timed inside a flow run, in report order.
MLFLOW, MLFLOW_FILES, PREFECT_ARTIFACTS = "MLflow", "MLflow files", "Prefect arts"
RESULTS, KEYS, WORK_DIRS = "results", "cache keys", "work dirs"
CATEGORIES = (MLFLOW, MLFLOW_FILES, PREFECT_ARTIFACTS, RESULTS, KEYS, WORK_DIRS)
# tracker functions whose time is artifact upload (and plot rendering), not run bookkeeping.
TRACKER_FILES = {"log_files", "log_figure", "log_curve", "log_pareto_plot", "log_fronts_plot"}
TRACKER_PREFECT = {"publish_table", "publish_markdown", "in_prefect_run", "artifact_key"}
# A context manager around a whole stage body: its parts (start_child_run, finish_run) are timed.
TRACKER_SKIP = {"child_run"}

# The warm-up's budget for spnas: every stage runs, each in seconds (tests/test_spnas_flow.py's TINY).
SPNAS_WARMUP = {
    "data": {"num_train_images": 40, "num_val_images": 12},
    "optimizer": {"eval_max_images": 4},
    "fine_tune": {"epochs": 1}, "fully_train": {"epochs": 1},
    "serial": {"max_sample": 3, "batch": 2, "candidate_steps": 2},
    "reignite": {"epochs": 1, "detector_steps": 1, "input_size": 32},
    "parallel": {"max_sample": 1, "candidate_steps": 2},
    "export": {"num_images": 2},
}


class Probe:
    """Timers wrapped around the orchestration code a flow run goes through, by stage.

    Pipeline.run/map/search (tasks/orchestration/pipeline.py) mark which stage is running; every public
    function of tracking/tracker.py, Prefect's result store, the stage-key function and the work
    folder helpers add their wall time to (stage, category). Only the outermost timed call
    counts (child_run -> start_child_run -> start_run -> log_params is one MLflow call). Stages
    run one at a time (the flow's task runner has one worker, the searches' too at the default
    candidate_workers=1), so times taken in task threads add up without overlap."""

    def __init__(self) -> None:
        self.active = False
        self.stage = OUTSIDE
        self.stage_seconds: dict[str, float] = defaultdict(float)
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.calls: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])  # function -> [calls, seconds]
        self.requests: dict[str, int] = defaultdict(int)  # stage -> Prefect API requests
        self._local = threading.local()
        self._undo: list[tuple[Any, str, Any]] = []

    def reset(self) -> None:
        self.stage = OUTSIDE
        for table in (self.stage_seconds, self.seconds, self.calls, self.requests):
            table.clear()

    def _replace(self, owner: Any, name: str, wrapper: Any) -> None:
        self._undo.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, wrapper)

    def _timed(self, owner: Any, name: str, category: str, label: str) -> None:
        fn = getattr(owner, name)
        probe = self

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not probe.active or getattr(probe._local, "busy", False):
                return fn(*args, **kwargs)
            probe._local.busy = True
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                probe._local.busy = False
                probe.seconds[(probe.stage, category)] += dt
                probe.calls[label][0] += 1
                probe.calls[label][1] += dt

        self._replace(owner, name, timed)

    def _stage(self, name: str) -> None:
        from tasks.orchestration.pipeline import Pipeline

        fn = getattr(Pipeline, name)
        probe = self

        @functools.wraps(fn)
        def timed(pipe: Any, stage: str, *args: Any, **kwargs: Any) -> Any:
            probe.stage = stage
            t0 = time.perf_counter()
            try:
                return fn(pipe, stage, *args, **kwargs)
            finally:
                probe.stage_seconds[stage] += time.perf_counter() - t0
                probe.stage = OUTSIDE

        self._replace(Pipeline, name, timed)

    def _count_requests(self) -> None:
        from prefect.client.base import PrefectHttpxAsyncClient, PrefectHttpxSyncClient

        probe = self
        sync_send, async_send = PrefectHttpxSyncClient.send, PrefectHttpxAsyncClient.send

        @functools.wraps(sync_send)
        def send(client: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            probe.requests[probe.stage] += probe.active
            return sync_send(client, request, *args, **kwargs)

        @functools.wraps(async_send)
        async def asend(client: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            probe.requests[probe.stage] += probe.active
            return await async_send(client, request, *args, **kwargs)

        self._replace(PrefectHttpxSyncClient, "send", send)
        self._replace(PrefectHttpxAsyncClient, "send", asend)

    def install(self) -> None:
        import inspect

        import tasks.orchestration.caching
        import tasks.orchestration.pipeline
        from prefect.results import ResultStore
        from tracking import tracker

        for name, fn in vars(tracker).items():
            if (name.startswith("_") or name in TRACKER_SKIP or not inspect.isfunction(fn)
                    or fn.__module__ != tracker.__name__):
                continue
            category = MLFLOW_FILES if name in TRACKER_FILES else PREFECT_ARTIFACTS if name in TRACKER_PREFECT else MLFLOW
            self._timed(tracker, name, category, f"tracker.{name}")
        self._timed(tracker.Progress, "__init__", PREFECT_ARTIFACTS, "tracker.Progress")
        self._timed(tracker.Progress, "update", PREFECT_ARTIFACTS, "tracker.Progress.update")
        for name in ("_persist_result_record", "_read", "exists"):
            self._timed(ResultStore, name, RESULTS, f"ResultStore.{name}")
        # stage_key: the flow's work folders (tasks.orchestration.pipeline) and the tasks' cache policy (tasks.orchestration.caching).
        self._timed(tasks.orchestration.caching, "stage_key", KEYS, "stage_key")
        self._timed(tasks.orchestration.pipeline, "stage_key", KEYS, "stage_key")
        self._timed(tasks.orchestration.pipeline, "link_tree", WORK_DIRS, "link_tree")
        self._timed(tasks.orchestration.pipeline.Pipeline, "_prepare", WORK_DIRS, "Pipeline._prepare")
        for name in ("run", "map", "search"):
            self._stage(name)
        self._count_requests()

    def uninstall(self) -> None:
        while self._undo:
            owner, name, original = self._undo.pop()
            setattr(owner, name, original)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        self.reset()
        self.active = True
        try:
            yield
        finally:
            self.active = False


def _mean(runs: list[dict[Any, float]], key: Any) -> float:
    return sum(r.get(key, 0.0) for r in runs) / max(1, len(runs))


def report(title: str, stages: tuple[str, ...], plain: list[float], flow: list[float],
           plain_stages: list[dict[str, float]], probes: list[dict[str, Any]],
           same_work: list[str], cpu: dict[str, list[float]], load: dict[str, list[float]]) -> None:
    print(title)
    print(f"plain functions : min {min(plain):8.2f} s  median {statistics.median(plain):8.2f} s")
    print(f"Prefect + MLflow: min {min(flow):8.2f} s  median {statistics.median(flow):8.2f} s")
    ratio_min, ratio_median = min(flow) / min(plain), statistics.median(flow) / statistics.median(plain)
    print(f"flow / plain    : min {ratio_min:.3f}x  median {ratio_median:.3f}x (overhead {min(flow) - min(plain):+.2f} s); "
          f"goal <= {GOAL}: {'met' if ratio_min <= GOAL else 'NOT met'}")
    # CPU time of this process (every thread; not the Prefect server's): steadier than wall time
    # on a busy machine, but blind to waiting on the servers.
    print(f"CPU seconds     : plain median {statistics.median(cpu['plain']):.1f}, flow median "
          f"{statistics.median(cpu['flow']):.1f} ({statistics.median(cpu['flow']) / statistics.median(cpu['plain']):.3f}x)")
    print(f"1-min load avg  : plain runs up to {max(load['plain']):.1f}, flow runs up to {max(load['flow']):.1f} "
          f"(on {os.cpu_count()} cores; far above that, the wall times are not comparable)")
    for line in same_work:
        print(line)

    # Per stage, mean over repeats (means add up; medians would not).
    flow_stage = [p["stage_seconds"] for p in probes]
    cat = [p["seconds"] for p in probes]
    names = list(stages) + [s for s in {k for r in flow_stage for k in r} if s not in stages] + [OUTSIDE]
    print(f"\nwhere the flow's extra time goes (seconds, mean per run over {len(plain)} run(s)); inside the flow:\n"
          f"  {MLFLOW}: runs, params, metrics, tags (tracker.py)   {MLFLOW_FILES}: artifact uploads and plots (tracker.py)\n"
          f"  {PREFECT_ARTIFACTS}: Prefect tables, progress, markdown (tracker.py)   {RESULTS}: Prefect's result store\n"
          f"  {KEYS}: stage cache keys (hashing inputs, files, code)   {WORK_DIRS}: clearing and linking work folders\n"
          f"  rest: extra minus those = task/flow runs, state transitions, server round trips, log/event threads, "
          f"noise\n  API reqs: Prefect API requests sent while the stage ran")
    head = f"{'stage':<17}{'plain':>9}{'flow':>9}{'extra':>9} |" + "".join(f"{c:>13}" for c in CATEGORIES)
    print(head + f"{'rest':>9} |{'API reqs':>9}")
    totals: dict[str, float] = defaultdict(float)
    for stage in names:
        if stage == OUTSIDE:
            a = statistics.fmean(plain) - sum(_mean(plain_stages, s) for s in names[:-1])
            b = statistics.fmean(flow) - sum(_mean(flow_stage, s) for s in names[:-1])
        else:
            a, b = _mean(plain_stages, stage), _mean(flow_stage, stage)
        parts = [_mean(cat, (stage, c)) for c in CATEGORIES]
        reqs = _mean([p["requests"] for p in probes], stage)
        row = {"plain": a, "flow": b, "extra": b - a, **dict(zip(CATEGORIES, parts)),
               "rest": b - a - sum(parts), "reqs": reqs}
        for k, v in row.items():
            totals[k] += v
        print(_row(stage, row))
    print("-" * len(head) + "-" * 20)
    print(_row("total", totals))

    calls: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for p in probes:
        for name, (n, s) in p["calls"].items():
            calls[name][0] += n / len(probes)
            calls[name][1] += s / len(probes)
    print("\ntimed calls inside the flow (per run): function, calls, seconds, ms per call")
    for name, (n, s) in sorted(calls.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:<34}{n:>8.0f}{s:>10.2f}{1000 * s / max(n, 1):>10.1f}")


def _row(stage: str, row: dict[str, float]) -> str:
    return (f"{stage:<17}{row['plain']:>9.2f}{row['flow']:>9.2f}{row['extra']:>+9.2f} |"
            + "".join(f"{row[c]:>13.2f}" for c in CATEGORIES) + f"{row['rest']:>+9.2f} |{row['reqs']:>9.0f}")


def lcnet_sides(args: argparse.Namespace, sets: dict[str, Any], home: Path) -> dict[str, Any]:
    from flows.lcnet import lcnet
    from params.loader import load_params, merge_overrides
    from params.models import LcnetParams, runtime_of
    from params.registry import LCNET
    from tasks.lcnet.evaluate import evaluate_classifier
    from tasks.lcnet.export import export_stage
    from tasks.lcnet.predict import predict_stage
    from tasks.lcnet.data import classification_sources
    from tasks.lcnet.split import split_dataset
    from tasks.lcnet.train import train_classifier

    base = {"train": {"epochs": args.epochs}, "model": {"scale": args.scale}, "output_root": str(home / "out")}
    overrides = merge_overrides(base, sets)
    p = load_params(LcnetParams, args.params_file or LCNET.params_file, overrides)
    runtime = runtime_of(p)

    def plain(clock: Callable[[str], Any]) -> dict[str, Any]:
        run = Path(tempfile.mkdtemp(dir=home))
        dirs = {n: run / n for n in ("split", "train", "evaluate", "export", "predict")}
        for d in dirs.values():
            d.mkdir()
        with clock("data"):
            sources = classification_sources(p.data)
        with clock("split"):
            split = split_dataset(sources.dataset_dir, p.data, p.seed, dirs["split"])
        with clock("train"):
            trained = train_classifier(split, p.model, p.train, p.seed, runtime, dirs["train"])
        with clock("evaluate"):
            evaluated = evaluate_classifier(split, trained, p.model, p.train.topk, p.seed, runtime, dirs["evaluate"])
        with clock("export"):
            exported = export_stage(split, trained, p.model, p.seed, runtime, dirs["export"])
        with clock("predict"):
            predict_stage(split, exported, p.predict, runtime, dirs["predict"])
        return {"test_top1": evaluated.test_top1}

    def flow() -> dict[str, Any]:
        return lcnet(params_file=args.params_file or LCNET.params_file, overrides=overrides, refresh_from="all")

    import torch

    def warmup() -> None:  # the flow too: the MLflow store's schema and first-call imports are one-time costs
        plain(lambda _: contextlib.nullcontext())
        flow()

    return {"plain": plain, "flow": flow, "warmup": warmup,
            "stages": LCNET.stages, "compare": ("test_top1",),
            "title": f"lcnet pipeline, PP-LCNet x{p.model.scale}, {p.train.epochs} epochs, torch threads "
                     f"{torch.get_num_threads()}, input {p.model.input_size}px"}


def spnas_sides(args: argparse.Namespace, sets: dict[str, Any], home: Path) -> dict[str, Any]:
    from benchmarks.plain_spnas import run_spnas_plain
    from flows.sp_nas import spnas
    from params.loader import load_params, merge_overrides
    from params.models import SpnasParams
    from params.registry import SPNAS
    from tasks.spnas.data import detection_sources

    params_file = args.params_file or SPNAS.params_file
    overrides = merge_overrides({"output_root": str(home / "out")}, sets)
    p = load_params(SpnasParams, params_file, overrides)  # bad --set values fail here, before any work
    tiny = merge_overrides(overrides, SPNAS_WARMUP)
    p_tiny = load_params(SpnasParams, params_file, tiny)

    def plain(clock: Callable[[str], Any]) -> dict[str, Any]:
        return run_spnas_plain(p, Path(tempfile.mkdtemp(dir=home, prefix="plain-")), clock)

    def flow() -> dict[str, Any]:
        return spnas(params_file=params_file, overrides=overrides, refresh_from="all")

    def warmup() -> None:
        from benchmarks.plain_spnas import StageClock

        detection_sources(p.data, p.model.image_size, p.seed)  # the measured run's embedded data, built once
        run_spnas_plain(p_tiny, Path(tempfile.mkdtemp(dir=home, prefix="warmup-")), StageClock())
        spnas(params_file=params_file, overrides=tiny, refresh_from="all")

    import torch

    budget = (f"serial {p.serial.max_sample} x {p.serial.candidate_steps} steps, parallel {p.parallel.max_sample} "
              f"x {p.parallel.candidate_steps} steps, fine_tune {p.fine_tune.epochs} / fully_train "
              f"{p.fully_train.epochs} epochs on {p.data.num_train_images} images")
    return {"plain": plain, "flow": flow, "warmup": warmup, "stages": SPNAS.stages,
            "compare": ("final_code", "final_neck_code", "final_mAP", "baseline_mAP", "serial_candidates",
                        "parallel_candidates"),
            "title": f"spnas pipeline ({params_file}{' + --set ' + ' '.join(args.set) if args.set else ''}): {budget}; "
                     f"torch threads {torch.get_num_threads()}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", choices=("spnas", "lcnet"), default="spnas")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved A/B pairs (default: spnas 1, lcnet 2)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one parameter, as `spnas run --set` (e.g. serial.max_sample=2); repeatable")
    ap.add_argument("--params-file", default=None, help="default: params/<pipeline>.yaml")
    ap.add_argument("--no-warmup", action="store_true", help="skip the warm-up of both sides")
    ap.add_argument("--plain-thread", choices=("worker", "main"), default="worker",
                    help="where the plain side runs: a worker thread, as Prefect runs task functions (default), "
                         "or the main thread (torch's OpenMP runs differently there: see the calibration line)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary state folder (outputs, MLflow store)")
    ap.add_argument("--epochs", type=int, default=2, help="lcnet only")
    ap.add_argument("--scale", type=float, default=0.5, help="lcnet only")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.pipeline == "spnas" else 2)

    home = Path(tempfile.mkdtemp(prefix="spnas-bench-"))
    os.environ.setdefault("SPNAS_HOME", str(home))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(home / "results")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if args.pipeline == "spnas" else "WARNING")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

    from benchmarks.plain_spnas import StageClock
    from params.loader import parse_override

    sets = dict(parse_override(s) for s in args.set)
    sides = (spnas_sides if args.pipeline == "spnas" else lcnet_sides)(args, sets, home)
    run_plain = sides["plain"] if args.plain_thread == "main" else functools.partial(_in_worker, sides["plain"])
    calibration = _thread_calibration()

    harness: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.testing.utilities import prefect_test_harness

        harness = prefect_test_harness(server_startup_timeout=120)
    probe = Probe()
    times: dict[str, list[float]] = {"plain": [], "flow": []}
    cpu: dict[str, list[float]] = {"plain": [], "flow": []}
    load: dict[str, list[float]] = {"plain": [], "flow": []}
    plain_stages: list[dict[str, float]] = []
    probes: list[dict[str, Any]] = []
    summaries: dict[str, list[dict[str, Any]]] = {"plain": [], "flow": []}
    with harness:
        probe.install()
        try:
            if not args.no_warmup:
                t0 = time.perf_counter()
                sides["warmup"]()
                print(f"warm-up done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            for _ in range(repeats):
                clock = StageClock()
                with _measured("plain", times, cpu, load):
                    summaries["plain"].append(run_plain(clock))
                plain_stages.append(dict(clock.seconds))
                with probe.recording(), _measured("flow", times, cpu, load):
                    summaries["flow"].append(sides["flow"]())
                probes.append({"stage_seconds": dict(probe.stage_seconds), "seconds": dict(probe.seconds),
                               "calls": {k: tuple(v) for k, v in probe.calls.items()},
                               "requests": dict(probe.requests)})
                print(f"repeat {len(probes)}: plain {times['plain'][-1]:.1f} s, flow {times['flow'][-1]:.1f} s",
                      file=sys.stderr)
        finally:
            probe.uninstall()
            if not args.keep:  # a full-size run leaves several GB of weights, checkpoints and artifacts
                shutil.rmtree(home, ignore_errors=True)
    same_work = [f"same work? {key}: plain {summaries['plain'][-1].get(key)!s} / flow {summaries['flow'][-1].get(key)!s}"
                 for key in sides["compare"]]
    print(f"plain side in the {args.plain_thread} thread; {calibration}")
    report(f"{sides['title']}; {repeats} interleaved repeat(s); MLflow {os.environ['MLFLOW_TRACKING_URI']}; "
           f"Prefect {os.environ.get('PREFECT_API_URL', 'test harness')}",
           tuple(sides["stages"]), times["plain"], times["flow"], plain_stages, probes, same_work, cpu, load)


def _in_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """Call fn in a fresh worker thread, as Prefect's ThreadPoolTaskRunner calls a task's function."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args).result()


def _thread_calibration() -> str:
    """The same torch convolutions in the main thread and in a worker thread: measured here, the
    main thread's OpenMP team burnt ~4x the CPU for the same convolutions when the other core
    was busy, so where the plain side runs matters as much as the orchestration."""
    import torch

    def convs() -> float:
        torch.set_num_threads(os.cpu_count() or 1)
        x, w = torch.randn(1, 64, 96, 96), torch.randn(64, 64, 3, 3)
        t0 = time.perf_counter()
        for _ in range(100):
            torch.nn.functional.conv2d(x, w, padding=1)
        return time.perf_counter() - t0

    main, worker = convs(), _in_worker(convs)
    return f"calibration, 100 convolutions: main thread {main:.2f} s, worker thread {worker:.2f} s"


@contextlib.contextmanager
def _measured(side: str, times: dict[str, list[float]], cpu: dict[str, list[float]],
              load: dict[str, list[float]]) -> Iterator[None]:
    """Wall and CPU seconds of one run, and the machine's load average before and after it."""
    load[side].append(os.getloadavg()[0])
    t0, c0 = time.perf_counter(), time.process_time()
    yield
    times[side].append(time.perf_counter() - t0)
    cpu[side].append(time.process_time() - c0)
    load[side].append(os.getloadavg()[0])


if __name__ == "__main__":
    main()
