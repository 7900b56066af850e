"""Predict a network's latency from its ops: the latency-table sum plus a fitted correction,
with the predictor's accuracy measured on held-out architectures and stored beside the table.

Why a correction: a table entry is one op timed alone, so it carries a whole runtime call's
overhead (µs per ORT `run`) and none of the graph fusions a whole network gets (ONNX export
folds BN into the conv before it, ORT fuses conv+ReLU). The plain sum therefore overestimates,
by an amount that depends on the mix of op types. The correction is linear in per-type table
sums (`kind="per_type"`, default):

    latency ≈ Σ_g a_g · (table sum of the ops in group g) + c · (number of ops) + b

with groups depthwise conv, 1x1 conv, other conv, and one per other table op type (`GROUPS`) —
only those the fitting networks run get a coefficient; `kind="linear"` is latency ≈
a · table_sum + b. Coefficients come from weighted least
squares (numpy) on measured end-to-end latencies, each row weighted by 1 / measured so the fit
minimises relative error, the quantity the accuracy figure counts.

Accuracy (nn-Meter's definition): the share of held-out architectures whose prediction is
within ±10 % of the measured latency, |predicted − measured| ≤ 0.10 · measured, and the RMSE in
ms; computed only on architectures that were not in the fitting set (their ids are stored).
Beside them: Kendall's tau (does it order networks?) and what a constant — the fitting
networks' mean — scores on the same held-out set, since in a space whose networks all run
within a few percent of each other (SPOS paths) a constant is within ±10 % too.
The predictor is plain JSON (no pickle) next to the table: `<table>.predictor.json`.

`fit_predictor` does all of it for the BlazeFace SANAS space (nas_models.blazeface), with a
table over the whole space; `fit_space_predictor` for any space a search describes as a
`LatencySpace` (its builder and sampler), with a table over the ops its sampled networks run
(`latency.trace`); `check_covers` tells whether a predictor serves a space.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau

from latency.measure import (TimingConfig, torch_threads, build_table, measure_networks_ms,
                             space_ops, ssd_core)
from core.errors import InputError
from core.seeds import derive_seed
from latency.table import LatencyTable, key_of, op_type_of

__all__ = [
    "GROUPS",
    "KINDS",
    "LatencyPredictor",
    "LatencySpace",
    "Sample",
    "accuracy_of",
    "check_covers",
    "fit_and_evaluate",
    "fit_predictor",
    "fit_space_predictor",
    "group_of",
    "predictor_path",
    "retest_of",
    "sample_tokens",
    "verdict_of",
]

GROUPS = ("conv_dw", "conv_1x1", "conv", "batch_norm", "activation", "eltwise", "pooling", "softmax",
          "fc", "concat", "slice", "resize", "gather")
KINDS = ("per_type", "linear")
FORMAT = "spnas-latency-predictor"
VERSION = 1
WITHIN = 0.10  # ±10 %, nn-Meter's headline accuracy band


@dataclass
class Sample:
    """One architecture with its op list and measured end-to-end latency (ms)."""

    id: str
    ops: list[Mapping[str, Any]]
    measured_ms: float
    info: dict[str, Any] = field(default_factory=dict)  # e.g. the tokens; stored with results


def group_of(op: Mapping[str, Any]) -> str:
    """Correction group of an op: conv split by shape (depthwise / 1x1 / other), else its type."""
    kind = op_type_of(op)
    if kind != "conv":
        return kind
    if op["groups"] > 1 and op["groups"] == op["c_in"]:
        return "conv_dw"
    return "conv_1x1" if op["k"] == 1 and op["groups"] == 1 else "conv"


def _features(table: LatencyTable, ops: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[float]:
    """The feature values `names` (`_feature_names`) of one network's ops."""
    total = table.sum(ops)  # raises naming the first op the table lacks
    if list(names) == ["table_sum"]:
        return [total]
    sums = dict.fromkeys(names, 0.0)
    for op in ops:
        group = group_of(op)
        if group not in sums:
            raise InputError("ops", f"the predictor was fitted on networks without any {group} op "
                                    f"({key_of(op)}); fit it on networks of this space.")
        sums[group] += table.lookup(op)
    sums["n_ops"] = float(len(ops))
    return [sums[n] for n in names]


def _feature_names(kind: str, samples: Sequence[Sample] = ()) -> list[str]:
    """`table_sum` (linear), or one per-type sum for each group the fitting networks run (all
    groups when no samples are given) and the op count (per_type): a space without, say,
    concatenations gets no concat coefficient to fit on zeros."""
    if kind == "linear":
        return ["table_sum"]
    seen = {group_of(op) for s in samples for op in s.ops} if samples else set(GROUPS)
    return [g for g in GROUPS if g in seen] + ["n_ops"]


def _table_digest(table: LatencyTable) -> str:
    return hashlib.sha256(table.to_text().encode()).hexdigest()


def retest_of(first: Mapping[str, float], second: Mapping[str, float],
              predicted: Mapping[str, float] | None = None) -> dict[str, Any]:
    """How far two independent measurements of the same networks agree (`first`, `second`: ms
    by network id), with nn-Meter's ±10 % rule applied to the pair (the second taken as the
    "prediction" of the first). That share is the ceiling a predictor judged against one
    measurement can reach on this machine: no prediction agrees with a measurement better than a
    second measurement does. With `predicted`, the predictor's figures against each run too."""
    ids = [i for i in first if i in second]
    if not ids:
        raise InputError("retest", "needs at least one network measured twice.")
    a = [first[i] for i in ids]
    b = [second[i] for i in ids]
    out: dict[str, Any] = {"n": len(ids), "test_retest": accuracy_of(b, a),
                           "median_abs_rel_change": float(np.median(np.abs(np.subtract(b, a)) / np.asarray(a)))}
    if predicted is not None:
        p = [predicted[i] for i in ids]
        out["predictor_vs_first"] = accuracy_of(p, a)
        out["predictor_vs_second"] = accuracy_of(p, b)
    return out


CEILING_FLOOR = 0.90  # below this test-retest share a ±10 % accuracy says more about the machine


def verdict_of(retest: Mapping[str, Any], floor: float = CEILING_FLOOR, slack: float = 0.05) -> str:
    """One line on what the predictor's ±10 % share means given the measurement's own repeatability:
    "not judged" when the test-retest share is under `floor`, else how far below the ceiling the
    predictor is (worse of its two runs)."""
    ceiling = retest["test_retest"]["within_10pct"]
    if ceiling < floor:
        return (f"not judged: two measurements of the same networks agree within ±10 % for only "
                f"{ceiling:.0%} of them (< {floor:.0%}); the machine is too noisy for a ±10 % figure")
    worst = min(retest["predictor_vs_first"]["within_10pct"], retest["predictor_vs_second"]["within_10pct"])
    gap = ceiling - worst
    where = "at the ceiling" if gap <= slack else f"{100 * gap:.0f} points below the ceiling"
    return f"{where}: predictor {worst:.0%} (worse run) vs test-retest {ceiling:.0%}"


def predictor_path(table_path: Path) -> Path:
    """Where a table's predictor lives: beside it, `<table stem>.predictor.json`."""
    table_path = Path(table_path)
    return table_path.with_name(table_path.stem + ".predictor.json")


def accuracy_of(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """Share within ±10 % of measured (nn-Meter's definition), RMSE (ms), and Kendall's tau
    between predicted and measured (None for a constant or a single prediction): in a space whose
    networks all run within a few percent of each other the ±10 % share says little — even one
    constant is within it — while tau says whether the predictor orders them, which is what a
    search's latency objective or limit uses."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    if p.shape != m.shape or not p.size:
        raise InputError("measured", "needs one measured latency per prediction (at least one).")
    rel = np.abs(p - m) / m
    tau = float(kendalltau(p, m).statistic) if p.size > 1 else float("nan")
    return {"within_10pct": float(np.mean(rel <= WITHIN)),
            "rmse_ms": float(np.sqrt(np.mean((p - m) ** 2))),
            "mean_abs_rel_error": float(np.mean(rel)),
            "max_abs_rel_error": float(np.max(rel)),
            "kendall_tau": None if math.isnan(tau) else tau}


class LatencyPredictor:
    """Table sum + fitted linear correction (module docstring), bound to one latency table."""

    def __init__(self, table: LatencyTable, coef: Mapping[str, float], intercept: float,
                 kind: str = "per_type", fit_ids: Sequence[str] = (),
                 accuracy: Mapping[str, Any] | None = None, holdout: Sequence[Mapping[str, Any]] = (),
                 note: str = "") -> None:
        if kind not in KINDS:
            raise InputError("kind", f"must be one of {', '.join(KINDS)}; got {kind!r}.")
        allowed = _feature_names(kind)
        if not coef or not set(coef) <= set(allowed) or (kind == "per_type" and "n_ops" not in coef):
            raise InputError("coef", f"a {kind} predictor needs coefficients among {', '.join(allowed)}"
                                     f"{' (n_ops included)' if kind == 'per_type' else ''}; "
                                     f"got {', '.join(coef) or 'none'}.")
        self.table = table
        self.kind = kind
        self.coef = {n: float(coef[n]) for n in allowed if n in coef}
        self.intercept = float(intercept)
        self.fit_ids = list(fit_ids)
        self.accuracy = dict(accuracy) if accuracy is not None else None
        self.holdout = [dict(h) for h in holdout]
        self.note = note

    def predict(self, ops: Sequence[Mapping[str, Any]]) -> float:
        """Predicted latency (ms) of a network running `ops`."""
        x = _features(self.table, list(ops), list(self.coef))
        return float(np.dot(x, list(self.coef.values())) + self.intercept)

    @classmethod
    def fit(cls, table: LatencyTable, samples: Sequence[Sample], kind: str = "per_type") -> LatencyPredictor:
        """Weighted least squares of measured latency on the table features of `samples`."""
        if kind not in KINDS:
            raise InputError("kind", f"must be one of {', '.join(KINDS)}; got {kind!r}.")
        names = _feature_names(kind, samples)
        if len(samples) < len(names) + 1:
            raise InputError("fit", f"needs at least {len(names) + 1} architectures for a {kind} "
                                    f"fit; got {len(samples)}.")
        _check_samples(samples, "fit")
        x = np.array([_features(table, s.ops, names) + [1.0] for s in samples])
        y = np.array([s.measured_ms for s in samples])
        w = 1.0 / y  # relative error is what the ±10 % figure counts
        beta, *_ = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)
        coef = dict(zip(names, beta[:-1].tolist()))
        return cls(table, coef, float(beta[-1]), kind, fit_ids=[s.id for s in samples])

    def evaluate(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """Accuracy on `samples`, which must not include any architecture the fit used."""
        _check_samples(samples, "holdout")
        overlap = sorted(set(self.fit_ids) & {s.id for s in samples})
        if overlap:
            raise InputError("holdout", f"architecture {overlap[0]} (and {len(overlap) - 1} more) "
                                        "was used for fitting; held-out accuracy needs unseen ones.")
        predicted = [self.predict(s.ops) for s in samples]
        raw = [self.table.sum(s.ops) for s in samples]
        measured = [s.measured_ms for s in samples]
        self.holdout = [{"id": s.id, **s.info, "measured_ms": m, "predicted_ms": p, "table_sum_ms": r}
                        for s, m, p, r in zip(samples, measured, predicted, raw)]
        self.accuracy = {
            **accuracy_of(predicted, measured),
            "n_holdout": len(samples), "n_fit": len(self.fit_ids),
            "holdout_ids": [s.id for s in samples],
            "raw_table_sum": accuracy_of(raw, measured),
            "definition": "share of held-out architectures with |predicted - measured| <= 0.10 * "
                          "measured (nn-Meter's ±10 % accuracy); rmse_ms over the same set",
        }
        return self.accuracy

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self, table_file: str | None = None) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "kind": self.kind, "unit": "ms",
            "features": list(self.coef), "coef": self.coef, "intercept": self.intercept,
            "table_file": table_file, "table_sha256": _table_digest(self.table),
            "device": self.table.device, "note": self.note, "fit_ids": self.fit_ids,
            "accuracy": self.accuracy, "holdout": self.holdout,
        }

    def save(self, path: Path | None = None) -> Path:
        """Write JSON (default: beside the table's file); returns the path."""
        if path is None:
            if self.table.path is None:
                raise InputError("path", "the table has no file; pass the predictor's path.")
            path = predictor_path(self.table.path)
        path = Path(path)
        table_file = None
        if self.table.path is not None:
            table_file = os.path.relpath(self.table.path, path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_dict(table_file), indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: Path, table: LatencyTable | None = None) -> LatencyPredictor:
        """Read a predictor; its table is `table` or the file named inside (beside the JSON).
        A table whose content differs from the one it was fitted on is an InputError."""
        path = Path(path)
        if not path.is_file():
            raise InputError("predictor_file", f"no latency predictor at {path}.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError("predictor_file", f"{path} is not a JSON latency predictor ({exc}).") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise InputError("predictor_file", f"{path} is not a {FORMAT} version {VERSION} file.")
        if table is None:
            if not data.get("table_file"):
                raise InputError("table", f"{path} names no table file; pass the table.")
            table = LatencyTable.read(path.parent / data["table_file"])
        if _table_digest(table) != data.get("table_sha256"):
            raise InputError("table", f"the latency table differs from the one {path} was fitted "
                                      "on; refit the predictor for this table.")
        try:
            return cls(table, data["coef"], data["intercept"], data["kind"], data.get("fit_ids", ()),
                       data.get("accuracy"), data.get("holdout", ()), data.get("note", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("predictor_file",
                             f"{path} is missing or has a malformed entry ({exc}).") from None


def _check_samples(samples: Sequence[Sample], field_name: str) -> None:
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise InputError(field_name, "architecture ids must be unique.")
    for s in samples:
        if not (isinstance(s.measured_ms, (int, float)) and math.isfinite(s.measured_ms)
                and s.measured_ms > 0):
            raise InputError(field_name, f"measured latency of {s.id} must be a positive number; "
                                         f"got {s.measured_ms!r}.")


def fit_and_evaluate(table: LatencyTable, fit: Sequence[Sample], holdout: Sequence[Sample],
                     kind: str = "per_type", min_holdout: int = 100) -> LatencyPredictor:
    """Fit on `fit`, report accuracy on `holdout` only (disjoint ids, at least `min_holdout`)."""
    if len(holdout) < min_holdout:
        raise InputError("holdout", f"needs at least {min_holdout} held-out architectures; "
                                    f"got {len(holdout)}.")
    overlap = sorted({s.id for s in fit} & {s.id for s in holdout})
    if overlap:
        raise InputError("holdout", f"architecture {overlap[0]} is in both the fitting and the "
                                    "held-out set; they must be disjoint.")
    predictor = LatencyPredictor.fit(table, fit, kind)
    predictor.evaluate(holdout)
    # What knowing nothing but the fitting networks' mean latency scores on the same held-out set.
    mean = float(np.mean([s.measured_ms for s in fit]))
    predictor.accuracy["constant_fit_mean"] = accuracy_of([mean] * len(holdout), [s.measured_ms for s in holdout])
    return predictor


# --- BlazeFace ------------------------------------------------------------------------------

def sample_tokens(count: int, seed: int = 0) -> list[list[int]]:
    """`count` distinct random token lists of the BlazeFace space (uniform per token), both
    kernel choices included: `space_ops` tables hold 5x5 as well, so latency mode can use them.
    """
    from nas_models import blazeface as bf

    ranges = bf.range_table(False)
    rng = random.Random(seed)
    seen: dict[tuple[int, ...], None] = {}
    while len(seen) < count:
        seen.setdefault(tuple(rng.randrange(r) for r in ranges), None)
    return [list(t) for t in seen]


def fit_predictor(
    cache_dir: Path,
    space_id: str = "blazeface",
    n_fit: int = 60,
    n_holdout: int = 100,
    seed: int = 0,
    image_size: int | None = None,
    backend: str = "onnxruntime",
    threads: int = 1,
    kind: str = "per_type",
    table_timing: TimingConfig = TimingConfig(passes=5),
    network_timing: TimingConfig = TimingConfig(warmup=10, passes=3),
    progress: bool = True,
    min_holdout: int = 100,
    retest: bool = False,
) -> LatencyPredictor:
    """Build (or reuse) the BlazeFace space's table, measure `n_fit + n_holdout` random
    architectures end to end (`ssd_core`), fit on `n_fit`, evaluate on the others, and save the
    predictor beside the table. Fit and held-out architectures are drawn at random from one
    sample and timed interleaved (`measure_networks_ms`), so machine load hits both alike.

    `table_timing`: five passes per op by default. Every prediction sums the same table, so an op
    timed during a burst of load skews all of them: with two passes, a table built beside the idle
    Prefect/MLflow stack put 90-96 % of held-out predictions within ±10 % against a 98-100 %
    test-retest ceiling, one built on a quiet machine 100 % (benchmarks/latency_predictor.py).

    `retest`: time the held-out networks a second time, in a separate session after the first,
    and store `retest_of` (test-retest share, the predictor against each measurement) and
    `verdict_of` in the accuracy: the ±10 % figure is then read against the machine's own noise.
    """
    from nas_models import blazeface as bf

    _check_counts(n_fit, n_holdout)
    size = bf.DEFAULT_IMAGE_SIZE if image_size is None else image_size
    table = build_table(space_ops(image_size=size), cache_dir, f"{space_id}-{size}px", backend,
                        threads, table_timing, progress)
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    models: dict[str, tuple[torch.nn.Module, torch.Tensor]] = {}
    ops: dict[str, list[dict[str, Any]]] = {}
    infos: dict[str, dict[str, Any]] = {}
    with torch_threads(1):  # listing ops runs a forward pass; no timing happens here
        for t in sample_tokens(n_fit + n_holdout, seed):
            sample_id = "t" + "-".join(map(str, t))
            torch.manual_seed(seed)
            model = bf.build_from_tokens(t, image_size=size).eval()
            ops[sample_id] = bf.ops_of_model(model)
            models[sample_id] = (ssd_core(model), example)
            infos[sample_id] = {"tokens": t}
    note = (f"BlazeFace SANAS space at {size} px, batch 1, {backend}, {threads} threads; "
            "covers backbone + SSD heads + class softmax (latency.measure.ssd_core), "
            "not resizing, box decoding or NMS")
    return _fit_measured(table, models, ops, infos, n_fit, seed, backend, threads, kind,
                         network_timing, progress, min_holdout, retest, note)


def _check_counts(n_fit: Any, n_holdout: Any) -> None:
    for name, value, low in (("n_fit", n_fit, 2), ("n_holdout", n_holdout, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(name, f"must be an integer >= {low}; got {value!r}.")


class _Subset(Mapping[str, tuple[torch.nn.Module, torch.Tensor]]):
    """The networks `ids` of a (possibly lazy) mapping, fetched only when timed."""

    def __init__(self, models: Mapping[str, tuple[torch.nn.Module, torch.Tensor]], ids: Sequence[str]) -> None:
        self.models, self.ids = models, list(ids)

    def __getitem__(self, sample_id: str) -> tuple[torch.nn.Module, torch.Tensor]:
        if sample_id not in self.ids:
            raise KeyError(sample_id)
        return self.models[sample_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def _fit_measured(table: LatencyTable, models: Mapping[str, tuple[torch.nn.Module, torch.Tensor]],
                  ops: Mapping[str, list[dict[str, Any]]], infos: Mapping[str, dict[str, Any]],
                  n_fit: int, seed: int, backend: str, threads: int, kind: str,
                  network_timing: TimingConfig, progress: bool, min_holdout: int, retest: bool,
                  note: str, chunk: int = 200, extra: Mapping[str, Any] | None = None) -> LatencyPredictor:
    """Measure `models` end to end (interleaved), fit on a random `n_fit` of them, evaluate on
    the rest, optionally retest the held-out ones, and save the predictor beside the table
    (`extra`: more entries for its accuracy record).
    Fit and held-out networks come from one sample and are timed together, so machine load
    hits both alike."""
    roles = ["fit"] * n_fit + ["holdout"] * (len(models) - n_fit)
    random.Random(derive_seed(seed, "latency.predictor.roles")).shuffle(roles)
    measured = measure_networks_ms(models, backend, threads, network_timing, chunk, progress)
    fit: list[Sample] = []
    holdout: list[Sample] = []
    for sample_id, role in zip(models, roles):
        sample = Sample(sample_id, ops[sample_id], measured[sample_id], dict(infos.get(sample_id, {})))
        (fit if role == "fit" else holdout).append(sample)
    predictor = fit_and_evaluate(table, fit, holdout, kind, min_holdout)
    if retest:
        again = measure_networks_ms(_Subset(models, [s.id for s in holdout]), backend, threads,
                                    network_timing, chunk, progress)
        predicted = {h["id"]: h["predicted_ms"] for h in predictor.holdout}
        check = retest_of({s.id: s.measured_ms for s in holdout}, again, predicted)
        check["verdict"] = verdict_of(check)
        predictor.accuracy = {**(predictor.accuracy or {}), "retest": check}
        for h in predictor.holdout:
            h["retest_ms"] = again[h["id"]]
    predictor.accuracy = {**(predictor.accuracy or {}), **(extra or {})}
    predictor.note = note
    predictor.save()
    return predictor


# --- any space: networks built by a search's own builder, ops read by latency.trace ----------

@dataclass(frozen=True)
class LatencySpace:
    """What a search space gives the predictor: a name (the table's space id), `build(arch)` ->
    (module, one example input of batch 1) — the builder its `latency.direct.NetworkLatency`
    times — and `sample(count, seed)` -> `count` distinct random architectures, with `describe`
    turning one into a short id."""

    name: str
    build: Callable[[Any], tuple[torch.nn.Module, torch.Tensor]]
    sample: Callable[[int, int], list[Any]]
    describe: Callable[[Any], str] = str
    note: str = ""
    chunk: int = 200   # networks alive (exported, in an ORT session) at once while timing
    # Every op the space can run, where it can be listed: the table then serves any network of the
    # space (a predictor from another device included); None = the sampled networks' ops only.
    ops: Callable[[], Iterable[Mapping[str, Any]]] | None = None


class _Networks(Mapping[str, tuple[torch.nn.Module, torch.Tensor]]):
    """id -> (module, example), built when asked for and not kept: timing holds only a chunk of
    large networks at once (140 SP-NAS detector bodies held together would take ~20 GB here)."""

    def __init__(self, space: LatencySpace, archs: Mapping[str, Any], seed: int) -> None:
        self.space, self.archs, self.seed = space, archs, seed

    def __getitem__(self, sample_id: str) -> tuple[torch.nn.Module, torch.Tensor]:
        torch.manual_seed(self.seed)  # same weights and example on every build
        module, example = self.space.build(self.archs[sample_id])
        return module.eval(), example

    def __iter__(self) -> Iterator[str]:
        return iter(self.archs)

    def __len__(self) -> int:
        return len(self.archs)


def fit_space_predictor(
    space: LatencySpace,
    cache_dir: Path,
    n_fit: int = 40,
    n_holdout: int = 100,
    seed: int = 0,
    backend: str = "onnxruntime",
    threads: int = 1,
    kind: str = "per_type",
    table_timing: TimingConfig = TimingConfig(passes=5),
    network_timing: TimingConfig = TimingConfig(warmup=10, passes=3),
    progress: bool = True,
    min_holdout: int = 100,
    retest: bool = False,
) -> LatencyPredictor:
    """`fit_predictor` for any space: sample `n_fit + n_holdout` architectures, read each one's
    ops off a forward pass (`latency.trace.ops_of_network`), build (or extend) the table over the
    space's listed ops (`space.ops`) and the ops these networks run, then measure, fit and
    evaluate as for BlazeFace. Without `space.ops` the table holds the sampled networks' ops only:
    a later network with a new op configuration needs the table extended (`build_table` times
    only what it lacks)."""
    from latency.trace import ops_of_network

    _check_counts(n_fit, n_holdout)
    sampled = space.sample(n_fit + n_holdout, seed)
    archs = {space.describe(arch): arch for arch in sampled}
    if len(archs) != len(sampled):
        raise InputError("describe", f"gave {len(archs)} distinct ids for {len(sampled)} architectures.")
    models = _Networks(space, archs, seed)
    ops: dict[str, list[dict[str, Any]]] = {}
    untabled: dict[str, int] = {}
    with torch_threads(1):
        for sample_id in archs:
            traced = ops_of_network(*models[sample_id])
            ops[sample_id] = list(traced.ops)
            for name, count in traced.untabled.items():
                untabled[name] = untabled.get(name, 0) + count
    whole = list(space.ops()) if space.ops is not None else []
    table = build_table([*whole, *(op for op_list in ops.values() for op in op_list)], cache_dir, space.name,
                        backend, threads, table_timing, progress)
    left_out = ", ".join(f"{k} x{v}" for k, v in sorted(untabled.items())) or "nothing"
    note = (f"{space.note or space.name}, batch 1, {backend}, {threads} threads; ops read off each "
            f"network's forward pass (latency.trace); kernels with no table op: {left_out}")
    return _fit_measured(table, models, ops, {k: {"arch": k} for k in archs}, n_fit, seed, backend,
                         threads, kind, network_timing, progress, min_holdout, retest, note, space.chunk,
                         extra={"untabled_kernels": untabled})


def check_covers(predictor: LatencyPredictor, space: LatencySpace, count: int = 24, seed: int = 0,
                 field_name: str = "latency_predictor") -> None:
    """InputError naming `field_name` unless every op of `count` random networks of `space` is in
    the predictor's table and of a group it was fitted on: a predictor for another space, input
    size or class count fails here, before a search, not at its hundredth proposal. (A pruned
    ResNet's channel counts make ops no sampled table holds: its searches measure directly.)"""
    from latency.trace import ops_of_network

    with torch_threads(1):
        for arch in space.sample(count, seed):
            ops = ops_of_network(*space.build(arch)).ops
            gaps = predictor.table.missing(ops)
            if gaps:
                raise InputError(field_name, f"its table {predictor.table.path or ''} lacks op {gaps[0]}, which "
                                             f"{space.describe(arch)} of the {space.name} space runs "
                                             f"({len(gaps)} missing); fit a predictor for this space "
                                             f"(benchmarks/latency_predictor.py --space) on the target device.")
            try:
                predictor.predict(ops)
            except InputError as exc:
                raise InputError(field_name, f"{exc.message} ({space.describe(arch)} of {space.name})") from None
