"""Wall-clock latency of a callable: warm-up, then the minimum of N runs (the least noisy
figure on a shared machine; DESIGN.md §6)."""
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
