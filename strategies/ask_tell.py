"""The bookkeeping every ask/tell search shares: proposed candidates, told metrics, the
Pareto front over them, and the progress part of a resumable state_dict.

A subclass only decides *what* to propose (`_propose`), how many in total (`_budget`) and
which objectives count (`_objectives`); everything a caller sees of ask/tell progress then
behaves the same for every strategy. Pure Python: no torch, Prefect or MLflow.
"""
from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from core.errors import InputError

from .pareto import best_on_objective, clean_metrics, objective_vector, pareto_front


class CandidateLike(Protocol):
    """What the base needs of a candidate: its id (= index in proposal order) and a JSON form."""

    id: int

    def to_dict(self) -> dict[str, Any]: ...


C = TypeVar("C", bound=CandidateLike)


def rng_state_to_json(rng: random.Random) -> list[Any]:
    """random.Random state as JSON lists (getstate() holds tuples)."""
    version, internal, gauss_next = rng.getstate()
    return [version, list(internal), gauss_next]


def rng_state_from_json(state: Sequence[Any]) -> tuple[Any, ...]:
    version, internal, gauss_next = state
    return (version, tuple(internal), gauss_next)


class AskTellSearch(ABC, Generic[C]):
    """Ask/tell progress of a multi-objective search; subclasses propose the candidates.

    Candidate ids are their index in `_candidates`; `_metrics` holds told ids only, with
    None for a failed candidate (kept so it is never proposed again, never a parent).
    """

    # Written into state_dict and checked on load, so one strategy's state is never
    # silently loaded into another.
    _STRATEGY: ClassVar[str]

    def __init__(self, seed: int, fits: Callable[[Any], bool] | None = None) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InputError("seed", f"must be an integer, got {seed!r}")
        if fits is not None and not callable(fits):
            raise InputError("fits", "must be a function architecture -> bool (within the size limits) or None")
        self.seed = seed
        # Limit-aware proposals: an architecture `fits` refuses is skipped (counted, never
        # proposed), so the whole budget goes to candidates that can be chosen. Not saved in
        # the state (a function), like a MACs table.
        self._fits = fits
        self._refused: set[str] = set()  # repr of every architecture `fits` refused
        # The only source of randomness, so a restored RNG state replays the search exactly.
        self._rng = random.Random(seed)
        self._candidates: list[C] = []
        self._metrics: dict[int, dict[str, Any] | None] = {}
        self._stalled = False

    # ---- what a subclass decides

    @abstractmethod
    def _objectives(self) -> tuple[tuple[str, ...], tuple[bool, ...]]:
        """(objective_keys, maximize) of this search."""

    @abstractmethod
    def _budget(self) -> int:
        """How many candidates the search proposes in total."""

    @abstractmethod
    def _propose(self, n: int) -> list[C]:
        """Up to n new candidates, already appended to `_candidates`."""

    def _admit(self, arch: Any) -> bool:
        """Whether a drawn architecture is within the size limits; one that is not is remembered
        (asked about once) and counted as skipped."""
        if self._fits is None:
            return True
        key = repr(arch)
        if key in self._refused:
            return False
        if self._fits(arch):
            return True
        self._refused.add(key)
        return False

    @property
    def skipped(self) -> int:
        """Distinct architectures drawn and dropped for exceeding the size limits (never trained)."""
        return len(self._refused)

    # ---- ask / tell

    def ask(self, n: int = 1) -> list[C]:
        """Up to n new candidates (fewer when the budget or new candidates run out).

        An empty list while candidates are pending means: tell their results, then ask again.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        n = min(n, self._budget() - len(self._candidates))
        out = self._propose(n)
        if not out and n > 0 and not self.pending_ids():
            # Nothing in flight and nothing new found: no later ask can know more.
            self._stalled = True
        return out

    def tell(self, candidate_id: int, metrics: Mapping[str, Any] | None) -> None:
        """Report a candidate's metrics (must hold every objective key), or None if it failed.

        Failed candidates stay in the history and are never proposed again, but are never
        chosen as parents.
        """
        if isinstance(candidate_id, bool) or not isinstance(candidate_id, int) \
                or not 0 <= candidate_id < len(self._candidates):
            raise ValueError(f"unknown candidate id {candidate_id!r}")
        if candidate_id in self._metrics:
            raise ValueError(f"candidate {candidate_id} was already told")
        if metrics is not None and not isinstance(metrics, Mapping):
            raise ValueError(f"metrics must be a dict or None, got {type(metrics).__name__}")
        self._metrics[candidate_id] = None if metrics is None else clean_metrics(metrics, self._objectives()[0])

    def update(self, candidate_id: int, metrics: Mapping[str, Any]) -> None:
        """Replace a successfully told candidate's metrics with a later result of the same candidate
        (multi-fidelity: its result after more training). Proposals and the front from now on see
        the new metrics; decisions already taken on the old ones (an acceptance, a finished
        generation) stand. The state_dict keeps only the latest metrics."""
        if candidate_id not in self._metrics:
            raise ValueError(f"candidate {candidate_id!r} was not told yet: tell it first")
        if self._metrics[candidate_id] is None:
            raise ValueError(f"candidate {candidate_id} failed: a failed candidate has no result to update")
        if not isinstance(metrics, Mapping):
            raise ValueError(f"metrics must be a dict, got {type(metrics).__name__}")
        self._metrics[candidate_id] = clean_metrics(metrics, self._objectives()[0])

    # ---- queries

    @property
    def done(self) -> bool:
        """True when no further candidate will come and every proposed one was told."""
        if self.pending_ids():
            return False
        return len(self._candidates) >= self._budget() or self._stalled

    @property
    def candidates(self) -> list[C]:
        return list(self._candidates)

    def pending_ids(self) -> list[int]:
        """Asked but not yet told (e.g. to re-run after a resume)."""
        return [c.id for c in self._candidates if c.id not in self._metrics]

    @property
    def history(self) -> list[tuple[C, dict[str, Any] | None]]:
        """Told candidates in id order with their metrics (None for failed ones)."""
        return [(c, self._metrics[c.id]) for c in self._candidates if c.id in self._metrics]

    def _successes(self) -> list[tuple[int, dict[str, Any]]]:
        """(id, metrics) of the successfully told candidates, in id order."""
        return [(cid, m) for cid, m in sorted(self._metrics.items()) if m is not None]

    def pareto_ids(self) -> list[int]:
        """Ids of successful candidates on the Pareto front of the objectives."""
        keys, maximize = self._objectives()
        told = self._successes()
        points = [objective_vector(m, keys) for _, m in told]
        return [told[i][0] for i in pareto_front(points, maximize)] if told else []

    def best(self, limits: Mapping[str, float] | None = None, among: Collection[int] | None = None) -> C:
        """The candidate best on the first objective among the successful ones whose metrics stay
        within `limits` (metric -> maximum, e.g. {"params": 15.7e6}) and, when given, are in `among`
        (multi-fidelity: those trained the longest); ties broken by the other objectives, then the
        lowest id, so the pick is on the front of what qualifies. ValueError if none qualifies."""
        keys, maximize = self._objectives()
        ok = [cid for cid in self.within(limits) if among is None or cid in among]
        if not ok:
            raise ValueError(f"no successful candidate within the limits {dict(limits or {})}")
        return self._candidates[best_on_objective(self._metrics, ok, keys, maximize)]

    def within(self, limits: Mapping[str, float] | None) -> list[int]:
        """Ids of successful candidates whose metrics stay within `limits` (all of them without)."""
        return [cid for cid, m in self._successes()
                if all(k in m and float(m[k]) <= float(v) for k, v in (limits or {}).items())]

    @property
    def budget(self) -> int:
        """How many candidates the search proposes in total."""
        return self._budget()

    def goals(self) -> tuple[tuple[str, ...], tuple[bool, ...]]:
        """(objective keys, maximize flags): the first is what `best` ranks by."""
        return self._objectives()

    def told_points(self, limits: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
        """Metrics of the successful candidates within `limits` (all without), in id order."""
        ok = set(self.within(limits))
        return [dict(m) for cid, m in self._successes() if cid in ok]

    # ---- persistence: subclasses put their settings in front of these keys

    def _progress_state(self) -> dict[str, Any]:
        """The JSON-serialisable ask/tell progress: candidates, metrics, stall flag, RNG."""
        return {
            "candidates": [c.to_dict() for c in self._candidates],
            "metrics": [[cid, m] for cid, m in sorted(self._metrics.items())],
            "stalled": self._stalled,
            "refused": sorted(self._refused),
            "rng": rng_state_to_json(self._rng),
        }

    def _check_strategy(self, state: Mapping[str, Any]) -> None:
        if state.get("strategy") != self._STRATEGY:
            raise ValueError(f"not a {self._STRATEGY} state (strategy={state.get('strategy')!r})")

    def _check_settings(self, state: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
        """The state is this strategy's and was saved with exactly these `settings` (a state of
        another configuration would replay into different decisions)."""
        self._check_strategy(state)
        for key, value in settings.items():
            saved = state["settings"].get(key)
            if saved != value:
                raise ValueError(f"state was saved with {key}={saved!r}, this search has {key}={value!r}")

    def _load_progress(self, state: Mapping[str, Any], candidate_from_dict: Callable[[Mapping[str, Any]], C]) -> None:
        """Restore what `_progress_state` wrote; the caller has checked the settings match."""
        candidates = [candidate_from_dict(c) for c in state["candidates"]]
        if [c.id for c in candidates] != list(range(len(candidates))):
            raise ValueError("state candidates must have ids 0..n-1 in order")
        self._candidates = candidates
        self._metrics = {int(cid): (None if m is None else dict(m)) for cid, m in state["metrics"]}
        self._stalled = bool(state["stalled"])
        self._refused = set(state.get("refused", []))  # absent in states saved before limit-aware proposals
        self._rng.setstate(rng_state_from_json(state["rng"]))


__all__ = ["AskTellSearch", "CandidateLike", "rng_state_from_json", "rng_state_to_json"]
