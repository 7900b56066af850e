"""Path samplers for single-path supernet training (SPOS, Guo et al. 2019).

A path picks one choice per block. Its cost (MACs) is `fixed + sum(per_block[i][path[i]])`,
from a lookup table (`latency.macs_table.MacsTable.per_block` / `.fixed_macs`).

* `uniform(rng)`: every block uniform, as in the paper's supernet training.
* `FlopsBinSampler`: only paths whose cost lies in [low, high], spread evenly over cost:
  split [low, high] into `bins` equal bins, pick a bin uniformly, then a path uniformly among
  the paths whose cost lies in that bin. Plain rejection from uniform paths would almost never
  reach the cheap and expensive ends (path costs pile up in the middle, like a sum of dice).

How a bin is sampled. Costs are quantized: each op's cost above its block's cheapest is
rounded to a multiple of `resolution`, so a path's quantized total is off from its exact total
by at most E = n_blocks * resolution / 2. Dynamic programming over the blocks counts the paths
per quantized total (counts[i][s] = paths through blocks 0..i-1 with quantized total s). For
a bin, the sampler takes every quantized total that could belong to a path in the bin (the
bin widened by E on each side), draws one of them in proportion to its path count, then walks
back block by block choosing each block's op in proportion to the number of prefix paths that
complete it. That is an exactly uniform draw among the paths of the widened set; the path's
exact cost is then checked and, if quantization put it outside the bin, the draw is repeated.
Accepted paths are therefore exactly uniform over the paths in the bin (rejection from a
uniform superset). The default resolution makes the widened band a small fraction of a bin,
so few draws are rejected.

Empty bins are refused at construction: a bin whose widened set holds no path is certainly
empty; one whose *narrowed* set (bin shrunk by E) holds a path certainly is not; in between,
the widened set is enumerated (up to `enumerate_limit` paths) or, if larger, probed with
rejection draws. An empty bin raises `InputError` naming the field, the empty bins and the
feasible [min, max].

Randomness comes only from the `random.Random` the caller passes, so the caller can checkpoint
its state. Pure Python/numpy: no torch.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from core.errors import InputError

__all__ = ["FlopsBinSampler", "path_cost", "uniform"]

_MAX_UNITS = 2_000_000  # DP width cap (quantized totals); keeps tables a few MB
_PROBE_DRAWS = 20_000  # rejection probes for an uncertain bin too large to enumerate


def uniform(rng: random.Random, n_blocks: int = 20, n_choices: int = 4) -> list[int]:
    """One path with every block's choice uniform and independent."""
    return [rng.randrange(n_choices) for _ in range(n_blocks)]


def path_cost(per_block: Sequence[Sequence[int]], fixed: int, choices: Sequence[int]) -> int:
    """Exact cost of a path: fixed + the chosen op of each block."""
    return fixed + sum(row[c] for row, c in zip(per_block, choices))


def _check_table(per_block: Any, fixed: Any) -> list[list[int]]:
    field = "per_block"
    if isinstance(per_block, (str, bytes)) or not isinstance(per_block, Sequence) or not per_block:
        raise InputError(field, "must be a non-empty list (one per block) of lists of op costs.")
    rows = []
    for i, row in enumerate(per_block):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or not row:
            raise InputError(field, f"block {i} must be a non-empty list of op costs; got {row!r}.")
        for v in row:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0:
                raise InputError(field, f"op costs must be non-negative integers; block {i} "
                                        f"has {v!r}.")
        rows.append([int(v) for v in row])
    if isinstance(fixed, (bool, np.bool_)) or not isinstance(fixed, (int, np.integer)) or fixed < 0:
        raise InputError("fixed", f"must be a non-negative integer cost; got {fixed!r}.")
    return rows


class FlopsBinSampler:
    """Paths with cost in [low, high], bin uniform, then uniform within the bin (see module doc).

    `per_block[i][c]`: cost of choice c at block i (non-negative ints); `fixed`: cost every
    path pays. `resolution` (cost units per DP step) defaults to bin width / 256. `field`
    names the user setting the range came from, for error messages.
    """

    def __init__(self, per_block: Sequence[Sequence[int]], fixed: int, low: float, high: float,
                 bins: int = 10, resolution: float | None = None, *,
                 field: str = "flops_range", enumerate_limit: int = 200_000) -> None:
        self.per_block = _check_table(per_block, fixed)
        self.fixed = int(fixed)
        self.field = field
        for name, v in (("low", low), ("high", high)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(v):
                raise InputError(field, f"{name} must be a finite number; got {v!r}.")
        if not low < high:
            raise InputError(field, f"must be [low, high] with low < high; got [{low}, {high}].")
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
            raise InputError(f"{field}.bins", f"must be a positive integer; got {bins!r}.")
        self.low, self.high, self.bins = float(low), float(high), int(bins)
        self.edges = [self.low + (self.high - self.low) * b / self.bins for b in range(self.bins + 1)]
        self.edges[-1] = self.high  # no float drift at the top edge

        n = len(self.per_block)
        self.base = self.fixed + sum(min(row) for row in self.per_block)  # cheapest path
        offsets = [[v - min(row) for v in row] for row in self.per_block]
        span = sum(max(row) for row in offsets)
        if resolution is None:
            resolution = max(1.0, (self.high - self.low) / self.bins / 256, span / _MAX_UNITS)
        if isinstance(resolution, bool) or not isinstance(resolution, (int, float)) \
                or not math.isfinite(resolution) or resolution <= 0:
            raise InputError("resolution", f"must be a positive cost step; got {resolution!r}.")
        if span / resolution > _MAX_UNITS:
            raise InputError("resolution", f"{resolution} makes the count table wider than "
                                           f"{_MAX_UNITS} steps; use at least {span / _MAX_UNITS:.3g}.")
        self.resolution = float(resolution)
        self._units = [[round(d / self.resolution) for d in row] for row in offsets]
        self._slack = n / 2  # |quantized - exact| <= n * resolution / 2, in DP steps

        # counts[i][s]: paths through blocks 0..i-1 whose quantized total is s (exact ints:
        # 4^20 paths fit int64; a wider space falls back to Python ints).
        n_paths = math.prod(len(row) for row in self.per_block)
        dtype: Any = np.int64 if n_paths < 2**62 else object
        width = sum(max(row) for row in self._units) + 1
        counts = [np.zeros(width, dtype=dtype)]
        counts[0][0] = 1
        for row in self._units:
            nxt = np.zeros(width, dtype=dtype)
            for u in row:
                nxt[u:] += counts[-1][: width - u]
            counts.append(nxt)
        self._counts = counts
        self._cum_total = np.concatenate(([0], np.cumsum(counts[-1])))  # prefix sums, last row

        self.feasible = (self.base, self.fixed + sum(max(row) for row in self.per_block))
        self._windows = [self._window(b) for b in range(self.bins)]
        self._exact: dict[int, list[list[int]]] = {}  # small uncertain bins, enumerated
        empty = [b for b in range(self.bins) if not self._bin_has_path(b, enumerate_limit)]
        if empty:
            spans = ", ".join(f"{b} [{self.edges[b]:.6g}, {self.edges[b + 1]:.6g}]" for b in empty)
            raise InputError(field, f"bins {spans} of {self.bins} over [{self.low:.6g}, "
                                    f"{self.high:.6g}] hold no path; feasible costs are "
                                    f"[{self.feasible[0]}, {self.feasible[1]}]: narrow the range "
                                    f"or use fewer bins.")

    # --- geometry ---------------------------------------------------------------------------

    def bin_of(self, cost: float) -> int | None:
        """Index of the bin holding `cost` ([edge_b, edge_b+1), the last bin closed), or None."""
        if not self.low <= cost <= self.high:
            return None
        b = int((cost - self.low) / (self.high - self.low) * self.bins)
        b = min(b, self.bins - 1)
        # Float rounding can put a cost that sits on an edge one bin off; settle it exactly.
        while b > 0 and cost < self.edges[b]:
            b -= 1
        while b < self.bins - 1 and cost >= self.edges[b + 1]:
            b += 1
        return b

    def cost(self, choices: Sequence[int]) -> int:
        return path_cost(self.per_block, self.fixed, choices)

    def _window(self, b: int, shrink: bool = False) -> tuple[int, int]:
        """Quantized totals (inclusive) that may hold (widen) or surely hold (shrink) bin b's paths."""
        lo = (self.edges[b] - self.base) / self.resolution
        hi = (self.edges[b + 1] - self.base) / self.resolution
        last = len(self._counts[-1]) - 1
        if shrink:
            s_lo, s_hi = math.ceil(lo + self._slack + 1e-9), math.floor(hi - self._slack - 1e-9)
        else:
            s_lo, s_hi = math.floor(lo - self._slack - 1), math.ceil(hi + self._slack + 1)
        return max(s_lo, 0), min(s_hi, last)

    def _paths_in_window(self, lo: int, hi: int) -> int:
        return 0 if hi < lo else int(self._cum_total[hi + 1] - self._cum_total[lo])

    def _bin_has_path(self, b: int, enumerate_limit: int) -> bool:
        lo, hi = self._windows[b]
        wide = self._paths_in_window(lo, hi)
        if wide == 0:
            return False
        if self._paths_in_window(*self._window(b, shrink=True)) > 0:
            return True
        if wide <= enumerate_limit:  # settle it exactly, and sample this bin from the list
            hits = [p for p in self._enumerate(lo, hi) if self.bin_of(self.cost(p)) == b]
            if hits:
                self._exact[b] = hits
            return bool(hits)
        probe = random.Random(b)  # fixed seed: construction stays deterministic
        return any(self._accepts(self._draw(probe, lo, hi), b) for _ in range(_PROBE_DRAWS))

    # --- sampling ---------------------------------------------------------------------------

    def _draw(self, rng: random.Random, lo: int, hi: int) -> list[int]:
        """A path uniform among those with quantized total in [lo, hi] (exact integer weights)."""
        r = rng.randrange(self._paths_in_window(lo, hi)) + int(self._cum_total[lo])
        s = int(np.searchsorted(self._cum_total, r, side="right")) - 1
        path = [0] * len(self._units)
        for i in range(len(self._units) - 1, -1, -1):
            prev = self._counts[i]
            weights = [int(prev[s - u]) if s - u >= 0 else 0 for u in self._units[i]]
            r = rng.randrange(sum(weights))
            for c, w in enumerate(weights):
                if r < w:
                    break
                r -= w
            path[i] = c
            s -= self._units[i][c]
        return path

    def _accepts(self, path: list[int], b: int) -> bool:
        return self.bin_of(self.cost(path)) == b

    def sample_in_bin(self, rng: random.Random, b: int, max_draws: int = 1_000_000) -> list[int]:
        """A path uniform among those whose exact cost lies in bin `b`."""
        if not 0 <= b < self.bins:
            raise IndexError(f"bin {b} out of range 0..{self.bins - 1}")
        if b in self._exact:
            return list(rng.choice(self._exact[b]))
        lo, hi = self._windows[b]
        for _ in range(max_draws):
            path = self._draw(rng, lo, hi)
            if self._accepts(path, b):
                return path
        raise RuntimeError(f"no path accepted for bin {b} in {max_draws} draws")

    def sample(self, rng: random.Random) -> list[int]:
        """Pick a bin uniformly, then a path uniformly within it."""
        return self.sample_in_bin(rng, rng.randrange(self.bins))

    def _enumerate(self, lo: int, hi: int) -> Iterator[list[int]]:
        """Every path with quantized total in [lo, hi], walking only DP states that complete."""
        n = len(self._units)

        def walk(i: int, s: int, suffix: list[int]) -> Iterator[list[int]]:
            if i == 0:
                if s == 0:
                    yield suffix
                return
            for c, u in enumerate(self._units[i - 1]):
                if s - u >= 0 and self._counts[i - 1][s - u]:
                    yield from walk(i - 1, s - u, [c] + suffix)

        for s in range(lo, hi + 1):
            if self._counts[n][s]:
                yield from walk(n, s, [])
