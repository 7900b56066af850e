"""SpNasS: the serial-level backbone search of SP-NAS ("swap-expand-reignite").

A serial backbone is a code string: each digit is one block and its stride ('1' keeps the
resolution, '2' halves it); '-' separates stages, and the width doubles at each new stage.
ResNet-18 is '11-21-21-21'. Children come from the Pareto-optimal parents by a few
mutations: *expand* inserts a block, *swap* moves a stage boundary (i.e. where the width
doubles), *add_stage* appends a stage.

The search is ask/tell: `ask(n)` proposes candidates, whoever trains them calls
`tell(id, metrics)`. It never trains, imports torch, Prefect or MLflow, so it runs unchanged
in a unit test with a fake evaluator and in a flow that maps an evaluate task over a batch.
All randomness goes through one `random.Random` whose state is part of `state_dict()`.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from core.errors import InputError

from .ask_tell import AskTellSearch
from .pareto import check_objectives, select_parents

MUTATION_KINDS = ("expand", "swap", "add_stage")

# Tries per requested candidate before giving up on it: mutations of a small front can
# run out of unseen codes, and ask() must not loop forever looking for one.
MAX_ATTEMPTS = 100


# --------------------------------------------------------------------------- code grammar

def code_problem(code: object, max_stages: int | None = None) -> str | None:
    """Why `code` is not a structurally valid serial code, or None if it is.

    Light check only (digits 1/2, non-empty stages, stage count); the full check with
    block types and weight shapes lives in nas_models.serial_backbone.
    """
    if not isinstance(code, str) or not code:
        return f"must be a non-empty string like '11-21-21-21', got {code!r}"
    stages = code.split("-")
    if any(not s for s in stages):
        return f"has an empty stage in {code!r}; stages are runs of '1'/'2' separated by single '-'"
    bad = sorted({ch for ch in code if ch not in "12-"})
    if bad:
        return f"may only contain '1', '2' and '-', found {bad} in {code!r}"
    if max_stages is not None and len(stages) > max_stages:
        return f"has {len(stages)} stages in {code!r}, at most max_stages={max_stages} allowed"
    return None


def check_code(code: object, max_stages: int | None = None, field_name: str = "code") -> str:
    """Return `code` if valid, else raise InputError naming `field_name`."""
    problem = code_problem(code, max_stages)
    if problem is not None:
        raise InputError(field_name, problem)
    return code  # type: ignore[return-value]


def num_blocks(code: str) -> int:
    return len(code.replace("-", ""))


def num_stages(code: str) -> int:
    return code.count("-") + 1


# --------------------------------------------------------------------------- mutations
# Pure functions: a code and an injected rng in, a new code out (or None when the mutation
# is impossible). They never produce an invalid code from a valid one.

def expand(code: str, rng: random.Random) -> str:
    """Insert a stride-1 block into a random stage, after the stage's first block.

    The first block of a stage is the one that changes width (and usually stride); keeping
    it first means every existing block keeps its input/output shapes, so a child inherits
    all of its parent's weights.
    """
    stages = code.split("-")
    s = rng.randrange(len(stages))
    pos = rng.randint(1, len(stages[s]))
    stages[s] = stages[s][:pos] + "1" + stages[s][pos:]
    return "-".join(stages)


def swap_moves(code: str) -> list[tuple[int, int]]:
    """Feasible boundary moves as (boundary index, direction): -1 moves the '-' after stage
    `b` one block left (stage b gives its last block to stage b+1), +1 one block right."""
    lengths = [len(s) for s in code.split("-")]
    moves = []
    for b in range(len(lengths) - 1):
        if lengths[b] > 1:
            moves.append((b, -1))
        if lengths[b + 1] > 1:
            moves.append((b, +1))
    return moves


def swap(code: str, rng: random.Random) -> str | None:
    """Move one stage boundary by one block; None if every move would empty a stage."""
    moves = swap_moves(code)
    if not moves:
        return None
    b, direction = moves[rng.randrange(len(moves))]
    stages = code.split("-")
    if direction < 0:
        stages[b], stages[b + 1] = stages[b][:-1], stages[b][-1] + stages[b + 1]
    else:
        stages[b], stages[b + 1] = stages[b] + stages[b + 1][0], stages[b + 1][1:]
    return "-".join(stages)


def add_stage(code: str, rng: random.Random, max_stages: int) -> str | None:
    """Append a stage holding one stride-2 block; None when already at max_stages.

    `rng` is unused (appending is deterministic) but kept so all mutations share a shape.
    """
    del rng
    if num_stages(code) >= max_stages:
        return None
    return code + "-2"


def _check_ratio(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise InputError(name, f"must be a probability between 0 and 1, got {value!r}")
    return float(value)


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(name, f"must be a positive integer, got {value!r}")
    return value


def mutate(
    code: str,
    rng: random.Random,
    num_mutate: int,
    expend_ratio: float,
    add_stage_ratio: float,
    max_stages: int,
) -> tuple[str, list[str]]:
    """Apply `num_mutate` mutations in sequence; return the new code and the kinds applied.

    Each step: with probability add_stage_ratio add a stage (when below max_stages),
    otherwise expand with probability expend_ratio, otherwise swap — falling back to expand
    when no boundary can move (e.g. a single-stage code). Two separate draws keep the
    meaning of each ratio independent of the other.
    """
    _check_positive_int("num_mutate", num_mutate)
    expend_ratio = _check_ratio("expend_ratio", expend_ratio)
    add_stage_ratio = _check_ratio("add_stage_ratio", add_stage_ratio)
    _check_positive_int("max_stages", max_stages)
    check_code(code, max_stages)

    kinds: list[str] = []
    for _ in range(num_mutate):
        if rng.random() < add_stage_ratio:
            child = add_stage(code, rng, max_stages)
            if child is not None:
                code = child
                kinds.append("add_stage")
                continue
        if rng.random() < expend_ratio:
            code, kind = expand(code, rng), "expand"
        else:
            child = swap(code, rng)
            code, kind = (child, "swap") if child is not None else (expand(code, rng), "expand")
        kinds.append(kind)
    return code, kinds


# --------------------------------------------------------------------------- configuration

@dataclass
class SerialSearchConfig:
    """SpNasS settings; defaults are the seed's (Vega spnas.yml serial stage)."""

    max_sample: int = 20          # candidates in total, the initial code(s) included
    max_optimal: int = 5          # parents kept from the Pareto front
    num_mutate: int = 3           # mutations per child
    add_stage_ratio: float = 0.05
    expend_ratio: float = 0.3     # Vega's spelling, kept so configs carry over
    max_stages: int = 6
    objective_keys: tuple[str, ...] = ("mAP", "params")
    maximize: tuple[bool, ...] = (True, False)
    max_blocks: int = 60          # the seed's depth range tops out at 60 blocks
    # Where children's parents come from: "front" (SpNasS: the Pareto front so far) or "start"
    # (every child mutates an initial code: a random sample around the start, the random control).
    parents: str = "front"

    def __post_init__(self) -> None:
        for name in ("max_sample", "max_optimal", "num_mutate", "max_stages", "max_blocks"):
            _check_positive_int(name, getattr(self, name))
        self.add_stage_ratio = _check_ratio("add_stage_ratio", self.add_stage_ratio)
        self.expend_ratio = _check_ratio("expend_ratio", self.expend_ratio)
        self.objective_keys, self.maximize = check_objectives(self.objective_keys, self.maximize)
        if self.parents not in ("front", "start"):
            raise InputError("parents", f"must be 'front' or 'start', got {self.parents!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objective_keys"], d["maximize"] = list(self.objective_keys), list(self.maximize)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SerialSearchConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(unknown[0], f"is not a serial search setting; allowed: {sorted(known)}")
        return cls(**data)


@dataclass
class Candidate:
    """One proposed backbone: what to build and where it came from (for weight inheritance)."""

    id: int
    code: str
    parent_id: int | None
    mutations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "code": self.code, "parent_id": self.parent_id, "mutations": list(self.mutations)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(id=int(data["id"]), code=str(data["code"]),
                   parent_id=None if data.get("parent_id") is None else int(data["parent_id"]),
                   mutations=list(data.get("mutations", [])))


# --------------------------------------------------------------------------- the search

class SerialSearch(AskTellSearch[Candidate]):
    """SpNasS as ask/tell.

    >>> search = SerialSearch(["11-21-21-21"], SerialSearchConfig(max_sample=4), seed=0)
    >>> while not search.done:
    ...     batch = search.ask(2)
    ...     for c in batch:
    ...         search.tell(c.id, {"mAP": 0.5, "params": float(len(c.code))})
    """

    _STRATEGY = "SerialSearch"

    def __init__(self, init_codes: Sequence[str], config: SerialSearchConfig | None = None, seed: int = 0,
                 fits: Callable[[str], bool] | None = None) -> None:
        """`fits(code)`: whether a code is within the size limits; children that are not are
        skipped before training (the initial codes are always evaluated)."""
        self.config = config if config is not None else SerialSearchConfig()
        if not isinstance(self.config, SerialSearchConfig):
            raise InputError("config", f"must be a SerialSearchConfig, got {type(self.config).__name__}")
        super().__init__(seed, fits)
        if isinstance(init_codes, str) or not isinstance(init_codes, Sequence) or not init_codes:
            raise InputError("init_codes", "must be a non-empty list of codes like ['11-21-21-21']")
        cfg = self.config
        for code in init_codes:
            check_code(code, cfg.max_stages, "init_codes")
            if num_blocks(code) > cfg.max_blocks:
                raise InputError("init_codes",
                                 f"{code!r} has {num_blocks(code)} blocks, max_blocks is {cfg.max_blocks}")
        if len(set(init_codes)) != len(init_codes):
            raise InputError("init_codes", f"must not repeat a code, got {list(init_codes)!r}")
        if len(init_codes) > cfg.max_sample:
            raise InputError("init_codes", f"has {len(init_codes)} codes but max_sample is {cfg.max_sample}")
        self.init_codes = list(init_codes)

    def _objectives(self) -> tuple[tuple[str, ...], tuple[bool, ...]]:
        return self.config.objective_keys, self.config.maximize

    def _budget(self) -> int:
        return self.config.max_sample

    def _propose(self, n: int) -> list[Candidate]:
        """Initial codes first; afterwards children of the current Pareto parents."""
        out: list[Candidate] = []
        pending_init = self.init_codes[sum(c.parent_id is None for c in self._candidates):]
        for code in pending_init[:n]:
            out.append(self._add(code, None, []))
        if len(out) < n:
            out.extend(self._children(n - len(out)))
        return out

    def _children(self, n: int) -> list[Candidate]:
        cfg = self.config
        told = self._successes()
        if not told:
            return []
        if cfg.parents == "start":
            parents = [self._candidates[cid] for cid, _ in told if self._candidates[cid].parent_id is None]
        else:
            picks = select_parents([m for _, m in told], cfg.objective_keys, cfg.maximize, cfg.max_optimal)
            parents = [self._candidates[told[i][0]] for i in picks]
        if not parents:
            return []
        seen = {c.code for c in self._candidates}
        out: list[Candidate] = []
        for _ in range(n):
            for _attempt in range(MAX_ATTEMPTS):
                parent = parents[self._rng.randrange(len(parents))]
                code, kinds = mutate(parent.code, self._rng, cfg.num_mutate, cfg.expend_ratio,
                                     cfg.add_stage_ratio, cfg.max_stages)
                ok = num_blocks(code) <= cfg.max_blocks and code_problem(code, cfg.max_stages) is None
                if ok and code not in seen:
                    seen.add(code)
                    if self._admit(code):
                        out.append(self._add(code, parent.id, kinds))
                        break
            else:
                break  # neighbourhood of the front looks exhausted; yield what we have
        return out

    def _add(self, code: str, parent_id: int | None, kinds: list[str]) -> Candidate:
        cand = Candidate(id=len(self._candidates), code=code, parent_id=parent_id, mutations=kinds)
        self._candidates.append(cand)
        return cand

    # ---- persistence

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot; load it into a fresh search to continue identically."""
        return {
            "strategy": self._STRATEGY,
            "version": 1,
            "config": self.config.to_dict(),
            "seed": self.seed,
            "init_codes": list(self.init_codes),
            **self._progress_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a snapshot taken from a search with the same config and initial codes."""
        self._check_strategy(state)
        if state["config"] != self.config.to_dict() or list(state["init_codes"]) != self.init_codes:
            raise ValueError("state was saved by a search with a different config or init_codes; "
                             "use SerialSearch.from_state_dict(state) to rebuild that search")
        self._load_progress(state, Candidate.from_dict)
        self.seed = int(state["seed"])  # not checked above: the RNG state, not the seed, drives what follows

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> SerialSearch:
        search = cls(list(state["init_codes"]), SerialSearchConfig.from_dict(state["config"]), int(state["seed"]))
        search.load_state_dict(state)
        return search


__all__ = [
    "MUTATION_KINDS", "Candidate", "SerialSearch", "SerialSearchConfig", "add_stage", "check_code",
    "code_problem", "expand", "mutate", "num_blocks", "num_stages", "swap", "swap_moves",
]
