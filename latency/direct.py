"""Measured latency of whole candidate networks, for a search's latency limit (`max_latency_ms`).

`NetworkLatency` times the network a proposal describes end to end with ONNX Runtime, through
the same path as the latency tables (`latency.measure.measure_network_ms`: TorchScript-based
export, an ORT session pinned to `threads` intra-op threads, torch pinned to one thread while
exporting, fastest call per round, median over rounds, minimum over passes), at batch 1, and
remembers the figure per architecture key: a search and its random control never time the
same network twice, and the figure a proposal was admitted on is the one its table row shows.

Cost and repeatability, measured on this 2-core shared machine (load average 1.4-1.8, one ORT
thread, torch on one thread; export + session + timing of one network; benchmarks/latency_gate.py):

* SP-NAS detector part (ResNet-18-like serial body + FPN, 96 px, ~10-12 ms a call, `HEAVY_TIMING`):
  0.8-0.9 s per proposal, of which the TorchScript export is ~0.6 s; the first one of a process
  ~1.8 s (first export and ORT session);
* prune-ea pruned CIFAR ResNet-20 (32 px, 0.4-1.0 ms, `GATE_TIMING`): 0.13-0.18 s;
* SPOS "small" ShuffleNetV2 path (32 px, 0.26-0.34 ms, `GATE_TIMING`): 0.5-0.7 s (export of its
  many small ops);
* spread of the figure over 5 fresh measurements of one network (new export and session each):
  ±0.5-3.5 % of the median in three runs; one run had a single +81 % outlier on the SPOS path
  (a burst of load from another process lasting the whole ~0.1 s of its timing).

So a measured figure has noise: a network within a few percent of the limit can fit at one
measurement and not at the next. The limit is applied once, to the figure measured when the
architecture was first proposed; that figure is remembered (and stored with the candidate), so
the decision never flips within a run (nor on a resume: saved refusals and, in SP-NAS, saved
figures are reused, not re-measured). Leave a margin of a few percent if the limit is meant
as a hard deployment budget, and re-measure the winner where it will run.

`GATE_TIMING` is lighter than the tables' default (warmup 10, 5 rounds x 10 calls, 3 passes,
about 3x the calls): a gate times one network at a time, so passes spread in time buy little,
and on these networks the lighter statistic moved the figure by less than its own spread.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import InputError
from latency.measure import TimingConfig, measure_network_ms

__all__ = ["GATE_TIMING", "HEAVY_TIMING", "FeatureTuple", "NetworkLatency", "arch_key", "network_latency"]

# warmup 3 + 3 rounds x 8 calls, 2 passes: ~60 calls (module docstring: why lighter than tables).
GATE_TIMING = TimingConfig(warmup=3, rounds=3, number=8, passes=2)
# For networks of ~10 ms a call (the SP-NAS detector part): 14 calls, so timing (~0.15 s) stays
# below the export (~0.6 s) and a proposal under 1 s; its spread came out ±2-3.5 %, like GATE_TIMING's.
HEAVY_TIMING = TimingConfig(warmup=2, rounds=3, number=4, passes=1)

Builder = Callable[[Any], tuple[nn.Module, torch.Tensor]]


def arch_key(arch: Any) -> Hashable:
    """A hashable key of an architecture: strings as they are, lists (neck codes, paths) as tuples."""
    if isinstance(arch, str):
        return arch
    if isinstance(arch, (list, tuple)):
        return tuple(arch_key(a) for a in arch)
    if isinstance(arch, Hashable):
        return arch
    raise InputError("arch", f"must be a string, a list or a hashable value; got {type(arch).__name__}.")


class NetworkLatency:
    """Memoized end-to-end latency (ms) of the network `build(arch)` returns as (module, example).

    `build` must return a module in any mode and one example input of batch 1; the module must
    take that one tensor and return a tensor or a tuple of tensors (ONNX export). `measured`
    holds every figure so far (key -> ms); `timed` counts real measurements (not memo hits).
    """

    def __init__(self, build: Builder, threads: int = 1, timing: TimingConfig = GATE_TIMING,
                 measure: Callable[[nn.Module, torch.Tensor, int, TimingConfig], float] | None = None,
                 source: str | None = None) -> None:
        if not callable(build):
            raise InputError("build", "must be a function architecture -> (module, example input)")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InputError("threads", f"must be a positive integer; got {threads!r}.")
        self.build = build
        self.threads = threads
        self.timing = timing
        # Injectable for tests (a fake clock); the default is ONNX Runtime on `threads` threads.
        self._measure = measure or (lambda m, x, t, cfg: measure_network_ms(m, x, "onnxruntime", t, cfg))
        # What the figures are, for logs and summaries.
        self.source = source or f"measured here (ONNX Runtime, {threads} thread{'s' * (threads > 1)}, batch 1)"
        self.measured: dict[Hashable, float] = {}
        self.timed = 0

    def __call__(self, arch: Any) -> float:
        key = arch_key(arch)
        if key not in self.measured:
            module, example = self.build(arch)
            if not isinstance(example, torch.Tensor) or example.ndim < 1 or example.shape[0] != 1:
                raise InputError("example", "must be one input tensor of batch 1.")
            ms = float(self._measure(module.eval(), example, self.threads, self.timing))
            if not math.isfinite(ms) or ms <= 0:
                raise RuntimeError(f"latency measurement of {key!r} gave {ms!r} ms")
            self.measured[key] = ms
            self.timed += 1
        return self.measured[key]

    def remember(self, arch: Any, ms: float) -> None:
        """Take a figure measured earlier (a resumed search's saved candidates) instead of timing
        `arch` again: the figure a candidate was admitted on stays its figure."""
        self.measured.setdefault(arch_key(arch), float(ms))

    def known(self, arch: Any) -> float | None:
        """The remembered figure of `arch`, or None if it was never measured (never times)."""
        return self.measured.get(arch_key(arch))

    def fits(self, limit_ms: float) -> Callable[[Any], bool]:
        """`fits(arch)`: whether the measured latency is at most `limit_ms` (measured once per arch)."""
        if isinstance(limit_ms, bool) or not isinstance(limit_ms, (int, float)) or not limit_ms > 0 \
                or not math.isfinite(limit_ms):
            raise InputError("max_latency_ms", f"must be a positive number of milliseconds; got {limit_ms!r}.")
        return lambda arch: self(arch) <= limit_ms


def network_latency(build: Builder, predictor_file: str | None = None, threads: int = 1,
                    timing: TimingConfig = GATE_TIMING, space: Any = None,
                    field_name: str = "latency_predictor") -> NetworkLatency:
    """A search's latency source: `NetworkLatency` measuring here, or — given the predictor file a
    user fitted on their device (`latency.predictor.fit_space_predictor`) — one predicting that
    device's latency from each network's traced ops (`latency.trace`; no timing). With a predictor,
    `space` (a `latency.predictor.LatencySpace`) is required: random networks of it must all be
    covered by the predictor's table (`check_covers`), so a predictor for another space, input size
    or class count is one InputError naming `field_name` here, not a failure mid-search."""
    if predictor_file is None:
        return NetworkLatency(build, threads, timing)
    from latency.predictor import LatencyPredictor, check_covers
    from latency.trace import ops_of_network

    try:
        predictor = LatencyPredictor.load(Path(predictor_file))
    except InputError as exc:
        raise InputError(field_name, exc.message) from None
    if space is None:
        raise InputError("space", "a predicted latency needs the space it must cover.")
    check_covers(predictor, space, field_name=field_name)

    def predict(module: nn.Module, example: torch.Tensor, threads: int, timing: TimingConfig) -> float:
        return predictor.predict(ops_of_network(module, example).ops)

    return NetworkLatency(build, threads, timing, measure=predict,
                          source=f"predicted for {predictor.table.device} by {predictor_file}")


class FeatureTuple(nn.Module):
    """A module returning a dict of tensors (a detector backbone's feature maps) as a tuple, so
    ONNX export sees plain outputs."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(x)
        if isinstance(out, torch.Tensor):
            return (out,)
        values: Iterator[torch.Tensor] = iter(out.values()) if isinstance(out, Mapping) else iter(out)
        return tuple(values)

