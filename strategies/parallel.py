"""SpNasP: the parallel-level search of SP-NAS.

On top of a fixed serial backbone with L stages, the neck code is a list over stages:
code[i] = how many extra parallel sub-networks K stage i gets (e.g. [0, 1, 2, 3]). The
search is resource-constrained random sampling: a sample starts from all zeros and adds m
sub-networks one at a time, each on a stage drawn with probability inversely proportional
to that sub-network's extra cost (FLOPs), so cheap additions are explored more often than
expensive ones.

Same ask/tell interface and persistence as strategies.serial.SerialSearch; pure Python.
"""
from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spnas.errors import InputError

from .pareto import best_on_objective, check_objectives, clean_metrics, objective_vector, pareto_front
from .serial import rng_state_from_json, rng_state_to_json

# Rejection-sampling tries per requested candidate before yielding fewer: the space can be
# small (4 stages, <= 3 per stage, <= 4 additions: 65 codes) and skewed by the cost weights.
MAX_ATTEMPTS = 200


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(name, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _check_costs(extra_cost: object, expected_len: int | None = None) -> list[float]:
    if isinstance(extra_cost, (str, bytes)) or not isinstance(extra_cost, Sequence) or not extra_cost:
        raise InputError("extra_cost", "must be a non-empty list of positive numbers, one per stage")
    costs = []
    for c in extra_cost:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
            raise InputError("extra_cost",
                             f"entries must be finite positive numbers (FLOPs of one sub-network), got {c!r}")
        costs.append(float(c))
    if expected_len is not None and len(costs) != expected_len:
        raise InputError("extra_cost", f"needs one cost per stage ({expected_len}), got {len(costs)}")
    return costs


def sampling_probabilities(extra_cost: Sequence[float]) -> list[float]:
    """Probability of each stage receiving an addition when none is full: 1/cost, normalized."""
    inv = [1.0 / c for c in _check_costs(extra_cost)]
    total = sum(inv)
    return [w / total for w in inv]


def sample_neck_code(
    rng: random.Random, extra_cost: Sequence[float], max_per_stage: int, max_additions: int
) -> list[int]:
    """One neck code: m ~ U{1..max_additions} additions, each on a non-full stage drawn with
    weight 1/extra_cost (weights renormalized over the stages that still have room)."""
    costs = _check_costs(extra_cost)
    _check_int("max_per_stage", max_per_stage, 1)
    _check_int("max_additions", max_additions, 1)
    if max_additions > len(costs) * max_per_stage:
        raise InputError("max_additions", f"must be at most num_stages * max_per_stage = {len(costs) * max_per_stage}")
    code = [0] * len(costs)
    for _ in range(rng.randint(1, max_additions)):
        open_stages = [i for i, k in enumerate(code) if k < max_per_stage]
        weights = [1.0 / costs[i] for i in open_stages]
        # One uniform draw against the cumulative weights (rng.choices would do the same,
        # but spelling it out keeps the RNG consumption obvious for resumption).
        r = rng.random() * sum(weights)
        acc = 0.0
        pick = open_stages[-1]  # guards against float round-off at the top end
        for i, w in zip(open_stages, weights):
            acc += w
            if r < acc:
                pick = i
                break
        code[pick] += 1
    return code


def count_neck_codes(num_stages: int, max_per_stage: int, max_additions: int) -> int:
    """How many distinct codes sampling can produce (1 <= sum <= max_additions, each <= max_per_stage)."""
    ways = [1] + [0] * max_additions  # ways[s]: codes over the stages so far summing to s
    for _ in range(num_stages):
        ways = [sum(ways[s - k] for k in range(0, min(max_per_stage, s) + 1)) for s in range(max_additions + 1)]
    return sum(ways[1:])


@dataclass
class ParallelCandidate:
    """One proposed neck: extra sub-networks per stage of the serial backbone."""

    id: int
    code: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "code": list(self.code)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParallelCandidate:
        return cls(id=int(data["id"]), code=[int(k) for k in data["code"]])


class ParallelSearch:
    """SpNasP as ask/tell: random, cost-weighted neck codes, Pareto front over the results."""

    def __init__(
        self,
        num_stages: int,
        extra_cost: Sequence[float],
        max_sample: int,
        seed: int,
        max_per_stage: int = 3,
        max_additions: int = 4,
        objective_keys: Sequence[str] = ("mAP", "macs"),
        maximize: Sequence[bool] = (True, False),
    ) -> None:
        self.num_stages = _check_int("num_stages", num_stages, 1)
        self.extra_cost = _check_costs(extra_cost, num_stages)
        self.max_sample = _check_int("max_sample", max_sample, 1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError("seed", f"must be an integer, got {seed!r}")
        self.seed = seed
        self.max_per_stage = _check_int("max_per_stage", max_per_stage, 1)
        self.max_additions = _check_int("max_additions", max_additions, 1)
        if max_additions > num_stages * max_per_stage:
            raise InputError("max_additions", f"must be at most num_stages * max_per_stage = "
                                              f"{num_stages * max_per_stage}, got {max_additions}")
        self.objective_keys, self.maximize = check_objectives(objective_keys, maximize)
        # A budget larger than the space cannot be met without duplicates; stop at the space.
        self.space_size = count_neck_codes(num_stages, max_per_stage, max_additions)
        self._rng = random.Random(seed)
        self._candidates: list[ParallelCandidate] = []
        self._metrics: dict[int, dict[str, Any] | None] = {}
        self._stalled = False

    @property
    def budget(self) -> int:
        return min(self.max_sample, self.space_size)

    def ask(self, n: int = 1) -> list[ParallelCandidate]:
        """Up to n new, never-seen neck codes (fewer when the budget or the space runs out)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        n = min(n, self.budget - len(self._candidates))
        seen = {tuple(c.code) for c in self._candidates}
        out: list[ParallelCandidate] = []
        for _ in range(n):
            for _attempt in range(MAX_ATTEMPTS):
                code = sample_neck_code(self._rng, self.extra_cost, self.max_per_stage, self.max_additions)
                if tuple(code) not in seen:
                    seen.add(tuple(code))
                    cand = ParallelCandidate(id=len(self._candidates), code=code)
                    self._candidates.append(cand)
                    out.append(cand)
                    break
            else:
                break  # unseen codes are very unlikely under these weights; yield what we have
        if not out and n > 0 and not self.pending_ids():
            self._stalled = True
        return out

    def tell(self, candidate_id: int, metrics: Mapping[str, Any] | None) -> None:
        """Report metrics holding every objective key, or None for a failed candidate."""
        if isinstance(candidate_id, bool) or not isinstance(candidate_id, int) \
                or not 0 <= candidate_id < len(self._candidates):
            raise ValueError(f"unknown candidate id {candidate_id!r}")
        if candidate_id in self._metrics:
            raise ValueError(f"candidate {candidate_id} was already told")
        if metrics is not None and not isinstance(metrics, Mapping):
            raise ValueError(f"metrics must be a dict or None, got {type(metrics).__name__}")
        self._metrics[candidate_id] = None if metrics is None else clean_metrics(metrics, self.objective_keys)

    @property
    def done(self) -> bool:
        if self.pending_ids():
            return False
        return len(self._candidates) >= self.budget or self._stalled

    @property
    def candidates(self) -> list[ParallelCandidate]:
        return list(self._candidates)

    def pending_ids(self) -> list[int]:
        return [c.id for c in self._candidates if c.id not in self._metrics]

    @property
    def history(self) -> list[tuple[ParallelCandidate, dict[str, Any] | None]]:
        """Told candidates in id order with their metrics (None for failed ones)."""
        return [(c, self._metrics[c.id]) for c in self._candidates if c.id in self._metrics]

    def pareto_ids(self) -> list[int]:
        told = [(cid, m) for cid, m in sorted(self._metrics.items()) if m is not None]
        points = [objective_vector(m, self.objective_keys) for _, m in told]
        return [told[i][0] for i in pareto_front(points, self.maximize)] if told else []

    def best(self) -> ParallelCandidate:
        """The front member best on the first objective (lowest id on ties)."""
        best_id = best_on_objective(self._metrics, self.pareto_ids(), self.objective_keys[0], self.maximize[0])
        return self._candidates[best_id]

    def _settings(self) -> dict[str, Any]:
        return {
            "num_stages": self.num_stages, "extra_cost": list(self.extra_cost), "max_sample": self.max_sample,
            "seed": self.seed, "max_per_stage": self.max_per_stage, "max_additions": self.max_additions,
            "objective_keys": list(self.objective_keys), "maximize": list(self.maximize),
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot including the RNG, so a resumed search continues identically."""
        return {
            "strategy": "ParallelSearch",
            "version": 1,
            "settings": self._settings(),
            "candidates": [c.to_dict() for c in self._candidates],
            "metrics": [[cid, m] for cid, m in sorted(self._metrics.items())],
            "stalled": self._stalled,
            "rng": rng_state_to_json(self._rng),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("strategy") != "ParallelSearch":
            raise ValueError(f"not a ParallelSearch state (strategy={state.get('strategy')!r})")
        if dict(state["settings"]) != self._settings():
            raise ValueError("state was saved by a search with different settings; "
                             "use ParallelSearch.from_state_dict(state) to rebuild that search")
        candidates = [ParallelCandidate.from_dict(c) for c in state["candidates"]]
        if [c.id for c in candidates] != list(range(len(candidates))):
            raise ValueError("state candidates must have ids 0..n-1 in order")
        self._candidates = candidates
        self._metrics = {int(cid): (None if m is None else dict(m)) for cid, m in state["metrics"]}
        self._stalled = bool(state["stalled"])
        self._rng.setstate(rng_state_from_json(state["rng"]))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ParallelSearch:
        search = cls(**state["settings"])
        search.load_state_dict(state)
        return search


__all__ = ["ParallelCandidate", "ParallelSearch", "count_neck_codes", "sample_neck_code", "sampling_probabilities"]
