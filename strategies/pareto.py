"""Pareto dominance, non-dominated sorting, crowding distance, hypervolume and parent
selection over plain numbers.

Everything here sees only objective values (lists of floats or metric dicts), never models,
so the same helpers serve SpNasS, SpNasP and any other multi-objective strategy. Objectives
are given with a `maximize` flag each; internally every value is turned into a "smaller is
better" number (pymoo's convention) and the sorting, crowding and hypervolume work is done by
pymoo itself, so this module only adapts directions, validates input and breaks ties
deterministically.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pymoo.indicators.hv import HV
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
from pymoo.util.dominator import Dominator
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting, find_non_dominated

from core.errors import InputError


def check_objectives(
    objective_keys: Sequence[str], maximize: Sequence[bool]
) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """Validate an objective specification and return it as tuples (hashable, JSON-friendly).

    Raises InputError naming `objective_keys` or `maximize`.
    """
    if isinstance(objective_keys, str) or not isinstance(objective_keys, Sequence):
        raise InputError("objective_keys", "must be a list of metric names, e.g. ['mAP', 'params']")
    keys = tuple(objective_keys)
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise InputError("objective_keys", f"must be a non-empty list of metric names, got {list(keys)!r}")
    if len(set(keys)) != len(keys):
        raise InputError("objective_keys", f"must not repeat a name, got {list(keys)!r}")
    if isinstance(maximize, (str, bool)) or not isinstance(maximize, Sequence):
        raise InputError("maximize", "must be a list of true/false, one per objective key")
    flags = tuple(maximize)
    if len(flags) != len(keys):
        raise InputError("maximize", f"needs one true/false per objective key ({len(keys)}), got {len(flags)}")
    if not all(isinstance(f, bool) for f in flags):
        raise InputError("maximize", f"entries must be true or false, got {list(flags)!r}")
    return keys, flags


def objective_vector(metrics: Mapping[str, Any], objective_keys: Sequence[str]) -> list[float]:
    """The objective values of one metrics dict, in key order; ValueError if missing or not finite."""
    missing = [k for k in objective_keys if k not in metrics]
    if missing:
        raise ValueError(f"metrics lack objective key(s) {missing}; got keys {sorted(metrics)}")
    values = []
    for k in objective_keys:
        try:
            v = float(metrics[k])
        except (TypeError, ValueError):
            raise ValueError(f"metric {k!r} must be a number, got {metrics[k]!r}") from None
        # NaN makes dominance meaningless; a diverged candidate should be reported as failed.
        if math.isnan(v):
            raise ValueError(f"metric {k!r} is NaN; report a failed candidate with metrics=None")
        values.append(v)
    return values


def clean_metrics(metrics: Mapping[str, Any], objective_keys: Sequence[str]) -> dict[str, Any]:
    """Validated copy of a metrics dict with numpy/torch scalars turned into Python numbers,
    so a strategy's state_dict() stays JSON-serialisable whatever the evaluator returns."""
    objective_vector(metrics, objective_keys)  # raises ValueError on missing / non-numeric / NaN
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if hasattr(v, "item") and getattr(v, "shape", None) == ():
            v = v.item()
        out[str(k)] = v
    return out


def _as_minimization(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> np.ndarray:
    """(n, m) float array in which smaller is better everywhere; ValueError on bad shapes or NaN."""
    if not maximize:
        raise ValueError("maximize must name at least one objective")
    sign = np.array([-1.0 if m else 1.0 for m in maximize])
    rows = []
    for i, p in enumerate(points):
        if len(p) != len(maximize):
            raise ValueError(f"point {i} has {len(p)} values, expected {len(maximize)} (one per objective)")
        row = [float(v) for v in p]
        if any(math.isnan(v) for v in row):
            raise ValueError(f"point {i} contains NaN")
        rows.append(row)
    # reshape keeps an empty input 2-D, which pymoo's sorters expect
    return np.asarray(rows, dtype=float).reshape(len(rows), len(maximize)) * sign


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """True if point `a` Pareto-dominates point `b` under the given directions
    (no worse everywhere, strictly better somewhere)."""
    ma, mb = _as_minimization([a, b], maximize)
    return Dominator.get_relation(ma, mb) == 1


def pareto_ranks(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Non-dominated sorting rank of each point: 0 for the front, 1 for the front of the rest, ...

    pymoo's NonDominatedSorting (moocore's Pareto ranking underneath) gives identical points
    the same rank, since neither dominates the other; tests/test_strategies.py checks this
    against a brute-force reference.
    """
    pts = _as_minimization(points, maximize)
    if len(pts) == 0:
        return []
    _, ranks = NonDominatedSorting().do(pts, return_rank=True)
    return [int(r) for r in ranks]


def pareto_front(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices (ascending) of the non-dominated points.

    Identical points do not dominate each other, so duplicates on the front are all kept
    (pymoo's find_non_dominated keeps weakly non-dominated points, i.e. such ties).
    """
    return [int(i) for i in find_non_dominated(_as_minimization(points, maximize))]


def crowding_distances(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II crowding distance of each point within one set, by pymoo's calc_crowding_distance.

    Points are taken as given (direction does not matter: the distance is symmetric). Each
    objective's gap is normalized by that objective's range, so params (millions) and mAP
    (0..1) weigh alike, and pymoo averages over objectives. The extreme points of every
    objective with a non-zero range get inf (among tied extremes, the lowest index at the
    minimum and the highest at the maximum: pymoo's stable sort); an objective with zero
    range contributes nothing, not even inf. Sets of one or two points are all boundary: inf,
    as in pymoo's NSGA-II survival.
    """
    n = len(points)
    if n == 0:
        return []
    if n <= 2:
        # calc_crowding_distance alone would give 0 to a single point (0-range -> NaN -> 0)
        return [math.inf] * n
    F = np.asarray([[float(v) for v in p] for p in points], dtype=float)
    return [float(d) for d in calc_crowding_distance(F)]


def hypervolume(
    points: Sequence[Sequence[float]], maximize: Sequence[bool], ref_point: Sequence[float]
) -> float:
    """Hypervolume dominated by `points` and bounded by `ref_point` (pymoo's HV indicator).

    Both the points and the reference point are in the user's directions. The reference point
    is the worst corner that still counts: for a maximized objective a lower bound (e.g. mAP
    0.0), for a minimized one an upper bound (e.g. the largest acceptable params). Only points
    strictly better than the reference in every objective contribute; an empty or fully
    out-of-bounds set has hypervolume 0. No normalization: the value is in the product of the
    objectives' units. ValueError on NaN, a non-finite reference point, a wrong length, or a
    contributing point with an infinite value (its volume would be infinite).
    """
    if len(ref_point) != len(maximize):
        raise ValueError(f"ref_point has {len(ref_point)} values, expected {len(maximize)} (one per objective)")
    ref = _as_minimization([ref_point], maximize)[0]
    if not np.all(np.isfinite(ref)):
        raise ValueError(f"ref_point must be finite, got {list(ref_point)!r}")
    pts = _as_minimization(points, maximize)
    inside = pts[np.all(pts < ref, axis=1)]
    if len(inside) == 0:
        return 0.0
    if not np.all(np.isfinite(inside)):
        raise ValueError("a point better than ref_point has an infinite value: unbounded hypervolume")
    return float(HV(ref_point=ref)(inside))


def common_reference(point_sets: Sequence[Sequence[Sequence[float]]], maximize: Sequence[bool],
                     margin: float = 0.1) -> list[float]:
    """One reference point for comparing several point sets' hypervolumes: per objective, the
    worst value over every set, moved `margin` of that objective's range further out (so the
    worst points still count). ValueError when no set holds a point."""
    pts = [list(map(float, p)) for points in point_sets for p in points]
    if not pts:
        raise ValueError("no points to place a reference point by")
    ref = []
    for j, up in enumerate(maximize):
        column = [p[j] for p in pts]
        spread = (max(column) - min(column)) or abs(column[0]) or 1.0
        ref.append(min(column) - margin * spread if up else max(column) + margin * spread)
    return ref


def select_parents(
    records: Sequence[Mapping[str, Any]],
    objective_keys: Sequence[str],
    maximize: Sequence[bool],
    k: int,
) -> list[int]:
    """Pick up to k record indices, best first: whole Pareto ranks while they fit, then
    the rank that overflows is cut by crowding distance (keeps the front's extremes and
    spread), ties broken by the first objective, then by index — fully deterministic.

    Records are metric dicts holding every objective key.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    keys, flags = check_objectives(objective_keys, maximize)
    points = [objective_vector(r, keys) for r in records]
    if not points:
        return []
    ranks = pareto_ranks(points, flags)
    sign0 = -1.0 if flags[0] else 1.0  # sort key: smaller is better on the first objective

    selected: list[int] = []
    for rank in range(max(ranks) + 1):
        members = [i for i, r in enumerate(ranks) if r == rank]
        room = k - len(selected)
        if len(members) <= room:
            members.sort(key=lambda i: (sign0 * points[i][0], i))
            selected.extend(members)
        else:
            mins = _as_minimization([points[i] for i in members], flags)
            crowd = crowding_distances(mins)
            order = sorted(range(len(members)), key=lambda j: (-crowd[j], sign0 * points[members[j]][0], members[j]))
            selected.extend(members[j] for j in order[:room])
        if len(selected) >= k:
            break
    return selected


def best_on_objective(
    metrics: Mapping[int, Mapping[str, Any] | None], ids: Sequence[int], keys: Sequence[str],
    maximize: Sequence[bool],
) -> int:
    """The id among `ids` best on the first objective; ties broken by the next objectives in
    turn, then by the lowest id, so the pick is never dominated by another of `ids` (a tie at
    accuracy 1.0 goes to the smaller network). ValueError if `ids` is empty."""
    if not ids:
        raise ValueError("no successful result has been told yet")
    signs = [-1.0 if up else 1.0 for up in maximize]
    return min(ids, key=lambda i: (*(s * float(metrics[i][k]) for s, k in zip(signs, keys)), i))  # type: ignore[index]
