"""Build a latency table for this machine by timing every distinct op configuration.

Each op (a dict as described in `latency.table`) becomes a tiny torch module performing just
that op. Backends:

- `onnxruntime` (default): the module is exported to a one-op ONNX file with torch.onnx's
  TorchScript-based exporter (about 10 ms per op here against 0.7-5 s for the dynamo one,
  and the same single ONNX node; `deploy/onnx_export.py` notes on exporters) and run in an ORT
  session with `threads` intra-op threads (`deploy.onnx_export.make_session`).
- `torch`: the eager module under `torch.inference_mode` with `torch.set_num_threads(threads)`.

Statistic (`TimingConfig`): per pass, `warmup` untimed calls, then `rounds` rounds of `number`
calls; each round keeps its fastest call and the pass's figure is the median of those minima.
Many ops (or networks) are timed interleaved: every pass visits them all in a shuffled order,
and an op's figure is its minimum over `passes`. The fastest call discards the slow calls a
shared machine adds; the median across rounds discards a round that was slow throughout; the
minimum over passes spread in time discards a period of heavy load from other processes.
Per-call dispatch overhead (a few µs per ORT `run`) and ORT's layout reorders around a lone
conv stay in every entry: a real network pays them once, not per op, which
`latency.predictor` corrects for.

Threads: default 1. On a shared 2-core machine a 2-thread figure depends on whether the other
core happens to be free: timing 160 BlazeFace networks here, 83 % ran at 1.03x their 1-thread
latency (second core busy) and 17 % at 0.65-0.9x. benchmarks/latency_predictor.py put 99 % of
100 held-out predictions within ±10 % at 1 thread and 52 % at 2 threads (load average 3-6).
Pass `threads` explicitly where cores are reserved for the measurement.

Tables are cached under a folder the caller passes, one file per (space id, backend, threads,
machine fingerprint); the fingerprint hashes the host name, CPU model, core count and the
torch / onnxruntime versions, and is written beside the table as JSON. A second build with the
same key reads the file and times nothing (only ops the cached table lacks are timed).

BlazeFace: `space_ops` enumerates every op configuration the SANAS space can produce (from
the token rules, block by block, each block's ops read off its layers with the forward hooks
`nas_models.blazeface.ops_of_model` uses, not by building whole networks) and `ssd_core` is the
part of a torchvision SSD that both the table and end-to-end timing cover.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import random
import re
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import InputError
from latency.table import LatencyTable, key_of, op_type_of, parse_key

__all__ = [
    "BACKENDS",
    "TimingConfig",
    "build_table",
    "cached_table_path",
    "machine_fingerprint",
    "interleaved_ms",
    "measure_network_ms",
    "measure_networks_ms",
    "op_module",
    "robust_ms",
    "space_ops",
    "ssd_core",
    "time_op",
    "time_ops",
]

BACKENDS = ("onnxruntime", "torch")
_OPSET = 17  # the TorchScript-based exporter's well-trodden opset


@dataclass(frozen=True)
class TimingConfig:
    """How latency figures are taken (ms). Per pass: `warmup` untimed calls, then `rounds`
    rounds of `number` calls; the pass's figure is the median over rounds of each round's
    fastest call. With several things to time, each pass visits all of them in a shuffled
    order and the result is the minimum over `passes`: the passes are spread in time, so a
    burst of load from other processes hits one pass, not the figure."""

    warmup: int = 5
    rounds: int = 5
    number: int = 10
    passes: int = 2

    def __post_init__(self) -> None:
        for name, low in (("warmup", 0), ("rounds", 1), ("number", 1), ("passes", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"timing.{name}", f"must be an integer >= {low}; got {value!r}.")


def robust_ms(fn: Callable[[], object], timing: TimingConfig = TimingConfig()) -> float:
    """One pass over `fn`: median over rounds of the fastest of `number` calls, in ms."""
    for _ in range(timing.warmup):
        fn()
    minima = []
    for _ in range(timing.rounds):
        best = float("inf")
        for _ in range(timing.number):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        minima.append(best)
    return 1e3 * statistics.median(minima)


def interleaved_ms(fns: Mapping[str, Callable[[], object]], timing: TimingConfig = TimingConfig(),
                   seed: int = 0) -> dict[str, float]:
    """`robust_ms` of every function, `timing.passes` times in shuffled orders; the minimum
    over passes per function (TimingConfig's docstring)."""
    names = list(fns)
    best = dict.fromkeys(names, float("inf"))
    rng = random.Random(seed)
    for _ in range(timing.passes):
        rng.shuffle(names)
        for name in names:
            best[name] = min(best[name], robust_ms(fns[name], timing))
    return best


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise InputError("backend", f"must be one of {', '.join(BACKENDS)}; got {backend!r}.")
    return backend


def _check_threads(threads: Any) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError("threads", f"must be a positive integer; got {threads!r}.")
    return threads


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` while open, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- one op as a torch module -----------------------------------------------------------------

_ACT_MODULES: dict[str, Callable[[int], nn.Module]] = {
    "relu": lambda c: nn.ReLU(), "relu6": lambda c: nn.ReLU6(), "prelu": lambda c: nn.PReLU(c),
    "leaky_relu": lambda c: nn.LeakyReLU(0.1), "sigmoid": lambda c: nn.Sigmoid(),
    "tanh": lambda c: nn.Tanh(), "elu": lambda c: nn.ELU(), "hardswish": lambda c: nn.Hardswish(),
    "hardsigmoid": lambda c: nn.Hardsigmoid(), "swish": lambda c: nn.SiLU(),
    "gelu": lambda c: nn.GELU(),
}


class _AddConst(nn.Module):
    """x + y with y a stored tensor of x's shape: one element-wise add reading two tensors,
    exportable with a single graph input."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("other", torch.randn(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.other


class _Softmax(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=self.axis)


class _Concat(nn.Module):
    """x split into `inputs` equal channel groups and concatenated back: one Concat reading them
    all, from a single graph input (the split is a free view in torch; in ONNX its Split is one
    more node, which the predictor's per-op count absorbs)."""

    def __init__(self, inputs: int) -> None:
        super().__init__()
        self.inputs = inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(torch.chunk(x, self.inputs, dim=1), 1)


class _ChannelSlice(nn.Module):
    def __init__(self, count: int, stride: int) -> None:
        super().__init__()
        self.count, self.stride = count, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0:self.count * self.stride:self.stride]


class _Resize(nn.Module):
    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, scale_factor=float(self.scale), mode="nearest")


class _Gather(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        # Spread, repeating picks: what a pruned shortcut's channel selection looks like.
        self.register_buffer("index", torch.arange(c_out) * c_in // max(c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)


def _shape_op(kind: str, spec: Mapping[str, Any]) -> nn.Module:
    """The module of a concat / slice / resize / gather op (table types of our own)."""
    c, key = spec["c_in"], key_of(spec)
    if kind == "concat":
        if c % spec["inputs"]:
            raise InputError("op", f"concat inputs {spec['inputs']} must divide c_in {c}; got {key}.")
        return _Concat(spec["inputs"])
    if kind == "slice":
        if (spec["c_out"] - 1) * spec["stride"] >= c:
            raise InputError("op", f"slice of {spec['c_out']} channels at stride {spec['stride']} "
                                   f"does not fit c_in {c}; got {key}.")
        return _ChannelSlice(spec["c_out"], spec["stride"])
    if kind == "resize":
        return _Resize(spec["scale"])
    return _Gather(c, spec["c_out"])


def op_module(op: Mapping[str, Any] | str) -> tuple[nn.Module, torch.Tensor]:
    """A module in eval mode performing just `op` (a dict or table key), and a random input."""
    spec = parse_key(op if isinstance(op, str) else key_of(op))
    kind = op_type_of(spec)
    if kind == "fc":
        linear = nn.Linear(spec["c_in"], spec["c_out"], bias=bool(spec["flag_bias"]))
        return linear.eval(), torch.randn(spec["n"], spec["c_in"])
    shape = (spec["n"], spec["c_in"], spec["h"], spec["w"])
    c = spec["c_in"]
    module: nn.Module
    if kind in ("concat", "slice", "resize", "gather"):
        module = _shape_op(kind, spec)
    elif kind == "conv":
        g = spec["groups"]
        if c % g or spec["c_out"] % g:
            raise InputError("op", f"conv groups {g} must divide c_in {c} and c_out "
                                   f"{spec['c_out']}; got {key_of(spec)}.")
        extent = spec["dilation"] * (spec["k"] - 1) + 1
        if min(spec["h"], spec["w"]) + 2 * spec["pad"] < extent:
            raise InputError("op", f"conv kernel does not fit its padded input: {key_of(spec)}.")
        conv = nn.Conv2d(c, spec["c_out"], spec["k"], spec["stride"], spec["pad"],
                         spec["dilation"], g, bias=bool(spec["flag_bias"]))
        module = nn.Sequential(conv, nn.ReLU()) if spec["flag_relu"] else conv
    elif kind == "activation":
        module = _ACT_MODULES[spec["act"]](c)
    elif kind == "batch_norm":
        bn = nn.BatchNorm2d(c)
        # Non-trivial statistics, as a trained network has (the kernel does not care, but an
        # exporter could simplify an identity BN away).
        with torch.no_grad():
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_()
            bn.bias.normal_()
        act = spec["active_type"]
        module = bn if act == "None" else nn.Sequential(bn, _ACT_MODULES[act](c))
    elif kind == "eltwise":
        module = _AddConst(shape)
    elif kind == "pooling":
        if spec["flag_global_pooling"]:
            module = nn.AdaptiveMaxPool2d(1) if spec["pool_type"] == 1 else nn.AdaptiveAvgPool2d(1)
        elif spec["pool_type"] == 1:
            module = nn.MaxPool2d(spec["k"], spec["stride"], spec["pad"], ceil_mode=bool(spec["ceil_mode"]))
        else:
            module = nn.AvgPool2d(spec["k"], spec["stride"], spec["pad"], ceil_mode=bool(spec["ceil_mode"]),
                                  count_include_pad=spec["pool_type"] == 2)
    else:  # softmax
        if not -4 <= spec["axis"] < 4:
            raise InputError("op", f"softmax axis must be in [-4, 3] for an (n, c, h, w) input; "
                                   f"got {spec['axis']}.")
        module = _Softmax(spec["axis"])
    return module.eval(), torch.randn(shape)


# --- timing one op / one network -------------------------------------------------------------

def _output_names(model: nn.Module, example: torch.Tensor) -> list[str]:
    with torch.no_grad():
        out = model(example)
    count = 1 if isinstance(out, torch.Tensor) else len(out)
    return ["output"] if count == 1 else [f"output{i}" for i in range(count)]


def _runner(model: nn.Module, example: torch.Tensor, backend: str, threads: int,
            folder: Path) -> Callable[[], object]:
    """A no-argument callable running `model` once on `example` on `backend`."""
    model.eval()
    if backend == "torch":
        def run() -> object:
            with torch.inference_mode():
                return model(example)
        return run
    from deploy.onnx_export import export_onnx, make_session  # ORT only when asked for

    with warnings.catch_warnings():
        # The TorchScript-based exporter warns that it is deprecated (module docstring: it is
        # the fast one for one-op graphs); export_onnx filters its notices, this any others.
        warnings.simplefilter("ignore", DeprecationWarning)
        # ONNX Slice with a step (a channel split) cannot be constant-folded; nothing is lost.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        path = export_onnx(model, example, folder / "model.onnx", opset=_OPSET, dynamic_batch=False,
                           input_name="input", output_name=_output_names(model, example), dynamo=False)
    session = make_session(path, threads=threads)
    feed = {"input": example.numpy()}
    return lambda: session.run(None, feed)


def _time_modules(items: Mapping[str, tuple[nn.Module, torch.Tensor]], backend: str, threads: int,
                  timing: TimingConfig, chunk: int, progress: bool, label: str) -> dict[str, float]:
    """Interleaved timing of many modules, `chunk` of them alive (exported, in a session) at
    a time so memory and idle ORT thread pools stay bounded. Each item is fetched once, when its
    chunk is exported, so `items` may build its modules lazily (latency.predictor does for
    large networks); training flags are restored."""
    names = list(items)
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="spnas-lat-") as tmp:
        for start in _progress(list(range(0, len(names), chunk)), label, progress, len(names), chunk):
            group = names[start:start + chunk]
            runners = {}
            modes: list[tuple[nn.Module, bool]] = []
            # Exporting traces the model once; one torch thread is enough for that and keeps
            # a busy second core from stalling every traced op (OpenMP barrier waits).
            try:
                with torch_threads(1):
                    for i, name in enumerate(group):
                        folder = Path(tmp) / str(i)
                        folder.mkdir(exist_ok=True)
                        model, example = items[name]
                        if not isinstance(example, torch.Tensor):
                            raise InputError("example", f"of {name} must be a torch.Tensor; got "
                                                        f"{type(example).__name__}.")
                        modes += [(m, m.training) for m in model.modules()]
                        runners[name] = _runner(model, example, backend, threads, folder)
                with torch_threads(threads):
                    result.update(interleaved_ms(runners, timing, seed=start))
            finally:  # after timing: the torch backend runs the modules themselves, in eval mode
                for m, flag in modes:
                    m.training = flag
            del runners, modes  # frees the chunk's sessions before the next one is built
    return result


def time_ops(ops: Iterable[Mapping[str, Any] | str], backend: str = "onnxruntime", threads: int = 1,
             timing: TimingConfig = TimingConfig(), chunk: int = 48, progress: bool = False
             ) -> dict[str, float]:
    """Latency (ms) of each distinct op, keyed by its table key, on `backend` with `threads`."""
    _check_backend(backend)
    _check_threads(threads)
    keys = list(dict.fromkeys(op if isinstance(op, str) else key_of(op) for op in ops))
    items = {key: op_module(key) for key in keys}
    return _time_modules(items, backend, threads, timing, chunk, progress,
                         f"timing {len(keys)} ops ({backend}, {threads} threads)")


def time_op(op: Mapping[str, Any] | str, backend: str = "onnxruntime", threads: int = 1,
            timing: TimingConfig = TimingConfig()) -> float:
    """Latency of one op (dict or key) on `backend` with `threads` threads, in ms."""
    return next(iter(time_ops([op], backend, threads, timing).values()))


def measure_networks_ms(models: Mapping[str, tuple[nn.Module, torch.Tensor]],
                        backend: str = "onnxruntime", threads: int = 1,
                        timing: TimingConfig = TimingConfig(warmup=10, passes=3), chunk: int = 200,
                        progress: bool = False) -> dict[str, float]:
    """End-to-end latency (ms) of each `name: (model, example)`, interleaved (TimingConfig).

    A model must take one tensor and return a tensor or a tuple of tensors (ONNX export); for
    a torchvision SSD pass `ssd_core(detector)`. Training flags are restored. Up to `chunk`
    networks are kept exported and in sessions at once (a BlazeFace session is ~3 MB), so
    each one's passes are minutes apart in a large batch: a load burst of a few seconds from
    other processes then cannot cover all of them (it did with chunks of 40: 5 of 100
    networks came out 5-27 % slow; timed again alone they matched the prediction).
    """
    _check_backend(backend)
    _check_threads(threads)
    return _time_modules(models, backend, threads, timing, chunk, progress,
                         f"timing {len(models)} networks ({backend}, {threads} threads)")


def measure_network_ms(model: nn.Module, example: torch.Tensor, backend: str = "onnxruntime",
                       threads: int = 1, timing: TimingConfig = TimingConfig(warmup=10, passes=3)
                       ) -> float:
    """End-to-end latency of `model(example)` in ms: same backends and statistic as the table
    (see `measure_networks_ms`)."""
    return measure_networks_ms({"model": (model, example)}, backend, threads, timing)["model"]


# --- the cache ------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name (for machine fingerprints and benchmark headers)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_fingerprint(backend: str = "onnxruntime", threads: int = 1) -> dict[str, Any]:
    """What a measured table depends on besides the ops: host, CPU, library versions."""
    import onnxruntime as ort

    return {
        "node": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "backend": _check_backend(backend),
        "threads": _check_threads(threads),
    }


def _fingerprint_id(fingerprint: Mapping[str, Any]) -> str:
    blob = json.dumps(dict(fingerprint), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def cached_table_path(cache_dir: Path, space_id: str, backend: str = "onnxruntime",
                      threads: int = 1) -> Path:
    """Where `build_table` keeps the table for this key on this machine."""
    if not isinstance(space_id, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", space_id):
        raise InputError("space_id", "must be 1-100 characters of letters, digits, '.', '_' or '-' "
                                     f"(starting with a letter or digit); got {space_id!r}.")
    fp = machine_fingerprint(backend, threads)
    return Path(cache_dir) / f"{space_id}__{backend}__t{threads}__{_fingerprint_id(fp)}.txt"


def _progress(items: list[Any], description: str, enabled: bool, total: int | None = None,
              step: int = 1) -> Iterator[Any]:
    """Iterate `items` with a rich progress bar; each item advances it by `step` (chunks), up
    to `total`."""
    if not enabled or not items:
        yield from items
        return
    from rich.progress import Progress

    total = len(items) * step if total is None else total
    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task, step)


def build_table(
    ops: Iterable[Mapping[str, Any] | str],
    cache_dir: Path,
    space_id: str,
    backend: str = "onnxruntime",
    threads: int = 1,
    timing: TimingConfig = TimingConfig(),
    progress: bool = True,
    chunk: int = 1024,
) -> LatencyTable:
    """The latency table (ms) of every distinct op in `ops` on this machine, cached.

    Ops are deduplicated by their table key. The table lives at `cached_table_path(...)` with
    its settings in a `.json` beside it; if that file exists, only the ops it lacks are timed
    (none on a second identical call) and the merged table is saved again.

    `chunk`: ops alive (exported, in a session) at once. Each op's passes are spread over its
    chunk's timing, so a large chunk spreads them over the whole build: with chunks of 48 (a
    third of a second per chunk) a burst of load from the idle Prefect/MLflow stack could cover
    all passes of an op, and two builds of the same table agreed within ±10 % on only 54-82 % of
    the ops (benchmarks/latency_predictor.py prints that agreement). A one-op session is small
    (the whole BlazeFace space, 731 ops, fits in one chunk).
    """
    _check_backend(backend)
    _check_threads(threads)
    keys = list(dict.fromkeys(op if isinstance(op, str) else key_of(op) for op in ops))
    for key in keys:  # a malformed key fails here, before minutes of timing
        parse_key(key, "ops")
    path = cached_table_path(cache_dir, space_id, backend, threads)
    fingerprint = machine_fingerprint(backend, threads)
    entries: dict[str, float] = {}
    if path.is_file():
        entries = LatencyTable.read(path).entries
    todo = [k for k in keys if k not in entries]
    if not todo and path.is_file():
        return LatencyTable.read(path)
    t0 = time.perf_counter()
    entries.update(time_ops(todo, backend, threads, timing, chunk=chunk, progress=progress))
    version = fingerprint["onnxruntime" if backend == "onnxruntime" else "torch"]
    device = re.sub(r"\s+", " ", f"{fingerprint['cpu']} / {backend} {version} / {threads} threads")
    table = LatencyTable(entries, device=device, unit="ms")
    table.save(path)
    meta = {"space_id": space_id, "fingerprint": fingerprint, "timing": asdict(timing),
            "statistic": "min over passes of the median over rounds of the fastest of "
                         "`number` calls (ms)",
            "ops": len(table), "timed_now": len(todo),
            "seconds": round(time.perf_counter() - t0, 2)}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return table


# --- BlazeFace (nas_models.blazeface) --------------------------------------------------------

class _SSDCore(nn.Module):
    """Backbone + SSD head + softmax over class scores of a torchvision SSD."""

    def __init__(self, ssd: nn.Module) -> None:
        super().__init__()
        self.backbone = ssd.backbone
        self.head = ssd.head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        features = list(features.values()) if isinstance(features, Mapping) else [features]
        out = self.head(features)
        return out["bbox_regression"], torch.softmax(out["cls_logits"], dim=-1)


def ssd_core(ssd: nn.Module) -> nn.Module:
    """The timed part of a torchvision SSD: backbone, heads and the class softmax, on an
    already resized and normalized (n, 3, S, S) tensor.

    This is exactly what `nas_models.blazeface.ops_of_model` lists (its softmax included), so
    table sums, predictions and `measure_network_ms(ssd_core(model), ...)` cover the same
    computation. Left out of all three: resizing/normalizing the input, box decoding and NMS
    (torchvision's postprocess, whose ONNX export is not reliable and which no table covers).
    The returned module shares the detector's weights.
    """
    if not (hasattr(ssd, "backbone") and hasattr(ssd, "head")):
        raise InputError("model", "must be a torchvision SSD-style detector with .backbone and .head.")
    return _SSDCore(ssd).eval()


def tokens_cost(tokens: Sequence[int], image_size: int | None = None) -> dict[str, int]:
    """{"macs", "params"} of a BlazeFace's `ssd_core` (backbone + SSD heads, one image): the part
    SANAS's FLOPs constraint, the latency table and the measurements all cover."""
    from latency.flops import count_macs_params
    from nas_models import blazeface as bf

    size = bf.DEFAULT_IMAGE_SIZE if image_size is None else image_size
    macs, params = count_macs_params(ssd_core(bf.build_from_tokens(tokens, image_size=size)), (1, 3, size, size))
    return {"macs": macs, "params": params}


def space_ops(latency_mode: bool = False, image_size: int | None = None, batch_size: int = 1,
              num_classes: int = 2) -> list[dict[str, Any]]:
    """Every distinct op (one dict per table key) any BlazeFace of the SANAS space can run.

    Enumerated from the token rules (`nas_models.blazeface`): for each block, every reachable
    (c_in, c_mid, c_out) under its fixed stride and input size, with both kernel choices (5x5
    depthwise, or two 3x3): the table then serves latency mode without fixing 3x3 kernels, so
    `latency_mode` changes nothing here and is accepted for symmetry with the space's API.
    Covers what `ssd_core` runs: stem, blocks, SSD heads, class softmax. Each part's ops are
    listed by the same forward hooks as `ops_of_model` (`stem_ops`, `block_ops`, `head_ops`,
    `softmax_op`), so the table's keys are the ones a network's op list looks up. Ops come out
    in first-seen order (a table's line order).
    """
    from nas_models import blazeface as bf

    size = bf.DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 32 or size % 16:
        raise InputError("image_size", f"must be a multiple of 16, at least 32; got {size!r}.")
    n = batch_size
    num1, num2 = bf.BLAZE_FILTER_NUM1, bf.BLAZE_FILTER_NUM2
    mid, dbl = bf.MID_FILTER_NUM, bf.DOUBLE_FILTER_NUM
    h2, h4, h8, h16 = size // 2, size // 4, size // 8, size // 16
    # Every block position with each width it can get, both kernel choices; the ops come from
    # the network's own layers (forward hooks, nas_models.blazeface), not from a copy here.
    ops: list[dict[str, Any]] = []
    for c in num1:
        ops += bf.stem_ops(c, size, n)
    for use_5x5 in (False, True):
        block = functools.partial(bf.block_ops, use_5x5=use_5x5, batch_size=n)
        for a in num1:
            ops += block(a, a, None, 1, size=h2)                 # blaze_0
            for b in num2:
                ops += block(a, b, None, 2, size=h2)                 # blaze_1
        for b in num2:
            ops += block(b, b, None, 1, size=h4)                     # blaze_2
            for m in mid:
                for d in dbl:
                    ops += block(b, m, d, 2, size=h4)                # double_blaze_0
        for d in dbl:
            for m in mid:
                ops += block(d, m, d, 1, size=h8)                    # double_blaze_1
                ops += block(d, m, d, 1, size=h16)                   # double_blaze_3
                for d3 in dbl:
                    ops += block(d, m, d3, 2, size=h8)               # double_blaze_2
    for d in dbl:  # SSD heads (3x3 convs with bias) on the stride-8 and stride-16 maps
        for level in range(len(bf.FEATURE_STRIDES)):
            ops += bf.head_ops(d, level, size, n, num_classes)
    ops.append(bf.softmax_op(size, n, num_classes))
    # Dedupe on the raw values first (tens of thousands of dicts), keys only for the survivors;
    # the bookkeeping fields (module name, part) would only defeat the first step.
    raw = {tuple((k, v) for k, v in op.items() if k not in ("module", "part")): op for op in ops}
    unique: dict[str, dict[str, Any]] = {}
    for op in raw.values():
        unique.setdefault(key_of(op), op)
    return list(unique.values())
