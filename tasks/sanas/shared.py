"""What the sanas/full stages share (a stage imports no other stage's code, only the result
classes of the stages before it): the cost of a token list (MACs, params, predicted latency),
the constraint value SANAS compares with its window, the window itself, and training + scoring
a BlazeFace of given tokens. Plain functions: no Prefect, no MLflow."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from core.errors import InputError
from data.coco import load_coco
from engine.detector_fit import DetectorOptim, fit_steps, score, train_loader
from engine.runtime import configure_torch, resolve_device
from latency.measure import tokens_cost
from latency.predictor import LatencyPredictor
from latency.table import LatencyTable
from nas_models.blazeface import INIT_TOKENS, RANGE_TABLE, build_from_tokens, ops_of_model
from params.feasibility import check_range
from params.models import FaceTrainParams, Runtime, SanasConstraint


class LatencyFiles(Protocol):
    """What a cost needs of the latency_table stage's result (that stage computes costs itself,
    so this module cannot import its result class)."""

    @property
    def table_file(self) -> str: ...

    @property
    def predictor_file(self) -> str | None: ...


class FaceFiles(Protocol):
    """What training needs of the data stage's result: the COCO images and annotation files
    (a protocol, so the latency_table stage, which imports this module, keeps data.py out of its
    cache key)."""

    @property
    def train_images(self) -> str: ...

    @property
    def train_json(self) -> str: ...

    @property
    def val_images(self) -> str: ...

    @property
    def val_json(self) -> str: ...


@dataclass(frozen=True)
class Window:
    """SANAS's constraint window: `ctype` "flops" (MACs) or "latency" (predicted ms)."""

    ctype: str
    min: float | None  # None: no lower bound
    max: float | None  # None: no upper bound
    unit: str          # "MACs" or "ms"

    def to_dict(self) -> dict[str, Any]:
        """As constraint.json and the search's MLflow params hold it."""
        return asdict(self)


@lru_cache(maxsize=4)
def _latency_model(table_file: str, predictor_file: str | None) -> LatencyPredictor | LatencyTable:
    table = LatencyTable.read(table_file)
    return LatencyPredictor.load(Path(predictor_file), table) if predictor_file else table


def predicted_ms(tokens: list[int], latency: LatencyFiles, image_size: int) -> float:
    """The fitted predictor's latency (ms) of a token list, or the plain table sum when the
    table came without one (e.g. a table measured on another device)."""
    model = _latency_model(latency.table_file, latency.predictor_file)
    ops = ops_of_model(build_from_tokens(tokens, image_size=image_size).eval())
    return float(model.predict(ops) if isinstance(model, LatencyPredictor) else model.sum(ops))


def cost(tokens: list[int], latency: LatencyFiles, image_size: int) -> dict[str, float]:
    """{"macs", "params", "predicted_ms"} of a token list (macs/params of backbone + heads)."""
    return {**tokens_cost(tokens, image_size), "predicted_ms": predicted_ms(tokens, latency, image_size)}


def constraint_value(tokens: list[int], ctype: str, latency: LatencyFiles, image_size: int) -> float:
    if ctype == "flops":
        return float(tokens_cost(tokens, image_size)["macs"])
    return predicted_ms(tokens, latency, image_size)


def latency_range(cost: Callable[[list[int]], float]) -> tuple[float, float]:
    """The least and the most latency (`cost`: tokens → ms) an architecture of the SANAS space has.

    Widths (tokens 0-7) only add work, but the kernel token does not: two 3x3 depthwise convs +
    BN can run slower than one 5x5 (fewer MACs, more ops). So both kernel choices at the
    narrowest and at the widest end."""
    *widths, kernels = RANGE_TABLE
    narrow, wide = ([cost([*ends, k]) for k in range(kernels)] for ends in ([0] * len(widths),
                                                                               [r - 1 for r in widths]))
    return min(narrow), max(wide)


def constraint_window(constraint: SanasConstraint, latency: LatencyFiles, image_size: int) -> Window:
    """SANAS's window: "start" resolved to the initial tokens' own MACs or predicted latency.
    A latency window no architecture of the space meets is one InputError naming
    constraint.min / max (FLOPs windows are checked with the params).

    Kept out of the latency_table stage so that changing the constraint reuses the measured
    table and predictor; it costs a few predictions."""
    high = constraint.max
    if high == "start":
        high = constraint_value(list(INIT_TOKENS), constraint.ctype, latency, image_size)
    if constraint.ctype == "latency":
        feasible = latency_range(lambda tokens: constraint_value(tokens, "latency", latency, image_size))
        try:
            check_range("latency", constraint.min, high, feasible, "ms")  # type: ignore[arg-type]
        except ValueError as exc:
            field, message = str(exc).split(": ", 1)
            raise InputError(field, message) from None
    return Window(ctype=constraint.ctype, min=constraint.min, max=high,
                  unit="MACs" if constraint.ctype == "flops" else "ms")


def optim_of(train: FaceTrainParams) -> DetectorOptim:
    return DetectorOptim(learning_rate=train.learning_rate, momentum=train.momentum, weight_decay=train.weight_decay,
                         batch_size=train.batch_size, warmup_steps=20, schedule="cosine")


def train_tokens(tokens: list[int], data: FaceFiles, train: FaceTrainParams, steps: int, image_size: int,
                 seed: int, runtime: Runtime, checkpoint: Path | None = None, *, total: int | None = None,
                 resume_from: Path | None = None) -> tuple[Any, dict[str, float]]:
    """A BlazeFace of `tokens` trained `steps` steps from scratch; (model, AP scores on val).

    `total` (rungs): the schedule's length when only its first `steps` steps are trained now
    (default `steps`); `resume_from`: an earlier stop's `checkpoint` to continue from (see
    engine.detector_fit.fit_steps: continuing equals one uninterrupted run of the schedule)."""
    configure_torch(runtime.num_threads, seed)
    device = resolve_device(runtime.device)
    model = build_from_tokens(tokens, image_size=image_size)
    train_set = load_coco(Path(data.train_images), Path(data.train_json))
    val_set = load_coco(Path(data.val_images), Path(data.val_json))
    losses = fit_steps(model, train_loader(train_set, train.batch_size, seed), steps if total is None else total,
                       optim_of(train), device=device, checkpoint=checkpoint,
                       stop_at=None if total is None else steps, resume_from=resume_from)
    scores = score(model, val_set, device=device)
    return model, {"AP50": scores["mAP50"], "AP": scores["mAP"], "final_loss": losses.get("loss")}
