"""Multi-fidelity screening by successive halving, ASHA-style (asynchronous: a candidate is
promoted as soon as it is in the top 1/eta of the candidates that completed its rung so far, so
no rung waits for a full cohort).

Every new candidate trains `min_steps`; rung k's target is min_steps * eta**k, capped, the last
rung being `max_steps`. A promoted candidate continues from its own checkpoint, so its total
training is its highest rung's target. Pure numbers: the search driver
(tasks/orchestration/search.py) keeps the per-rung history and evaluates the promotions.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .pareto import check_objectives, crowding_distances, objective_vector, pareto_ranks


@dataclass(frozen=True)
class Fidelity:
    """Training steps per rung: min_steps, min_steps*eta, ... up to max_steps (the last rung)."""

    min_steps: int
    max_steps: int
    eta: int

    def __post_init__(self) -> None:
        for name in ("min_steps", "max_steps", "eta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"fidelity.{name} must be an integer, got {value!r}")
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"fidelity needs 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if self.eta < 2:
            raise ValueError(f"fidelity.eta must be at least 2, got {self.eta}")

    def rungs(self) -> list[int]:
        """Each rung's step target, ascending; the last is max_steps."""
        targets, steps = [], self.min_steps
        while steps < self.max_steps:
            targets.append(steps)
            steps *= self.eta
        return targets + [self.max_steps]

    @property
    def top(self) -> int:
        """The index of the last rung."""
        return len(self.rungs()) - 1


def ranked(points: Mapping[int, Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Candidate ids best first. One objective: by value. Several: by non-dominated rank (pymoo),
    then crowding distance within the rank, larger first (pymoo's, computed over the rank's members
    in id order so tied extremes resolve the same way every time). Remaining ties: lower id."""
    ids = sorted(points)
    if not ids:
        return []
    if len(maximize) == 1:
        sign = -1.0 if maximize[0] else 1.0
        return sorted(ids, key=lambda i: (sign * float(points[i][0]), i))
    ranks = pareto_ranks([points[i] for i in ids], maximize)
    crowd: dict[int, float] = {}
    for r in set(ranks):
        members = [i for i, rank in zip(ids, ranks) if rank == r]
        crowd.update(zip(members, crowding_distances([points[i] for i in members])))
    rank_of = dict(zip(ids, ranks))
    return sorted(ids, key=lambda i: (rank_of[i], -crowd[i], i))


def promotions(history: Mapping[int, Sequence[Mapping[str, Any]]], keys: Sequence[str], maximize: Sequence[bool],
               eta: int, top: int, promoted: Mapping[int, Collection[int]] | None = None) -> dict[int, list[int]]:
    """Who goes up now: target rung -> ids (best first). `history[cid]` holds the metrics of each
    rung the candidate completed (index = rung); `promoted[k]` the ids already promoted from rung k
    (a candidate that completed rung k+1 counts as promoted without being listed, so a failed
    promotion is the only thing a caller must list). For every rung k below `top`: the best
    floor(n_k / eta) of the n_k candidates that completed rung k, by their rung-k metrics, minus
    those already promoted from it."""
    keys, maximize = check_objectives(keys, maximize)
    if eta < 2:
        raise ValueError(f"eta must be at least 2, got {eta}")
    out: dict[int, list[int]] = {}
    for k in range(top):
        done = {cid: objective_vector(h[k], keys) for cid, h in history.items() if len(h) > k}
        gone = {cid for cid, h in history.items() if len(h) > k + 1} | set((promoted or {}).get(k, ()))
        best = ranked(done, maximize)[:len(done) // eta]
        if up := [cid for cid in best if cid not in gone]:
            out[k + 1] = up
    return out


def total_steps(highest: Mapping[int, int], fidelity: Fidelity) -> int:
    """Training steps spent: each candidate's highest completed rung's target (a promotion trains
    only the increment from its checkpoint). `highest`: id -> rung index."""
    targets = fidelity.rungs()
    return sum(targets[r] for r in highest.values())


__all__ = ["Fidelity", "promotions", "ranked", "total_steps"]
