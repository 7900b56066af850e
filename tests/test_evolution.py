"""Fast tests for strategies.evolution (SPOS evolution as ask/tell): a fake MACs table and a
fake deterministic accuracy, no torch."""
from __future__ import annotations

import json
import random

import pytest

from core.errors import InputError
from strategies.evolution import EvolutionSearch

BLOCKS, CHOICES = 20, 4
SMALL = dict(population=20, topk=5, mutation_count=10, crossover_count=10, generations=6)


def make_table(seed: int = 0) -> list[list[int]]:
    """Per block, per choice MACs (a SPOS-style per-op lookup table)."""
    rng = random.Random(seed)
    return [[rng.randint(5, 40) * 1000 for _ in range(CHOICES)] for _ in range(BLOCKS)]


TABLE = make_table()
MIN_MACS = sum(min(row) for row in TABLE)
MAX_MACS = sum(max(row) for row in TABLE)
LIMIT = (MIN_MACS + MAX_MACS) // 2  # roughly half of the random paths are over it


def macs_of(choices: list[int]) -> int:
    return sum(TABLE[b][c] for b, c in enumerate(choices))


_W = [[random.Random(100 + b).random() for _ in range(CHOICES)] for b in range(BLOCKS)]


def accuracy(choices: list[int]) -> float:
    """Deterministic fake supernet accuracy in [0, 1]: more MACs and 'good' ops score higher."""
    quality = sum(_W[b][c] for b, c in enumerate(choices)) / BLOCKS
    return round(0.3 + 0.4 * quality + 0.2 * macs_of(choices) / MAX_MACS, 6)


def make(seed: int = 1, **kwargs) -> EvolutionSearch:
    return EvolutionSearch(macs_of, kwargs.pop("macs_limit", LIMIT), seed, min_macs=MIN_MACS, **{**SMALL, **kwargs})


def result(c, fail=lambda c: False):
    return None if fail(c) else {"acc": accuracy(c.choices), "macs": macs_of(c.choices)}


def drive(s: EvolutionSearch, batch: int = 1000, fail=lambda c: False, max_rounds: int | None = None) -> None:
    """What tasks/search.run_search does: re-run pending ids first, else ask a batch; tell all."""
    rounds = 0
    while not s.done and (max_rounds is None or rounds < max_rounds):
        pending = s.pending_ids()
        cands = [s.candidates[i] for i in pending] if pending else s.ask(batch)
        if not cands:
            break
        for c in cands:
            s.tell(c.id, result(c, fail))
        rounds += 1


def summary(s: EvolutionSearch) -> tuple:
    return ([c.to_dict() for c in s.candidates], [m for _, m in s.history], s.best().id, s.generation,
            [s.topk_of_generation(g) for g in range(s.generation + 1)], s.rejected_over_limit, s.done)


def roundtrip(s: EvolutionSearch, **kwargs) -> EvolutionSearch:
    state = json.loads(json.dumps(s.state_dict()))
    fresh = make(s.seed, **kwargs)
    fresh.load_state_dict(state)
    return fresh


# --------------------------------------------------------------------------- generations

def test_generations_budget_and_limit() -> None:
    s = make()
    assert s.budget == 20 + 5 * 20 and s.generation == -1 and not s.done
    first = s.ask(1000)
    assert len(first) == 20 and {c.generation for c in first} == {0} and s.generation == 0
    assert {c.origin for c in first} == {"random"}
    assert s.ask(5) == []  # generation 0 pending: nothing new until every path is told
    drive(s)
    assert s.done and s.generation == 5
    cands = s.candidates
    assert [c.id for c in cands] == list(range(len(cands))) and len(cands) <= s.budget
    assert [len(s.generation_ids(g)) for g in range(6)] == [20] + [20] * 5
    assert all(c.macs == macs_of(c.choices) <= LIMIT for c in cands)
    assert all(len(c.choices) == BLOCKS and all(0 <= x < CHOICES for x in c.choices) for c in cands)
    assert len({tuple(c.choices) for c in cands}) == len(cands)  # never proposed twice
    # the limit cuts about half of the random draws: they were counted, never proposed
    assert len(s.rejected_over_limit) == 6 and s.rejected_over_limit[0] > 0
    for g in range(1, 6):
        origins = [cands[i].origin for i in s.generation_ids(g)]
        assert origins == ["mutation"] * 10 + ["crossover"] * 10
    assert s.ask(10) == []


def test_seed_defaults() -> None:
    s = EvolutionSearch(macs_of, LIMIT, 0, min_macs=MIN_MACS)
    assert (s.num_blocks, s.num_choices, s.population, s.topk, s.mutation_count, s.mutation_prob,
            s.crossover_count, s.generations) == (20, 4, 50, 10, 25, 0.1, 25, 20)
    assert s.budget == 50 * 20
    drive(s)
    assert s.done and s.generation == 19 and len(s.candidates) == 1000
    assert s.best().id == max(s.within(None), key=lambda i: (s.history[i][1]["acc"], -i))


def test_ask_hands_out_a_generation_in_batches() -> None:
    s = make(seed=3)
    a, b, c = s.ask(8), s.ask(8), s.ask(8)
    assert [x.id for x in a + b + c] == list(range(20)) and len(c) == 4 and s.ask(8) == []
    for x in a + b:
        s.tell(x.id, result(x))
    assert s.ask(8) == [] and s.pending_ids() == [x.id for x in c]
    for x in c:
        s.tell(x.id, result(x))
    nxt = s.ask(3)
    assert [x.generation for x in nxt] == [1, 1, 1] and s.generation == 1
    with pytest.raises(ValueError):
        s.ask(-1)
    assert s.ask(0) == []


def test_batch_size_does_not_change_the_search() -> None:
    a, b = make(seed=4), make(seed=4)
    drive(a, batch=1000)
    drive(b, batch=3)
    assert summary(a) == summary(b)


# --------------------------------------------------------------------------- operators

def test_mutation_and_crossover_come_from_the_previous_topk() -> None:
    s = make(seed=5)
    drive(s)
    cands = s.candidates
    changed = []
    for c in cands:
        if c.generation == 0:
            assert c.parents == []
            continue
        parents_topk = s.topk_of_generation(c.generation - 1)
        assert set(c.parents) <= set(parents_topk)
        if c.origin == "mutation":
            (p,) = c.parents
            diff = sum(x != y for x, y in zip(c.choices, cands[p].choices))
            assert diff >= 1  # a mutant always differs from its parent
            changed.append(diff)
        else:
            p, q = c.parents
            assert all(x in (y, z) for x, y, z in zip(c.choices, cands[p].choices, cands[q].choices))
    # p = 0.1 per block, redrawn among 4 ops: 0.075 * 20 = 1.5 changes, ~1.9 given at least one
    assert 1.2 < sum(changed) / len(changed) < 3.0


def test_mutation_prob_one_redraws_everything() -> None:
    s = make(seed=6, mutation_prob=1.0, crossover_count=0, mutation_count=20)
    drive(s)
    cands = s.candidates
    diffs = [sum(x != y for x, y in zip(c.choices, cands[c.parents[0]].choices)) for c in cands if c.generation]
    assert 11 < sum(diffs) / len(diffs) < 19  # ~ 3/4 of 20 blocks change


def test_topk_matches_brute_force_and_skips_failures() -> None:
    fail = lambda c: c.id % 7 == 3  # noqa: E731
    s = make(seed=7)
    drive(s, fail=fail)
    told = {c.id: accuracy(c.choices) for c in s.candidates if not fail(c)}
    for g in range(s.generation + 1):
        end = s.generation_ids(g)[-1] + 1
        expect = sorted((i for i in told if i < end), key=lambda i: (-told[i], i))[:5]
        assert s.topk_of_generation(g) == expect
    assert s.topk_ids() == s.topk_of_generation(s.generation)
    failed = {c.id for c in s.candidates if fail(c)}
    assert failed and not failed & {p for c in s.candidates for p in c.parents}
    assert s.best().id == s.topk_ids()[0]
    with pytest.raises(ValueError):
        s.topk_of_generation(6)


def test_macs_recorded_and_filled_in() -> None:
    s = make(seed=8)
    c = s.ask(1)[0]
    s.tell(c.id, {"acc": 0.5})  # macs missing: taken from the candidate
    assert s.history[0][1] == {"acc": 0.5, "macs": c.macs}
    d = s.ask(1)[0]
    s.tell(d.id, {"acc": 0.9, "macs": d.macs})
    assert s.best().id == d.id
    assert s.best({"macs": min(c.macs, d.macs)}).id == (d.id if d.macs <= c.macs else c.id)


def test_tight_limit_counts_rejections_and_makes_fewer() -> None:
    tight = 335_000  # about 3 in 10,000 random paths fit: 20 x 1000 draws find only a few
    s = make(seed=9, macs_limit=tight)
    first = s.ask(1000)
    assert 0 < len(first) < 20 and s.rejected_over_limit[0] > 19_000
    assert s.rejected_over_limit[0] + s.rejected_repeats[0] + len(first) == 20 * 1000  # the draw cap
    drive(s)
    assert s.done and all(c.macs <= tight for c in s.candidates)
    assert sum(s.rejected_over_limit[1:]) > 0


def test_tiny_space_stalls_cleanly() -> None:
    # 2 blocks x 2 choices: 4 paths in all, so the search runs out and stops early
    s = EvolutionSearch(lambda p: sum(p), None, 0, num_blocks=2, num_choices=2, population=3, topk=2,
                        mutation_count=2, mutation_prob=1.0, crossover_count=2, generations=5)
    drive(s)
    assert s.done and len(s.candidates) == 4 < s.budget
    assert s.generation < 4 and sum(s.rejected_repeats) > 0
    assert s.ask(5) == []


def test_all_failed_generation_stalls() -> None:
    s = make(seed=10)
    drive(s, fail=lambda c: True)
    assert s.done and len(s.candidates) == 20 and s.topk_ids() == []
    with pytest.raises(ValueError):
        s.best()


# --------------------------------------------------------------------------- determinism & resume

def test_same_seed_same_search_other_seed_differs() -> None:
    runs = []
    for seed in (1, 1, 2):
        s = make(seed=seed)
        drive(s)
        runs.append(summary(s))
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]


def test_state_round_trip_continues_exactly() -> None:
    fail = lambda c: c.id % 11 == 4  # failures must replay too  # noqa: E731
    a = make(seed=11)
    drive(a, fail=fail)
    assert a.done

    # B: stop mid-generation 2 with candidates asked but untold, and some not yet handed out
    b = make(seed=11)
    drive(b, fail=fail, max_rounds=2)
    part = b.ask(12)
    assert {c.generation for c in part} == {2}
    for c in part[:5]:
        b.tell(c.id, result(c, fail))
    b = roundtrip(b)
    assert b.pending_ids() == [c.id for c in part[5:]] and b.generation == 2
    drive(b, fail=fail)
    assert summary(b) == summary(a)

    # C: stop right after a generation completed, before the next one exists
    c = make(seed=11)
    drive(c, fail=fail, max_rounds=3)
    assert not c.pending_ids()
    c = roundtrip(c)
    drive(c, batch=7, fail=fail)
    assert summary(c) == summary(a)

    # a fresh (never asked) and a finished state round-trip too
    assert roundtrip(make(seed=11)).state_dict() == make(seed=11).state_dict()
    assert roundtrip(a).state_dict() == a.state_dict()


def test_state_is_plain_json_and_checks_settings() -> None:
    s = make(seed=12)
    drive(s, max_rounds=2)
    state = s.state_dict()
    assert json.loads(json.dumps(state)) == state
    assert state["strategy"] == "EvolutionSearch" and state["settings"]["topk"] == 5
    assert set(state) >= {"settings", "candidates", "metrics", "generation", "gen_start", "queue",
                          "rejected_over_limit", "rng"}
    with pytest.raises(ValueError, match="topk"):
        make(seed=12, topk=4).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        make(seed=13).load_state_dict(state)
    with pytest.raises(ValueError, match="strategy"):
        make(seed=12).load_state_dict({**state, "strategy": "SASearch"})
    other = EvolutionSearch(lambda p: macs_of(p) + 1, LIMIT, 12, **SMALL)
    with pytest.raises(ValueError, match="macs_of"):
        other.load_state_dict(state)


# --------------------------------------------------------------------------- errors

def test_limit_below_the_smallest_path() -> None:
    with pytest.raises(InputError, match=f"smallest path has {MIN_MACS} MACs") as err:
        make(macs_limit=MIN_MACS - 1)
    assert err.value.field == "search.macs_limit"
    make(macs_limit=MIN_MACS)  # exactly the smallest path is allowed


@pytest.mark.parametrize("kwargs, field", [
    (dict(population=0), "search.population"),
    (dict(topk=0), "search.topk"),
    (dict(num_blocks=0), "search.num_blocks"),
    (dict(num_choices=1), "search.num_choices"),
    (dict(mutation_count=-1), "search.mutation_count"),
    (dict(crossover_count=1.5), "search.crossover_count"),
    (dict(generations=0), "search.generations"),
    (dict(mutation_count=0, crossover_count=0), "search.mutation_count"),
    (dict(mutation_prob=0.0), "search.mutation_prob"),
    (dict(mutation_prob=1.5), "search.mutation_prob"),
    (dict(macs_limit=float("nan")), "search.macs_limit"),
    (dict(macs_limit=-5), "search.macs_limit"),
    (dict(population=True), "search.population"),
])
def test_bad_settings(kwargs, field) -> None:
    with pytest.raises(InputError) as err:
        make(**kwargs)
    assert err.value.field == field


def test_bad_macs_of() -> None:
    with pytest.raises(InputError):
        EvolutionSearch("table", LIMIT)  # type: ignore[arg-type]
    s = EvolutionSearch(lambda p: float("nan"), None, 0, **SMALL)
    with pytest.raises(ValueError, match="macs_of"):
        s.ask(1)
