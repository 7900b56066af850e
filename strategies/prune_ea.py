"""PruneEA: NSGA-III channel-pruning search over a 0/1 encoding, as ask/tell.

Vega's PruneEA (seed 003): one bit per prunable output channel (1 keep, 0 prune), a search
for the Pareto front of [MACs, 1 - accuracy] (optionally params too, all minimized; or the
measured latency in place of MACs, told as "latency_ms") with pymoo's NSGA-III. pymoo does the
evolution; this module only adapts it to the project's ask/tell driver
(tasks/orchestration/search.py), which evaluates candidates elsewhere.

Generations (Vega's accounting, 64 + 31 x 32 = 1,056 evaluations for its seed table):

* generation 0: `random_models` random individuals;
* generations 1..num_generation: `num_individual` offspring each, made by NSGA-III from the
  survivors (two-point crossover, then mutation) and told back to pymoo as a generation.
  `num_generation=0` is random sampling alone: the same-budget random control.

So `budget == random_models + num_generation * num_individual`. It is an upper bound: a
generation is smaller only when pymoo cannot make that many encodings never asked before
(tiny encodings); if it can make none the search stops early (`done`).

pymoo pieces: `PruneProblem` (a Problem that only maps variables to the objectives told for
them), `DensitySampling` (Vega's random init: each individual draws its own keep probability),
`SegmentFlipMutation` (Vega's mutation: flip every bit between two random cut points; pymoo's
`BitflipMutation`, independent flips with probability 1/n_var, is available as
mutation="bitflip", and `SegmentResampleMutation`, which redraws a segment at the parent's own
keep rate, as mutation="resample"), pymoo's `TwoPointCrossover`, `NSGA3` with Das-Dennis reference
directions, and `NeverRepeat`, a duplicate elimination that also rejects every encoding
asked earlier in the run, so nothing is evaluated twice.

Limits (`fits`, e.g. a measured-latency limit): an encoding pymoo makes that `fits` refuses is
never handed out (so never trained); it is counted (`skipped`) and told to pymoo as infeasible
(constraint 1 > 0, the worst objective values), like a failed candidate, so NSGA-III's
constrained tournament and survival steer the next generations away from it. A generation can
therefore hand out fewer candidates than pymoo made; a generation whose every encoding is
refused is passed on to pymoo at the next ask.

Accuracy floor (`acc_floor`, e.g. 1.5 / classes): a told candidate at or below it is told to
pymoo as infeasible by the margin it misses the floor (still better than a failure). Without
it, the tiny networks that score at chance are non-dominated at the cheap end, NSGA-III's
normalisation stretches to them and they keep a reference direction's survivor, whose offspring
are as useless. They stay in the history and on the search's own fronts (nothing is hidden).

State: `state_dict()` is plain JSON (settings, candidates, told metrics). pymoo's internal
state is not pickled: `load_state_dict` rebuilds it by replaying the recorded generations
through a fresh, identically seeded NSGA-III (cheap: no evaluation happens) and checks that
every replayed encoding equals the recorded one, so a restored search continues exactly
as an uninterrupted one would, or fails loudly (different pymoo version, different repair).
The replay trusts the saved `fits` decisions (refused encodings are in the state; the rest were
admitted) and calls `fits` for none of them: a measured figure may differ on a second look.
Pure Python/numpy/pymoo: no torch, Prefect or MLflow.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pymoo
from pymoo.algorithms.moo.nsga3 import NSGA3
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.mutation import Mutation
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling
from pymoo.operators.crossover.pntx import TwoPointCrossover
from pymoo.operators.mutation.bitflip import BitflipMutation
from pymoo.operators.selection.tournament import TournamentSelection
from pymoo.util.ref_dirs import get_reference_directions

from core.errors import InputError

from .ask_tell import AskTellSearch
from .pareto import objective_vector, pareto_front

# Objective name -> the metric it is computed from. All objectives are minimized by pymoo.
OBJECTIVE_METRIC = {"macs": "macs", "latency": "latency_ms", "error": "acc", "params": "params"}
# The cost axis: MACs (Vega) or measured latency in ms (told as "latency_ms").
ALLOWED_OBJECTIVES = (("macs", "error"), ("macs", "error", "params"), ("latency", "error"),
                      ("latency", "error", "params"))

EncodingRepair = Callable[[list[int]], Sequence[int]]


# --------------------------------------------------------------------------- encodings

def encoding_to_str(bits: Sequence[int]) -> str:
    """[1, 0, 1] -> '101' (the compact form used in JSON and tables)."""
    return "".join("1" if b else "0" for b in bits)


def encoding_from(value: str | Sequence[int], n_var: int | None = None, field: str = "encoding") -> list[int]:
    """A '0/1' string or a sequence of 0/1 ints (bools) as list[int]; InputError otherwise."""
    if isinstance(value, str):
        if not value or set(value) - {"0", "1"}:
            raise InputError(field, "must be a non-empty string of 0 and 1")
        bits = [int(c) for c in value]
    elif isinstance(value, (Sequence, np.ndarray)):
        bits = []
        for b in value:
            if isinstance(b, (bool, np.bool_)) or (isinstance(b, (int, np.integer)) and b in (0, 1)):
                bits.append(int(b))
            else:
                raise InputError(field, f"entries must be 0 or 1, got {b!r}")
    else:
        raise InputError(field, f"must be a 0/1 string or a list of 0/1, got {type(value).__name__}")
    if n_var is not None and len(bits) != n_var:
        raise InputError(field, f"must have {n_var} bits (n_var), got {len(bits)}")
    return bits


def reference_directions(n_obj: int, pop_size: int) -> np.ndarray:
    """Das-Dennis reference directions: the most partitions whose directions still fit in
    `pop_size` (at least one partition, i.e. the n_obj axis directions)."""
    p = 1
    while math.comb(p + 1 + n_obj - 1, n_obj - 1) <= pop_size:
        p += 1
    return get_reference_directions("das-dennis", n_obj, n_partitions=p)


# --------------------------------------------------------------------------- pymoo parts

class PruneProblem(Problem):
    """n_var binary variables -> the objectives told for them, plus one constraint: a failed
    candidate is infeasible (G = 1), a successful one feasible (G = 0).

    Evaluation happens elsewhere (ask/tell): the search puts the told values into `told`
    (encoding bytes -> (F row, G row)) just before pymoo evaluates a generation.
    """

    def __init__(self, n_var: int, n_obj: int) -> None:
        super().__init__(n_var=n_var, n_obj=n_obj, n_ieq_constr=1, xl=0, xu=1, vtype=bool)
        self.told: dict[bytes, tuple[list[float], list[float]]] = {}

    def _evaluate(self, X: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        rows = [self.told.get(_key(x)) for x in X]
        if any(r is None for r in rows):
            raise RuntimeError("PruneProblem only knows told objectives: tell every candidate of the generation first")
        out["F"] = np.array([r[0] for r in rows], dtype=float)  # type: ignore[index]
        out["G"] = np.array([r[1] for r in rows], dtype=float)  # type: ignore[index]


def _key(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x, dtype=bool).tobytes()


class DensitySampling(Sampling):
    """Vega's random individuals: each draws a keep probability p ~ U(0, 1), then keeps every
    channel with probability p, so the initial population spreads over all pruning ratios.
    Always makes `n_samples` given here (random_models), whatever pymoo's pop_size is."""

    def __init__(self, n_samples: int) -> None:
        super().__init__()
        self.n_samples = n_samples

    def _do(self, problem: Problem, n_samples: int, *args: Any, random_state: Any = None, **kwargs: Any) -> np.ndarray:
        keep = random_state.random((self.n_samples, 1))
        return random_state.random((self.n_samples, problem.n_var)) < keep


def _segments(shape: tuple[int, int], random_state: Any) -> np.ndarray:
    """One segment [a, b) per row, two distinct cut points drawn from 0..n (so never empty), as a
    boolean mask of `shape`."""
    rows, n = shape
    cuts = np.sort(np.array([random_state.choice(n + 1, size=2, replace=False) for _ in range(rows)]), axis=1)
    span = np.arange(n)
    return (span >= cuts[:, :1]) & (span < cuts[:, 1:])


class SegmentFlipMutation(Mutation):
    """Vega's PruneEA mutation: pick two distinct cut points a < b in 0..n_var and flip every
    bit in [a, b). (Vega draws both cuts below n_var, so it can never flip the last bit; here
    every bit can flip, and at least one always does.) `prob` is the chance an offspring is
    mutated at all."""

    def _do(self, problem: Problem, X: np.ndarray, *args: Any, random_state: Any = None, **kwargs: Any) -> np.ndarray:
        if len(X) == 0:
            return X
        return np.logical_xor(X.astype(bool), _segments(X.shape, random_state))


class SegmentResampleMutation(Mutation):
    """Density-preserving segment mutation: pick a segment as `SegmentFlipMutation` does and redraw
    each of its bits, kept with the parent's own keep rate (its share of 1 bits). Flipping a
    segment of a 90 %-dense encoding leaves it about 60 % dense, so under flips the dense end of
    the front breeds sparse offspring only; redrawn, a parent's offspring keep its density on
    average and vary around it. An all-kept or all-pruned parent is left as it is (pymoo's
    duplicate elimination then asks for other offspring)."""

    def _do(self, problem: Problem, X: np.ndarray, *args: Any, random_state: Any = None, **kwargs: Any) -> np.ndarray:
        if len(X) == 0:
            return X
        segment = _segments(X.shape, random_state)
        X = X.astype(bool)
        redrawn = random_state.random(X.shape) < X.mean(axis=1, keepdims=True)
        return np.where(segment, redrawn, X)


# search.mutation name -> pymoo Mutation class (the names a search accepts).
MUTATIONS: dict[str, type[Mutation]] = {"segment": SegmentFlipMutation, "bitflip": BitflipMutation,
                                        "resample": SegmentResampleMutation}


class CallerRepair(Repair):
    """Applies the caller's `repair(encoding) -> encoding` (e.g. no all-zero channel group) to
    every individual pymoo makes, before duplicate elimination and before it is asked."""

    def __init__(self, fn: EncodingRepair) -> None:
        super().__init__()
        self.fn = fn

    def _do(self, problem: Problem, X: np.ndarray, **kwargs: Any) -> np.ndarray:
        out = np.empty((len(X), problem.n_var), dtype=bool)
        for i, x in enumerate(X):
            try:
                out[i] = encoding_from(self.fn([int(b) for b in x]), problem.n_var, "repair")
            except InputError as err:
                raise ValueError(f"repair returned a bad encoding: {err}") from None
        return out


def comp_by_cv_then_seeded_random(pop: Population, P: np.ndarray, random_state: Any = None,
                                   **kwargs: Any) -> np.ndarray:
    """NSGA-III's binary tournament (pymoo's `comp_by_cv_then_random`): the smaller constraint
    violation wins, and a tie — two feasible, or two equally infeasible (failed or over the
    limits) — is drawn from the search's own `random_state`. pymoo 0.6.2 draws the tie of two
    infeasible ones from numpy's global generator, so a search with refused or failed candidates
    came out differently each run and its saved state did not replay."""
    S = np.empty(P.shape[0], dtype=int)
    for i, (a, b) in enumerate(P[:, :2]):
        cv_a, cv_b = float(pop[a].CV[0]), float(pop[b].CV[0])
        S[i] = a if cv_a < cv_b else b if cv_b < cv_a else random_state.choice([a, b])
    return S[:, None]


class NeverRepeat(DuplicateElimination):
    """pymoo's duplicate elimination (within the new individuals and against the populations
    pymoo passes) extended with `seen`: every encoding asked before in this run."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[bytes] = set()

    def _do(self, pop: Population, other: Population | None, is_duplicate: np.ndarray) -> np.ndarray:
        known = set(self.seen) if other is None else {_key(x) for x in other.get("X")}
        for i, x in enumerate(pop.get("X")):
            key = _key(x)
            if key in known:
                is_duplicate[i] = True
            elif other is None:
                known.add(key)  # within the new individuals the first one stays
        return is_duplicate


# --------------------------------------------------------------------------- candidates

@dataclass
class PruneCandidate:
    """One asked encoding: `id` = index in proposal order, `generation` 0 = random init."""

    id: int
    generation: int
    encoding: list[int]

    @property
    def code(self) -> str:
        return encoding_to_str(self.encoding)

    @property
    def kept(self) -> int:
        """How many channels the encoding keeps."""
        return sum(self.encoding)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "generation": self.generation, "encoding": self.code}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruneCandidate:
        return cls(id=int(data["id"]), generation=int(data["generation"]), encoding=encoding_from(data["encoding"]))


# --------------------------------------------------------------------------- the search

def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(name, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _check_prob(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise InputError(name, f"must be a probability between 0 and 1, got {value!r}")
    return float(value)


class PruneEASearch(AskTellSearch[PruneCandidate]):
    """NSGA-III over 0/1 channel masks, driven by ask/tell.

    ask(n) hands out up to n candidates of the current generation (the first generation is
    the `random_models` random individuals); the next generation is made only when every
    candidate of the current one has been told, so ask returns [] while some are pending.
    Ask with n >= the generation size to get a whole generation at once.

    tell(id, metrics) takes "macs" (or "latency_ms" with the latency objective) and "acc"
    (accuracy in [0, 1]; plus "params" when that is an objective) or None for a failed
    candidate. When a generation is complete it goes to pymoo: objectives [macs or latency,
    1 - acc(, params)] in `objectives` order; a failed candidate is infeasible (constraint
    1 > 0), so NSGA-III ranks it below every successful one, with the worst objective values
    (error 1, the largest cost/params told so far). It stays in the history, is never asked
    again and is never on a front. An encoding `fits` refuses is told the same way (module doc).
    """

    _STRATEGY = "PruneEASearch"

    def __init__(
        self,
        n_var: int,
        seed: int,
        num_generation: int = 31,
        num_individual: int = 32,
        random_models: int = 64,
        objectives: Sequence[str] = ("macs", "error"),
        mutation: str = "segment",
        mutation_prob: float = 0.5,
        crossover_prob: float = 0.5,
        repair: EncodingRepair | None = None,
        fits: Callable[[str], bool] | None = None,
        acc_floor: float = 0.0,
    ) -> None:
        """`fits(encoding as a 0/1 string)`: whether an encoding is within the limits (module doc).
        `acc_floor`: a candidate scoring at or below it (e.g. chance) is told to pymoo as infeasible
        by the margin it misses it, so it never holds a survivor's place (module doc)."""
        self.n_var = _check_int("n_var", n_var, 1)
        self.num_generation = _check_int("num_generation", num_generation, 0)
        self.num_individual = _check_int("num_individual", num_individual, 1)
        self.random_models = _check_int("random_models", random_models, 1)
        if random_models < num_individual:
            raise InputError("random_models", f"must be >= num_individual ({num_individual}), got {random_models}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError("seed", f"must be a non-negative integer, got {seed!r}")
        if isinstance(objectives, str) or not isinstance(objectives, Sequence) \
                or tuple(objectives) not in ALLOWED_OBJECTIVES:
            raise InputError("objectives", f"must be one of {[list(o) for o in ALLOWED_OBJECTIVES]}, got {objectives!r}")
        if mutation not in MUTATIONS:
            raise InputError("mutation", f"must be one of {list(MUTATIONS)}, got {mutation!r}")
        if repair is not None and not callable(repair):
            raise InputError("repair", "must be a function encoding -> encoding, or None")
        super().__init__(seed, fits)
        self._replaying = False
        self.objectives = tuple(objectives)
        self.mutation = mutation
        self.mutation_prob = _check_prob("mutation_prob", mutation_prob)
        self.crossover_prob = _check_prob("crossover_prob", crossover_prob)
        self.acc_floor = _check_prob("acc_floor", acc_floor)
        self.repair = repair
        # Base-class objectives (fronts, best): accuracy first, so best() is the most
        # accurate candidate within limits such as {"macs": 20e6}.
        self._keys = ("acc",) + tuple(OBJECTIVE_METRIC[o] for o in self.objectives if o != "error")
        self._maximize = (True,) + (False,) * (len(self._keys) - 1)
        self._reset_algorithm()

    # ---- pymoo set-up

    def _reset_algorithm(self) -> None:
        n_obj = len(self.objectives)
        ref_dirs = reference_directions(n_obj, self.num_individual)
        mutation = MUTATIONS[self.mutation](prob=self.mutation_prob)
        self._dedup = NeverRepeat()
        self._problem = PruneProblem(self.n_var, n_obj)
        self._algorithm = NSGA3(
            ref_dirs=ref_dirs,
            # survivors kept between generations; more than num_individual only when there
            # are more reference directions (tiny num_individual)
            pop_size=max(self.num_individual, len(ref_dirs)),
            n_offsprings=self.num_individual,
            sampling=DensitySampling(self.random_models),
            selection=TournamentSelection(func_comp=comp_by_cv_then_seeded_random),
            crossover=TwoPointCrossover(prob=self.crossover_prob),
            mutation=mutation,
            repair=CallerRepair(self.repair) if self.repair is not None else None,
            eliminate_duplicates=self._dedup,
        )
        # pymoo counts its initial population as generation 1, so this stops it after ours
        # (0..num_generation).
        self._algorithm.setup(self._problem, termination=("n_gen", self.num_generation + 1), seed=self.seed,
                              verbose=False)
        self._pop: Population | None = None       # the current generation, as pymoo asked it
        self._queue: list[list[int]] = []         # its encodings not handed out yet
        self._generation = -1                     # index of the current generation
        self._gen_start: list[int] = []           # first candidate id of each generation
        self._told_generations = 0                # generations passed to pymoo's tell

    def _new_generation(self) -> bool:
        """Ask pymoo for the next generation into the queue; False if it cannot make any."""
        pop = self._algorithm.ask()
        if pop is None or len(pop) == 0:
            return False
        X = pop.get("X")
        self._pop = pop
        self._queue = [[int(b) for b in x] for x in X]
        self._dedup.seen.update(_key(x) for x in X)
        self._generation += 1
        self._gen_start.append(len(self._candidates))
        return True

    def _finish_generation(self) -> None:
        """Give pymoo the told objectives of the current (complete) generation."""
        ids = self.generation_ids(self._generation)
        ok = [m for g in range(self._generation + 1) for m in
              (self._metrics[i] for i in self.generation_ids(g)) if m is not None]
        worst = [1.0 if o == "error" else max([float(s[OBJECTIVE_METRIC[o]]) for s in ok], default=1.0)
                 for o in self.objectives]
        told = {}
        for cid in ids:
            m = self._metrics[cid]
            key = _key(np.array(self._candidates[cid].encoding))
            told[key] = (worst, [1.0]) if m is None else (self.objective_values(m), [self._shortfall(m)])
        for x in self._pop.get("X"):  # refused by `fits`: never asked, infeasible like a failure
            told.setdefault(_key(x), (worst, [1.0]))
        self._problem.told = told
        try:
            self._algorithm.evaluator.eval(self._problem, self._pop)
        finally:
            self._problem.told = {}
        self._algorithm.tell(infills=self._pop)
        self._told_generations += 1
        self._pop = None

    def _shortfall(self, metrics: Mapping[str, Any]) -> float:
        """How far a result is from clearing `acc_floor` (0 = feasible; under 1, so a failure's
        constraint value of 1 stays the worst)."""
        acc = float(metrics["acc"])
        return 0.0 if not self.acc_floor or acc > self.acc_floor else min(0.5, self.acc_floor - acc + 1e-6)

    def objective_values(self, metrics: Mapping[str, Any]) -> list[float]:
        """pymoo's (minimized) objective vector of a metrics dict, in `objectives` order."""
        return [1.0 - float(metrics["acc"]) if o == "error" else float(metrics[OBJECTIVE_METRIC[o]])
                for o in self.objectives]

    # ---- AskTellSearch hooks

    def _objectives(self) -> tuple[tuple[str, ...], tuple[bool, ...]]:
        return self._keys, self._maximize

    def _budget(self) -> int:
        return self.random_models + self.num_generation * self.num_individual

    def _admit(self, arch: Any) -> bool:
        if self._replaying:  # the saved run's decisions, not a second measurement (module doc)
            return repr(arch) not in self._refused
        return super()._admit(arch)

    def _generation_told(self) -> bool:
        return all(i in self._metrics for i in self.generation_ids(self._generation))

    def _propose(self, n: int) -> list[PruneCandidate]:
        out: list[PruneCandidate] = []
        while len(out) < n and not self._stalled:
            if not self._queue:
                if self._generation >= 0 and self._told_generations <= self._generation:
                    if not self._generation_told():
                        break  # the current generation still has candidates to tell
                    self._finish_generation()  # its last encodings were refused after the last tell
                if self._told_generations > self.num_generation or not self._new_generation():
                    break
                continue
            bits = self._queue.pop(0)
            if not self._admit(encoding_to_str(bits)):
                continue  # over the limits: told to pymoo as infeasible with its generation
            cand = PruneCandidate(id=len(self._candidates), generation=self._generation, encoding=bits)
            self._candidates.append(cand)
            out.append(cand)
        return out

    # ---- ask / tell

    @property
    def budget(self) -> int:
        """random_models + num_generation * num_individual (an upper bound, see the module doc)."""
        return self._budget()

    @property
    def done(self) -> bool:
        if self.pending_ids() or self._queue:
            return False
        return self._stalled or self._told_generations > self.num_generation

    def tell(self, candidate_id: int, metrics: Mapping[str, Any] | None) -> None:
        """Record a result ("macs", "acc" in [0, 1], "params" if it is an objective) or None if the
        candidate failed; the generation goes to pymoo once every candidate of it is told."""
        if metrics is not None and isinstance(metrics, Mapping):
            values = objective_vector(metrics, self._keys)  # ValueError on missing / non-numeric / NaN
            acc = values[0]
            if not 0.0 <= acc <= 1.0:
                raise ValueError(f"acc must be an accuracy in [0, 1], got {acc!r}")
            for key, v in zip(self._keys[1:], values[1:]):
                if not math.isfinite(v) or v < 0:
                    raise ValueError(f"{key} must be a finite non-negative number, got {v!r}")
        super().tell(candidate_id, metrics)
        if not self._queue and self._generation >= self._told_generations and self._generation_told():
            self._finish_generation()

    # ---- queries

    @property
    def generation(self) -> int:
        """Index of the current generation (-1 before the first ask)."""
        return self._generation

    def generation_of(self, candidate_id: int) -> int:
        return self._candidates[candidate_id].generation

    def generation_ids(self, g: int) -> list[int]:
        """Ids asked in generation g so far."""
        if not 0 <= g <= self._generation:
            raise ValueError(f"generation must be in 0..{self._generation}, got {g!r}")
        end = self._gen_start[g + 1] if g + 1 < len(self._gen_start) else len(self._candidates)
        return list(range(self._gen_start[g], end))

    def front_of_generation(self, g: int) -> list[int]:
        """Ids non-dominated among the successes told in generations 0..g (the front as it stood
        after generation g: one file per generation)."""
        end = self.generation_ids(g)[-1] + 1 if self.generation_ids(g) else self._gen_start[g]
        told = [(cid, m) for cid, m in self._successes() if cid < end]
        points = [objective_vector(m, self._keys) for _, m in told]
        return [told[i][0] for i in pareto_front(points, self._maximize)] if told else []

    # ---- persistence

    def _settings(self) -> dict[str, Any]:
        return {
            "n_var": self.n_var, "seed": self.seed, "num_generation": self.num_generation,
            "num_individual": self.num_individual, "random_models": self.random_models,
            "objectives": list(self.objectives), "mutation": self.mutation,
            "mutation_prob": self.mutation_prob, "crossover_prob": self.crossover_prob,
            "acc_floor": self.acc_floor,
        }

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable: settings, candidates (encodings as 0/1 strings), told metrics.
        No pymoo object: load_state_dict replays the generations to rebuild it. The repair
        function is not stored: give the restoring object the same one."""
        return {"strategy": self._STRATEGY, "pymoo": pymoo.__version__, "settings": self._settings(),
                "repair": self.repair is not None, **self._progress_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict into this (freshly built, identically configured) search."""
        # states saved before `acc_floor` existed had none
        state = {**state, "settings": {"acc_floor": 0.0, **state["settings"]}}
        self._check_settings(state, self._settings())
        if bool(state.get("repair")) != (self.repair is not None):
            raise ValueError("state was saved " + ("with" if state.get("repair") else "without")
                             + " a repair function; build the search the same way")
        self._load_progress(state, PruneCandidate.from_dict)
        saved, self._candidates = self._candidates, []
        stalled, self._stalled = self._stalled, False
        self._reset_algorithm()
        # Replay: regenerate the recorded generations (the told metrics are already loaded, so
        # _propose passes each complete one to pymoo before making the next, as the original run
        # did), hand the same encodings out again and check them.
        self._replaying = True
        try:
            given = self._propose(len(saved))
        finally:
            self._replaying = False
        for cand, expected in zip(given + [None] * (len(saved) - len(given)), saved):
            if cand is None or (cand.generation, cand.encoding) != (expected.generation, expected.encoding):
                raise ValueError(
                    f"state does not replay at generation {expected.generation} (saved with pymoo "
                    f"{state.get('pymoo')}, running {pymoo.__version__}; or a different repair function)")
        if not self._queue and self._generation >= self._told_generations and self._generation_told():
            self._finish_generation()
        self._stalled = stalled


__all__ = [
    "ALLOWED_OBJECTIVES",
    "CallerRepair",
    "comp_by_cv_then_seeded_random",
    "DensitySampling",
    "NeverRepeat",
    "PruneCandidate",
    "PruneEASearch",
    "PruneProblem",
    "SegmentFlipMutation",
    "encoding_from",
    "encoding_to_str",
    "reference_directions",
]
