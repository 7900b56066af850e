"""SANAS: PaddleSlim's simulated-annealing controller over integer tokens, as ask/tell.

An architecture is a token list; token i takes a value in 0..range_table[i]-1 (BlazeFace-NAS,
seed 000: 9 tokens, ranges [7, 9, 12, 12, 6, 6, 6, 6, 2], start [2, 1, 3, 8, 2, 1, 2, 1, 1]).

* Step 0 evaluates `init_tokens` (they must satisfy the constraint).
* Steps 1..`random_starts` (default 0, as PaddleSlim) draw every token uniformly within the
  window instead, and only a better reward is accepted, so the walk goes on from the best of
  the init tokens and those draws (a hybrid for init tokens that score poorly; at sanas/full's
  12 steps, 3 starts measured no better than none).
* Every later step copies the *current* tokens and sets ONE random position (among those with
  more than one value) to a random *different* value, drawing again when those tokens were
  evaluated before (a departure from PaddleSlim, which may re-train a network it has seen). If
  the caller's constraint (FLOPs or table latency of the tokens) is outside [low, high], that
  neighbour is skipped without evaluation and another is drawn, up to `max_tries` draws per
  step (PaddleSlim's max_try_times); when none of them is feasible the search stalls.
* After tell(reward): the candidate becomes the current one if reward > current reward, else
  with probability exp((reward - current) / T) where T = temperature(step) =
  T0 * reduce_rate ** step.

Step indexing: step k is the k-th *evaluated* candidate (= its id; the init tokens are step 0,
skipped neighbours do not count, failed candidates do). Candidate k is judged with
temperature(k), as PaddleSlim's SANAS passes its iteration counter (starting at 0) to the
controller's update. Step 0 is always accepted: there is no current reward to compare with.
A failed candidate (tell None) is rejected and leaves the current tokens unchanged.

Pure Python: no torch, Prefect or MLflow; all randomness from one seeded random.Random whose
state is part of state_dict().
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import InputError

from .ask_tell import AskTellSearch

ConstraintOf = Callable[[list[int]], float]

MAX_TRIES = 300  # PaddleSlim SAController max_try_times
SEED_REDUCE_RATE, SEED_STEPS = 0.85, 300  # PaddleSlim BlazeFace-NAS: T falls by 0.85 per step over 300 steps


def stretched_reduce_rate(search_steps: int) -> float:
    """The seed's cooling stretched over `search_steps`: 0.85 ** (300 / search_steps), so that
    step k of a shorter (or longer) search has the temperature the seed reaches at step
    k * 300 / search_steps. At 300 steps it is the seed's 0.85. Why: with rewards in [0, 1]
    (AP, accuracy) and T0 10.24, the seed's schedule accepts almost any worse candidate for its
    first ~40 steps (T > 0.01) and is greedy after; kept at 0.85 over 12 steps, T never falls
    below 1.7, so every step is accepted and the search is a random walk from the init tokens."""
    if isinstance(search_steps, bool) or not isinstance(search_steps, int) or search_steps < 1:
        raise InputError("search.search_steps", f"must be an integer >= 1, got {search_steps!r}")
    return SEED_REDUCE_RATE ** (SEED_STEPS / search_steps)


@dataclass
class SACandidate:
    """One evaluated step: `id` is the step index; `accepted` is None until told."""

    id: int
    tokens: list[int]
    constraint: float | None      # constraint_of(tokens), None without a constraint
    temperature: float            # T used to judge this candidate
    skipped_before: int = 0       # infeasible neighbours drawn (and skipped) before this one
    accepted: bool | None = None

    @property
    def step(self) -> int:
        return self.id

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "tokens": list(self.tokens), "constraint": self.constraint,
                "temperature": self.temperature, "skipped_before": self.skipped_before, "accepted": self.accepted}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SACandidate:
        accepted = data.get("accepted")
        return cls(id=int(data["id"]), tokens=[int(t) for t in data["tokens"]], constraint=data.get("constraint"),
                   temperature=float(data["temperature"]), skipped_before=int(data.get("skipped_before", 0)),
                   accepted=None if accepted is None else bool(accepted))


def accept_probability(reward: float, current_reward: float | None, temperature: float) -> float:
    """Metropolis rule: 1 for no current reward or a better one, else exp((reward - current) / T)."""
    if current_reward is None or reward > current_reward:
        return 1.0
    if temperature <= 0.0:  # T0 * rate**step underflows to 0 after thousands of steps
        return 1.0 if reward == current_reward else 0.0
    return math.exp((reward - current_reward) / temperature)


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(name, f"must be a finite number, got {value!r}")
    return float(value)


class SASearch(AskTellSearch[SACandidate]):
    """Simulated annealing over tokens (maximize "reward"), one candidate at a time.

    >>> s = SASearch([3, 3], [0, 0], seed=0, search_steps=5)
    >>> while not s.done:
    ...     for c in s.ask():
    ...         s.tell(c.id, {"reward": float(sum(c.tokens))})
    """

    _STRATEGY = "SASearch"

    def __init__(
        self,
        range_table: Sequence[int],
        init_tokens: Sequence[int],
        seed: int = 0,
        *,
        init_temperature: float = 10.24,
        reduce_rate: float = 0.85,
        search_steps: int = 300,
        constraint_of: ConstraintOf | None = None,
        low: float | None = None,
        high: float | None = None,
        max_tries: int = MAX_TRIES,
        proposal: str = "neighbour",
        random_starts: int = 0,
    ) -> None:
        """`proposal`: "neighbour" (SANAS: one token of the current tokens changed) or "uniform"
        (every token drawn uniformly, within the window: the random control). `random_starts`:
        uniform draws before the first neighbour (greedy acceptance), fewer than search_steps."""
        if proposal not in ("neighbour", "uniform"):
            raise InputError("proposal", f"must be 'neighbour' or 'uniform', got {proposal!r}")
        self.proposal = proposal
        self.range_table = self._check_range_table(range_table)
        self.init_tokens = self._check_tokens(init_tokens, self.range_table)
        self.init_temperature = _finite("search.init_temperature", init_temperature)
        if self.init_temperature <= 0:
            raise InputError("search.init_temperature", f"must be > 0, got {init_temperature!r}")
        self.reduce_rate = _finite("search.reduce_rate", reduce_rate)
        if not 0.0 < self.reduce_rate < 1.0:
            raise InputError("search.reduce_rate", f"must be strictly between 0 and 1, got {reduce_rate!r}")
        for name, value, minimum in (("search.search_steps", search_steps, 1), ("search.max_tries", max_tries, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InputError(name, f"must be an integer >= {minimum}, got {value!r}")
        self.search_steps = search_steps
        self.max_tries = max_tries
        if isinstance(random_starts, bool) or not isinstance(random_starts, int) \
                or not 0 <= random_starts < search_steps:
            raise InputError("search.random_starts", f"must be an integer in 0..search_steps - 1 "
                                                     f"({search_steps - 1}), got {random_starts!r}")
        self.random_starts = random_starts
        self.low = None if low is None else _finite("constraint.min", low)
        self.high = None if high is None else _finite("constraint.max", high)
        if self.low is not None and self.high is not None and self.low > self.high:
            raise InputError("constraint.min", f"must not exceed constraint.max ({high}), got {low}")
        if constraint_of is not None and not callable(constraint_of):
            raise InputError("constraint", "must be a function tokens -> FLOPs or latency, or None")
        if constraint_of is None and (low is not None or high is not None):
            raise InputError("constraint", "min/max need a constraint function (FLOPs or latency of the tokens)")
        self.constraint_of = constraint_of
        super().__init__(seed)
        value = self._constraint(self.init_tokens)
        problem = self._outside(value)
        if problem is not None:
            raise InputError(problem, f"the init tokens {self.init_tokens} have a constraint value of {value}, "
                                      f"outside [{self.low}, {self.high}]; widen the range or pick other init tokens")
        self._init_constraint = value
        # positions that can change at all: a range of 1 (e.g. the kernel token in latency mode) is fixed
        self._mutable = [i for i, r in enumerate(self.range_table) if r > 1]
        self._current_tokens = list(self.init_tokens)
        self._current_reward: float | None = None
        self._best_tokens: list[int] | None = None
        self._best_reward: float | None = None
        self._skipped = 0

    @staticmethod
    def _check_range_table(range_table: Sequence[int]) -> list[int]:
        field = "search.range_table"
        if isinstance(range_table, str) or not isinstance(range_table, Sequence) or not range_table:
            raise InputError(field, f"must be a non-empty list of positive integers, got {range_table!r}")
        if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in range_table):
            raise InputError(field, f"entries must be integers >= 1 (values per token), got {list(range_table)!r}")
        if all(r == 1 for r in range_table):
            raise InputError(field, "needs at least one token with 2 or more values, else there is nothing to search")
        return list(range_table)

    @staticmethod
    def _check_tokens(tokens: Sequence[int], range_table: list[int]) -> list[int]:
        field = "search.init_tokens"
        if isinstance(tokens, str) or not isinstance(tokens, Sequence) or len(tokens) != len(range_table):
            raise InputError(field, f"must be a list of {len(range_table)} integers (one per range_table entry), "
                                    f"got {tokens!r}")
        for i, (t, r) in enumerate(zip(tokens, range_table)):
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < r:
                raise InputError(field, f"token {i} must be an integer in 0..{r - 1}, got {t!r}")
        return list(tokens)

    def _constraint(self, tokens: list[int]) -> float | None:
        if self.constraint_of is None:
            return None
        value = self.constraint_of(list(tokens))
        if hasattr(value, "item") and getattr(value, "shape", None) == ():
            value = value.item()  # numpy/torch scalar: keep the state plain JSON
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"constraint_of({tokens}) must return a number, got {value!r}")
        return float(value)

    def _outside(self, value: float | None) -> str | None:
        """The violated bound's field name, or None when within [low, high]."""
        if value is None:
            return None
        if self.low is not None and value < self.low:
            return "constraint.min"
        if self.high is not None and value > self.high:
            return "constraint.max"
        return None

    # ---- AskTellSearch hooks

    def _objectives(self) -> tuple[tuple[str, ...], tuple[bool, ...]]:
        return ("reward",), (True,)

    def _budget(self) -> int:
        return self.search_steps

    def _propose(self, n: int) -> list[SACandidate]:
        if n <= 0 or self.pending_ids():
            return []  # one at a time: the next neighbour depends on this one's verdict
        step = len(self._candidates)
        if step == 0:
            return [self._add(list(self.init_tokens), self._init_constraint, 0)]
        skipped = 0
        seen = {tuple(c.tokens) for c in self._candidates}
        for _ in range(self.max_tries):
            if self.proposal == "uniform" or self._starting(step):
                tokens = [self._rng.randrange(r) for r in self.range_table]
                if tuple(tokens) in seen:
                    continue
            else:
                tokens = list(self._current_tokens)
                pos = self._mutable[self._rng.randrange(len(self._mutable))]
                value = self._rng.randrange(self.range_table[pos] - 1)
                tokens[pos] = value + (value >= tokens[pos])  # uniform over the other values
                if tuple(tokens) in seen:
                    continue  # evaluated already: another draw (a 12-step search re-trained one net 3 times)
            constraint = self._constraint(tokens)
            if self._outside(constraint) is None:
                return [self._add(tokens, constraint, skipped)]
            skipped += 1
            self._skipped += 1
        return []  # no feasible neighbour in max_tries draws: the base marks the search stalled

    def _add(self, tokens: list[int], constraint: float | None, skipped: int) -> SACandidate:
        step = len(self._candidates)
        cand = SACandidate(id=step, tokens=tokens, constraint=constraint, temperature=self.temperature(step),
                           skipped_before=skipped)
        self._candidates.append(cand)
        return cand

    # ---- ask / tell

    def ask(self, n: int = 1) -> list[SACandidate]:
        """At most one candidate (whatever n), [] while one is pending or when done."""
        return super().ask(min(n, 1) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else n)

    def tell(self, candidate_id: int, metrics: Mapping[str, Any] | None) -> None:
        """Report {"reward": r, ...} or None if the candidate failed; applies the acceptance rule."""
        if metrics is not None and isinstance(metrics, Mapping) and "reward" in metrics:
            try:
                reward = float(metrics["reward"])
            except (TypeError, ValueError):
                reward = math.nan  # let the base raise its message about non-numbers
            if math.isinf(reward):
                raise ValueError(f"reward must be finite, got {metrics['reward']!r}")
        super().tell(candidate_id, metrics)
        cand = self._candidates[candidate_id]
        told = self._metrics[candidate_id]
        if told is None:
            cand.accepted = False
            return
        reward = float(told["reward"])
        if self._starting(candidate_id):  # a random start: kept only if better, so the walk begins at the best
            cand.accepted = self._current_reward is None or reward > self._current_reward
        else:
            p = accept_probability(reward, self._current_reward, cand.temperature)
            # Draw only when the rule is random (a worse reward); a better or equal one is always kept.
            cand.accepted = p >= 1.0 or self._rng.random() < p
        if cand.accepted:
            self._current_tokens, self._current_reward = list(cand.tokens), reward
        if self._best_reward is None or reward > self._best_reward:
            self._best_tokens, self._best_reward = list(cand.tokens), reward

    # ---- queries

    def _starting(self, step: int) -> bool:
        """Whether step `step` is one of the random starts (uniform draw, greedy acceptance)."""
        return self.proposal == "neighbour" and 1 <= step <= self.random_starts

    def proposal_of(self, step: int) -> str:
        """How step `step`'s tokens were drawn: "init", "random start", "neighbour" or "uniform"
        (the random control's)."""
        if step == 0:
            return "init"
        return "random start" if self._starting(step) else self.proposal

    def temperature(self, step: int) -> float:
        """T0 * reduce_rate ** step: the temperature candidate `step` is judged with."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        return self.init_temperature * self.reduce_rate ** step

    @property
    def current(self) -> list[int]:
        """The tokens the next neighbour is drawn around (init tokens until one is accepted)."""
        return list(self._current_tokens)

    @property
    def current_reward(self) -> float | None:
        return self._current_reward

    @property
    def best_tokens(self) -> list[int] | None:
        return None if self._best_tokens is None else list(self._best_tokens)

    @property
    def best_reward(self) -> float | None:
        return self._best_reward

    @property
    def skipped(self) -> int:
        """Neighbours drawn outside the constraint and skipped without evaluation."""
        return self._skipped

    @property
    def accepted_count(self) -> int:
        return sum(c.accepted is True for c in self._candidates)

    @property
    def rejected_count(self) -> int:
        """Successful candidates not accepted (failed ones are counted by `failed_count`)."""
        return sum(c.accepted is False and self._metrics.get(c.id) is not None for c in self._candidates)

    @property
    def failed_count(self) -> int:
        return sum(m is None for m in self._metrics.values())

    # ---- persistence

    def _settings(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "range_table": list(self.range_table), "init_tokens": list(self.init_tokens),
            "init_temperature": self.init_temperature, "reduce_rate": self.reduce_rate,
            "search_steps": self.search_steps, "max_tries": self.max_tries,
            "constraint": self.constraint_of is not None, "low": self.low, "high": self.high,
            "proposal": self.proposal, "random_starts": self.random_starts,
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON: settings, candidates (with verdicts), told metrics, current and best
        tokens/rewards, the skip count and the RNG. Not constraint_of."""
        return {
            "strategy": self._STRATEGY,
            "version": 1,
            "settings": self._settings(),
            "current_tokens": list(self._current_tokens),
            "current_reward": self._current_reward,
            "best_tokens": self.best_tokens,
            "best_reward": self._best_reward,
            "skipped": self._skipped,
            **self._progress_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict into this freshly built, identically configured search."""
        self._check_settings(state, self._settings())
        self._load_progress(state, SACandidate.from_dict)
        if self._candidates and self._candidates[0].constraint != self._init_constraint:
            raise ValueError(f"constraint_of differs from the saved search's: the init tokens were saved with "
                             f"{self._candidates[0].constraint}, constraint_of gives {self._init_constraint}")
        self._current_tokens = [int(t) for t in state["current_tokens"]]
        self._current_reward = None if state["current_reward"] is None else float(state["current_reward"])
        self._best_tokens = None if state["best_tokens"] is None else [int(t) for t in state["best_tokens"]]
        self._best_reward = None if state["best_reward"] is None else float(state["best_reward"])
        self._skipped = int(state["skipped"])


__all__ = ["MAX_TRIES", "ConstraintOf", "SACandidate", "SASearch", "accept_probability"]
