"""SpNasP: the parallel-level search of SP-NAS.

On top of a fixed serial backbone with L stages, the neck code is a list over stages:
code[i] = how many extra parallel sub-networks K stage i gets (e.g. [0, 1, 2, 3]). The
search is resource-constrained random sampling: a sample starts from all zeros and adds m
sub-networks one at a time, each on a stage drawn with probability inversely proportional
to that sub-network's extra cost (FLOPs), so cheap additions are explored more often than
expensive ones.

Same ask/tell interface and persistence as strategies.serial.SerialSearch (both build on
strategies.ask_tell.AskTellSearch); pure Python.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import InputError

from .ask_tell import AskTellSearch
from .pareto import check_objectives

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


class ParallelSearch(AskTellSearch[ParallelCandidate]):
    """SpNasP as ask/tell: random, cost-weighted neck codes, Pareto front over the results."""

    _STRATEGY = "ParallelSearch"

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
        include_plain: bool = False,
        fits: Callable[[list[int]], bool] | None = None,
    ) -> None:
        """`fits(neck_code)`: whether a neck is within the size limits; sampled necks that are not
        are skipped before training (the plain candidate 0 is always evaluated)."""
        self.num_stages = _check_int("num_stages", num_stages, 1)
        self.extra_cost = _check_costs(extra_cost, num_stages)
        self.max_sample = _check_int("max_sample", max_sample, 0 if include_plain else 1)
        super().__init__(seed, fits)
        self.max_per_stage = _check_int("max_per_stage", max_per_stage, 1)
        self.max_additions = _check_int("max_additions", max_additions, 1)
        if max_additions > num_stages * max_per_stage:
            raise InputError("max_additions", f"must be at most num_stages * max_per_stage = "
                                              f"{num_stages * max_per_stage}, got {max_additions}")
        self.objective_keys, self.maximize = check_objectives(objective_keys, maximize)
        # Candidate 0 = no extra sub-networks (the plain-FPN twin every sampled neck is compared
        # with); it comes on top of the max_sample sampled codes.
        self.include_plain = bool(include_plain)
        # A budget larger than the space cannot be met without duplicates; stop at the space.
        self.space_size = count_neck_codes(num_stages, max_per_stage, max_additions)

    @property
    def budget(self) -> int:
        return min(self.max_sample, self.space_size) + int(self.include_plain)

    def _objectives(self) -> tuple[tuple[str, ...], tuple[bool, ...]]:
        return self.objective_keys, self.maximize

    def _budget(self) -> int:
        return self.budget

    def _propose(self, n: int) -> list[ParallelCandidate]:
        """Up to n new, never-seen neck codes (fewer when the space runs out)."""
        seen = {tuple(c.code) for c in self._candidates}
        out: list[ParallelCandidate] = []
        if self.include_plain and not self._candidates and n > 0:
            plain = ParallelCandidate(id=0, code=[0] * self.num_stages)
            self._candidates.append(plain)
            out.append(plain)
            seen.add(tuple(plain.code))
        for _ in range(n - len(out)):
            for _attempt in range(MAX_ATTEMPTS):
                code = sample_neck_code(self._rng, self.extra_cost, self.max_per_stage, self.max_additions)
                if tuple(code) not in seen and self._admit(code):
                    seen.add(tuple(code))
                    cand = ParallelCandidate(id=len(self._candidates), code=code)
                    self._candidates.append(cand)
                    out.append(cand)
                    break
            else:
                break  # unseen codes within the limits are very unlikely now; yield what we have
        return out

    def _settings(self) -> dict[str, Any]:
        return {
            "num_stages": self.num_stages, "extra_cost": list(self.extra_cost), "max_sample": self.max_sample,
            "seed": self.seed, "max_per_stage": self.max_per_stage, "max_additions": self.max_additions,
            "objective_keys": list(self.objective_keys), "maximize": list(self.maximize),
            "include_plain": self.include_plain,
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot including the RNG, so a resumed search continues identically."""
        return {"strategy": self._STRATEGY, "version": 1, "settings": self._settings(), **self._progress_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_strategy(state)
        if dict(state["settings"]) != self._settings():
            raise ValueError("state was saved by a search with different settings; "
                             "use ParallelSearch.from_state_dict(state) to rebuild that search")
        self._load_progress(state, ParallelCandidate.from_dict)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> ParallelSearch:
        search = cls(**state["settings"])
        search.load_state_dict(state)
        return search


__all__ = ["ParallelCandidate", "ParallelSearch", "count_neck_codes", "sample_neck_code", "sampling_probabilities"]
