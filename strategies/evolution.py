"""SPOS evolution search over single paths of a one-shot supernet, as ask/tell.

Single Path One-Shot (seed 002, NNI's SPOS example): a path picks one of `num_choices`
operations for each of `num_blocks` choice blocks (ShuffleNetV2 space: 20 blocks, 4 choices).
The trained supernet scores a path (accuracy with inherited weights, BN recalibrated); this
module only decides which paths to score:

* generation 0: `population` random paths within the MACs limit;
* generation g >= 1: `mutation_count` mutants of random top-k members (each block re-drawn
  uniformly with probability `mutation_prob`; a mutant equal to its parent is retried) plus
  `crossover_count` children of two random top-k members (each block taken from either
  parent with probability 1/2).

Top-k = the `topk` most accurate successfully told paths so far (a failed path is never a
parent). Every proposed path is within the limit and never proposed before; a draw that is
over the limit or a repeat is retried, with a cap, so a generation may come out smaller.
The next generation is made only once every path of the current one has been told, so the
proposals never depend on how the driver batches its asks.

A caller may also pass `fits(choices)` (e.g. a measured-latency limit): a draw within the MACs
limit that `fits` refuses is dropped the same way (counted in `rejected_over_limit` and in
`skipped`, never evaluated). `fits` is costly (a measurement), so a generation stops drawing
after `FITS_TRIES` refusals per wanted path and settles for fewer.

The MACs of a path come from a caller-supplied `macs_of(choices)` (a per-op lookup table in
SPOS); it is not part of the state, so give the restoring search the same one. Pure Python:
no torch, Prefect or MLflow.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import InputError

from .ask_tell import AskTellSearch

ORIGINS = ("random", "mutation", "crossover")

# Draws allowed per wanted path before a generation settles for fewer. NNI/megvii give
# mutation and crossover 10x their count (max_iters); the original random init loops
# until it is full, which may need many draws under a tight limit, so it gets more.
RANDOM_TRIES = 1000
OFFSPRING_TRIES = 10
# Refusals by `fits` allowed per wanted path in one fill (each costs a latency measurement).
FITS_TRIES = 5

MacsOf = Callable[[list[int]], int]


@dataclass
class EvolutionCandidate:
    """One proposed path: `choices[b]` is the operation index of block b."""

    id: int
    generation: int
    choices: list[int]
    macs: float
    origin: str = "random"                        # random | mutation | crossover
    parents: list[int] = field(default_factory=list)  # ids of the top-k member(s) it came from

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "generation": self.generation, "choices": list(self.choices), "macs": self.macs,
                "origin": self.origin, "parents": list(self.parents)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvolutionCandidate:
        return cls(id=int(data["id"]), generation=int(data["generation"]), choices=[int(c) for c in data["choices"]],
                   macs=data["macs"], origin=str(data.get("origin", "random")),
                   parents=[int(p) for p in data.get("parents", [])])


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(name, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(name, f"must be a finite number, got {value!r}")
    return value


class EvolutionSearch(AskTellSearch[EvolutionCandidate]):
    """SPOS evolution (maximize "acc") under a MACs limit, driven by ask/tell.

    ask(n) hands out up to n paths of the current generation; [] while some of it is still
    pending. tell(id, {"acc": ..., "macs": ...}) or tell(id, None) for a failed path; "macs"
    is filled in from the candidate when the metrics lack it, so best({"macs": x}) works.

    >>> s = EvolutionSearch(lambda p: sum(p), macs_limit=30, seed=0, population=4, topk=2,
    ...                     mutation_count=2, crossover_count=2, generations=2)
    >>> while not s.done:
    ...     for c in s.ask(8):
    ...         s.tell(c.id, {"acc": 1.0 / (1 + c.macs)})
    """

    _STRATEGY = "EvolutionSearch"

    def __init__(
        self,
        macs_of: MacsOf,
        macs_limit: float | None,
        seed: int = 0,
        *,
        num_blocks: int = 20,
        num_choices: int = 4,
        population: int = 50,
        topk: int = 10,
        mutation_count: int = 25,
        mutation_prob: float = 0.1,
        crossover_count: int = 25,
        generations: int = 20,
        min_macs: int | None = None,
        fits: Callable[[list[int]], bool] | None = None,
    ) -> None:
        """`fits(choices)`: whether a path within the MACs limit is within the caller's other
        limits (module doc); checked after the MACs limit, once per distinct path."""
        if not callable(macs_of):
            raise InputError("macs_of", "must be a function choices -> MACs (e.g. a lookup-table sum)")
        self.num_blocks = _check_int("search.num_blocks", num_blocks, 1)
        self.num_choices = _check_int("search.num_choices", num_choices, 2)
        self.population = _check_int("search.population", population, 1)
        self.topk = _check_int("search.topk", topk, 1)
        self.mutation_count = _check_int("search.mutation_count", mutation_count, 0)
        self.crossover_count = _check_int("search.crossover_count", crossover_count, 0)
        self.generations = _check_int("search.generations", generations, 1)
        if generations > 1 and mutation_count + crossover_count == 0:
            raise InputError("search.mutation_count",
                             "mutation_count + crossover_count must be at least 1 when generations > 1")
        if isinstance(mutation_prob, bool) or not isinstance(mutation_prob, (int, float)) \
                or not 0.0 < float(mutation_prob) <= 1.0:
            raise InputError("search.mutation_prob", f"must be a probability in (0, 1], got {mutation_prob!r}")
        self.mutation_prob = float(mutation_prob)
        if macs_limit is not None and _check_number("search.macs_limit", macs_limit) <= 0:
            raise InputError("search.macs_limit", f"must be a positive number of MACs (or None for no limit), "
                                                  f"got {macs_limit!r}")
        if min_macs is not None:
            _check_number("min_macs", min_macs)
            if macs_limit is not None and macs_limit < min_macs:
                raise InputError("search.macs_limit", f"must be at least the MACs of the smallest path; "
                                                      f"the smallest path has {min_macs} MACs, got {macs_limit}")
        self.macs_limit = macs_limit
        self.macs_of = macs_of
        super().__init__(seed, fits)
        self._generation = -1                     # index of the current generation
        self._gen_start: list[int] = []           # first candidate id of each generation
        self._queue: list[dict[str, Any]] = []    # made for the current generation, not handed out yet
        self._over_limit: list[int] = []          # per generation: draws rejected for exceeding the limit
        self._repeats: list[int] = []             # per generation: draws rejected as already proposed
        self._seen: set[tuple[int, ...]] = set()  # every path made so far (asked or queued)

    # ---- AskTellSearch hooks

    def _objectives(self) -> tuple[tuple[str, ...], tuple[bool, ...]]:
        return ("acc",), (True,)

    def _budget(self) -> int:
        # population * generations with the seed settings (25 + 25 = 50); written out so the
        # bound also holds when mutation_count + crossover_count differs from population.
        return self.population + (self.generations - 1) * (self.mutation_count + self.crossover_count)

    def _propose(self, n: int) -> list[EvolutionCandidate]:
        if n <= 0:
            return []
        if not self._queue:
            if self.pending_ids() or self._generation >= self.generations - 1:
                return []
            self._make_generation()
        out = []
        for planned in self._queue[:n]:
            cand = EvolutionCandidate(id=len(self._candidates), **planned)
            self._candidates.append(cand)
            out.append(cand)
        del self._queue[:len(out)]
        return out

    # ---- ask / tell

    def tell(self, candidate_id: int, metrics: Mapping[str, Any] | None) -> None:
        """Report {"acc": accuracy, "macs": ...} (macs optional) or None if the path failed."""
        if metrics is not None and isinstance(metrics, Mapping) and "macs" not in metrics \
                and isinstance(candidate_id, int) and 0 <= candidate_id < len(self._candidates):
            metrics = {**metrics, "macs": self._candidates[candidate_id].macs}
        super().tell(candidate_id, metrics)

    @property
    def done(self) -> bool:
        if self._queue or self.pending_ids():
            return False
        return self._stalled or self._generation >= self.generations - 1 or len(self._candidates) >= self._budget()

    # ---- generations

    def _make_generation(self) -> None:
        g = self._generation + 1
        counts = {"over": 0, "repeat": 0}
        planned: list[dict[str, Any]] = []
        if g == 0:
            self._fill(planned, g, self.population, RANDOM_TRIES, self._random_path, counts)
        else:
            parents = self.topk_ids()
            if parents:  # no successful path yet (all failed): nothing to breed from, the search stalls
                self._fill(planned, g, self.mutation_count, OFFSPRING_TRIES, lambda: self._mutant(parents), counts)
                self._fill(planned, g, self.crossover_count, OFFSPRING_TRIES, lambda: self._crossover(parents),
                           counts)
        self._generation = g
        self._gen_start.append(len(self._candidates))
        self._over_limit.append(counts["over"])
        self._repeats.append(counts["repeat"])
        self._queue = planned

    def _fill(self, planned: list[dict[str, Any]], g: int, wanted: int, tries: int,
              make: Callable[[], tuple[list[int], str, list[int]]], counts: dict[str, int]) -> None:
        made = refused = 0
        for _ in range(wanted * tries):
            if made == wanted or refused >= wanted * FITS_TRIES:
                return
            choices, origin, parents = make()
            key = tuple(choices)
            # A mutant equal to its parent is a repeat too: the parent was proposed before.
            if key in self._seen:
                counts["repeat"] += 1
                continue
            macs = self._macs(choices)
            if self.macs_limit is not None and macs > self.macs_limit:
                counts["over"] += 1
                continue
            if not self._admit(choices):
                counts["over"] += 1
                refused += 1
                continue
            self._seen.add(key)
            planned.append({"generation": g, "choices": choices, "macs": macs, "origin": origin, "parents": parents})
            made += 1

    def _random_path(self) -> tuple[list[int], str, list[int]]:
        return [self._rng.randrange(self.num_choices) for _ in range(self.num_blocks)], "random", []

    def _mutant(self, parents: list[int]) -> tuple[list[int], str, list[int]]:
        pid = parents[self._rng.randrange(len(parents))]
        choices = [self._rng.randrange(self.num_choices) if self._rng.random() < self.mutation_prob else c
                   for c in self._candidates[pid].choices]
        return choices, "mutation", [pid]

    def _crossover(self, parents: list[int]) -> tuple[list[int], str, list[int]]:
        a = parents[self._rng.randrange(len(parents))]
        b = parents[self._rng.randrange(len(parents))]
        pa, pb = self._candidates[a].choices, self._candidates[b].choices
        return [x if self._rng.random() < 0.5 else y for x, y in zip(pa, pb)], "crossover", [a, b]

    def _macs(self, choices: list[int]) -> float:
        value = self.macs_of(list(choices))
        if hasattr(value, "item") and getattr(value, "shape", None) == ():
            value = value.item()  # numpy scalar from a lookup table: keep the state plain JSON
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"macs_of({choices}) must return a finite non-negative number, got {value!r}")
        return value

    # ---- queries

    @property
    def generation(self) -> int:
        """Index of the current generation (-1 before the first ask)."""
        return self._generation

    def generation_ids(self, g: int) -> list[int]:
        """Ids handed out in generation g so far."""
        self._check_generation(g)
        end = self._gen_start[g + 1] if g + 1 < len(self._gen_start) else len(self._candidates)
        return list(range(self._gen_start[g], end))

    def topk_ids(self) -> list[int]:
        """The current top-k: the `topk` most accurate successes so far, best first (lower id on ties)."""
        return self._topk(len(self._candidates))

    def topk_of_generation(self, g: int) -> list[int]:
        """The top-k as it stood after generation g (successes of generations 0..g), best first."""
        self._check_generation(g)
        end = self._gen_start[g + 1] if g + 1 < len(self._gen_start) else len(self._candidates)
        return self._topk(end)

    def _topk(self, end: int) -> list[int]:
        told = [(cid, float(m["acc"])) for cid, m in self._successes() if cid < end]
        told.sort(key=lambda t: (-t[1], t[0]))
        return [cid for cid, _ in told[:self.topk]]

    @property
    def rejected_over_limit(self) -> list[int]:
        """Per generation: random/mutated/crossed paths dropped for exceeding macs_limit."""
        return list(self._over_limit)

    @property
    def rejected_repeats(self) -> list[int]:
        """Per generation: paths dropped for having been proposed before (or equal to the parent)."""
        return list(self._repeats)

    def _check_generation(self, g: int) -> None:
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g <= self._generation:
            raise ValueError(f"generation must be in 0..{self._generation}, got {g!r}")

    # ---- persistence

    def _settings(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "num_blocks": self.num_blocks, "num_choices": self.num_choices,
            "population": self.population, "topk": self.topk, "mutation_count": self.mutation_count,
            "mutation_prob": self.mutation_prob, "crossover_count": self.crossover_count,
            "generations": self.generations, "macs_limit": self.macs_limit,
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON: settings, candidates, told metrics, generation bookkeeping (incl. the
        current generation's paths not handed out yet) and the RNG. Not macs_of."""
        return {
            "strategy": self._STRATEGY,
            "version": 1,
            "settings": self._settings(),
            "generation": self._generation,
            "gen_start": list(self._gen_start),
            "queue": [dict(p, choices=list(p["choices"]), parents=list(p["parents"])) for p in self._queue],
            "rejected_over_limit": list(self._over_limit),
            "rejected_repeats": list(self._repeats),
            **self._progress_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict into this freshly built, identically configured search."""
        self._check_settings(state, self._settings())
        self._load_progress(state, EvolutionCandidate.from_dict)
        # A different lookup table would silently change every later decision; a few spot
        # checks are cheap and catch it.
        for cand in self._candidates[:3]:
            if self._macs(cand.choices) != cand.macs:
                raise ValueError(f"macs_of differs from the saved search's: candidate {cand.id} was saved with "
                                 f"{cand.macs} MACs, macs_of gives {self._macs(cand.choices)}")
        self._generation = int(state["generation"])
        self._gen_start = [int(i) for i in state["gen_start"]]
        self._queue = [{"generation": int(p["generation"]), "choices": [int(c) for c in p["choices"]],
                        "macs": p["macs"], "origin": str(p["origin"]), "parents": [int(i) for i in p["parents"]]}
                       for p in state["queue"]]
        self._over_limit = [int(i) for i in state["rejected_over_limit"]]
        self._repeats = [int(i) for i in state["rejected_repeats"]]
        self._seen = {tuple(c.choices) for c in self._candidates} | {tuple(p["choices"]) for p in self._queue}


__all__ = ["ORIGINS", "EvolutionCandidate", "EvolutionSearch", "MacsOf"]
