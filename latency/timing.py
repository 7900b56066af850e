"""Wall-clock timing on a shared machine: the minimum of N runs after warm-up, interleaved
A, B, A, B, ... runs of several functions, and the load average to print beside them."""
from __future__ import annotations

import time
from collections.abc import Callable


def min_latency_ms(fn: Callable[[], object], runs: int = 30, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1000 * best


def load_average() -> str:
    """The 1/5/15-minute load averages, for benchmark headers (a busy machine skews timings)."""
    import os

    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def interleaved_times(fns: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, list[float]]:
    """Milliseconds per call of each function, timed in turn A, B, A, B, ... after `warmup`
    untimed rounds (so load on a shared machine hits every side alike)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times
