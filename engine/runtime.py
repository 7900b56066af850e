"""Process-wide torch settings a stage applies before it trains: threads, seeds, the device,
and the RNG snapshots a resumable training stores in its checkpoint."""
from __future__ import annotations

import os
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import InputError

_CUDA = re.compile(r"cuda(?::(\d+))?")


def dask_worker() -> Any | None:
    """The Dask worker running this code, None outside one (or without distributed installed)."""
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        return get_worker()
    except ValueError:  # not inside a Dask worker (thread-pool runner, or called directly)
        return None


def _dask_worker_threads() -> int | None:
    """nthreads of the Dask worker running this code, None outside one."""
    worker = dask_worker()
    return None if worker is None else int(worker.state.nthreads)


def configure_torch(num_threads: int | None, seed: int) -> int:
    """Threads (default: all cores — two trainings in parallel only fight over them — or, inside a
    Dask worker, the worker's own thread count, so several workers on one machine do not each
    take every core) and seeds."""
    threads = num_threads or _dask_worker_threads() or os.cpu_count() or 1
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return threads


def resolve_device(spec: str | torch.device) -> torch.device:
    """"auto" | "cpu" | "cuda" | "cuda:N" -> a usable torch.device, or an InputError naming `device`.

    Cheap enough for params validation: "cpu" never touches CUDA, and the others only ask
    whether CUDA is there (no context is created).
    """
    text = str(spec).strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    match = _CUDA.fullmatch(text)
    if match is None:
        raise InputError("device", f"{str(spec)!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    if not torch.cuda.is_available():
        raise InputError("device", f"{str(spec)!r} asks for CUDA but no CUDA GPU is usable here; "
                                   "use 'cpu' or 'auto'.")
    index, count = int(match.group(1) or 0), torch.cuda.device_count()
    if index >= count:
        raise InputError("device", f"{str(spec)!r} does not exist: this machine has {count} CUDA "
                                   f"device(s), cuda:0 to cuda:{count - 1}.")
    # An explicit index so it compares equal to the device a parameter reports.
    return torch.device("cuda", index)


def module_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# On CPU, inference runs in channels_last (the blocks that only run the model forward ask for it):
# measured side by side (benchmarks/memory_format.py, 2 threads, two runs) 0.55-0.92x the time for
# all five families. Training stays in the default format: oneDNN's channels_last backward (torch
# 2.14 CPU) corrupts memory or spins forever on some strided 1x1 convolutions with few channels,
# which pruned networks have (a ResNet-56 candidate with a 6->19 shortcut hung a search;
# tests/test_engine.py keeps that case), and it saved at most a quarter of a step. Only the
# weights change format: a conv with channels_last weights gives channels_last outputs, so
# batches stay as loaders make them.
CHANNELS_LAST_ON_CPU = True
_FORMAT_CHOSEN = "_spnas_memory_format"  # set while an outer model_on block owns the model's format


def _has_conv_weights(model: nn.Module) -> bool:
    return any(p.dim() == 4 for p in model.parameters())


@contextmanager
def model_on(model: nn.Module, device: torch.device | str | None,
             channels_last: bool = False) -> Iterator[torch.device]:
    """Run a block with `model` on `device` (in the engine's memory format) and put it back where
    and as it was afterwards (also on error).

    None leaves the model where it is. Restoring keeps every engine call's contract simple: the
    caller's model comes back on the device it went in on (CPU in the tasks) in the default
    memory format, so state dicts it saves and `latency_ms` stay on CPU. Parameters keep their
    identity (`Module.to` swaps `.data`), so an optimizer built on them stays valid. Call outside
    inference mode: moving parameters inside it would turn them into inference tensors that
    cannot train again. Nested blocks leave the format to the outermost one; `channels_last=True`
    (forward-only blocks: evaluation, BN re-estimation, timing) holds the weights in channels_last on CPU.
    """
    home = module_device(model)
    target = home if device is None else torch.device(device)
    if target != home:
        model.to(target)
    outermost = not hasattr(model, _FORMAT_CHOSEN)
    convert = (outermost and channels_last and CHANNELS_LAST_ON_CPU and target.type == "cpu"
               and _has_conv_weights(model))
    if outermost:
        setattr(model, _FORMAT_CHOSEN, convert)
    if convert:
        model.to(memory_format=torch.channels_last)
    try:
        yield target
    finally:
        if convert:
            model.to(memory_format=torch.contiguous_format)
        if outermost:
            delattr(model, _FORMAT_CHOSEN)
        if target != home:
            model.to(home)


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The global RNG streams a training draws from (torch CPU, CUDA on `device`, numpy, python),
    as tensors and plain lists so a `weights_only` load accepts them."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _plain(random.getstate()),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"].cpu())  # loaded with map_location, it may not be on CPU
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(_tuple(state["python"]))
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def _tuple(value: Any) -> Any:
    return tuple(_tuple(v) for v in value) if isinstance(value, list) else value
