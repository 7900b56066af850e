"""Pareto dominance, non-dominated sorting and parent selection over plain numbers.

Everything here sees only objective values (lists of floats or metric dicts), never models,
so the same helpers serve SpNasS, SpNasP and any other multi-objective strategy. Objectives
are given with a `maximize` flag each; internally every value is turned into a "smaller is
better" number so one dominance test covers all directions.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from spnas.errors import InputError


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


def _as_minimization(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[tuple[float, ...]]:
    if not maximize:
        raise ValueError("maximize must name at least one objective")
    out = []
    for i, p in enumerate(points):
        if len(p) != len(maximize):
            raise ValueError(f"point {i} has {len(p)} values, expected {len(maximize)} (one per objective)")
        row = tuple(-float(v) if m else float(v) for v, m in zip(p, maximize))
        if any(math.isnan(v) for v in row):
            raise ValueError(f"point {i} contains NaN")
        out.append(row)
    return out


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a dominates b (minimization): no worse everywhere and strictly better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """True if point `a` Pareto-dominates point `b` under the given directions."""
    ma, mb = _as_minimization([a, b], maximize)
    return _dominates(ma, mb)


def pareto_front(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices (ascending) of the non-dominated points.

    Identical points do not dominate each other, so duplicates on the front are all kept.
    O(n^2 m): searches here evaluate tens of candidates, not thousands.
    """
    pts = _as_minimization(points, maximize)
    return [i for i, p in enumerate(pts) if not any(_dominates(q, p) for j, q in enumerate(pts) if j != i)]


def pareto_ranks(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Non-dominated sorting rank of each point: 0 for the front, 1 for the front of the rest, ..."""
    pts = _as_minimization(points, maximize)
    ranks = [-1] * len(pts)
    remaining = list(range(len(pts)))
    rank = 0
    while remaining:
        front = [i for i in remaining if not any(_dominates(pts[j], pts[i]) for j in remaining if j != i)]
        for i in front:
            ranks[i] = rank
        remaining = [i for i in remaining if ranks[i] < 0]
        rank += 1
    return ranks


def crowding_distances(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II crowding distance of each point within one set (boundary points get inf).

    Each objective's gap is normalized by that objective's range, so params (millions) and
    mAP (0..1) weigh alike; an objective with zero range contributes nothing.
    """
    n = len(points)
    if n == 0:
        return []
    dist = [0.0] * n
    for m in range(len(points[0])):
        order = sorted(range(n), key=lambda i: (points[i][m], i))
        lo, hi = points[order[0]][m], points[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = math.inf
        if hi == lo:
            continue
        for left, mid, right in zip(order, order[1:], order[2:]):
            dist[mid] += (points[right][m] - points[left][m]) / (hi - lo)
    return dist


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
    metrics: Mapping[int, Mapping[str, Any] | None], ids: Sequence[int], key: str, maximize: bool
) -> int:
    """The id among `ids` best on one objective (lowest id on ties); ValueError if `ids` is empty."""
    if not ids:
        raise ValueError("no successful result has been told yet")
    sign = -1.0 if maximize else 1.0
    return min(ids, key=lambda i: (sign * float(metrics[i][key]), i))  # type: ignore[index]
