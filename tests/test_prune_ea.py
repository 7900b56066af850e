"""Fast tests for strategies.prune_ea (NSGA-III channel pruning as ask/tell): fake evaluator,
no torch."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from core.errors import InputError
from strategies.pareto import hypervolume
from strategies.prune_ea import (
    PruneEASearch,
    SegmentFlipMutation,
    SegmentResampleMutation,
    encoding_from,
    encoding_to_str,
    reference_directions,
)

N_VAR = 64
SMALL = dict(num_generation=6, num_individual=8, random_models=16)


def make_evaluator(n_var: int = N_VAR, seed: int = 7):
    """A fake pruning problem: every channel costs some MACs and carries some importance;
    accuracy saturates in the kept importance, so the best masks keep the channels with the
    highest importance per MAC."""
    rng = random.Random(seed)
    cost = [rng.randint(1, 9) * 1000 for _ in range(n_var)]
    weight = [rng.random() ** 2 for _ in range(n_var)]
    total = sum(weight)

    def evaluate(bits: list[int]) -> dict[str, float]:
        kept = sum(w for w, b in zip(weight, bits) if b)
        return {
            "macs": float(sum(c for c, b in zip(cost, bits) if b)),
            "params": float(sum(bits) * 10),
            "acc": 0.1 + 0.85 * (1.0 - math.exp(-4.0 * kept / total)),
        }

    evaluate.max_macs = float(sum(cost))  # type: ignore[attr-defined]
    return evaluate


def drive(search: PruneEASearch, evaluate, batch: int = 1000, fail=lambda c: False, max_rounds: int | None = None) -> None:
    """What tasks/search.run_search does: re-run pending ids first, else ask a batch; tell all."""
    rounds = 0
    while not search.done and (max_rounds is None or rounds < max_rounds):
        pending = search.pending_ids()
        cands = [search.candidates[i] for i in pending] if pending else search.ask(batch)
        if not cands:
            break
        for c in cands:
            search.tell(c.id, None if fail(c) else evaluate(c.encoding))
        rounds += 1


def roundtrip(search: PruneEASearch, **kwargs) -> PruneEASearch:
    state = json.loads(json.dumps(search.state_dict()))
    fresh = PruneEASearch(N_VAR, seed=search.seed, **{**SMALL, **kwargs})
    fresh.load_state_dict(state)
    return fresh


def summary(search: PruneEASearch) -> tuple:
    return (
        [(c.id, c.generation, c.code) for c in search.candidates],
        search.pareto_ids(),
        [search.front_of_generation(g) for g in range(search.generation + 1)],
        search.done,
    )


def brute_front(points: dict[int, tuple[float, float]]) -> list[int]:
    """Ids whose (acc max, macs min) point no other point dominates."""
    def dom(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])
    return sorted(i for i, p in points.items() if not any(dom(q, p) for j, q in points.items() if j != i))


# --------------------------------------------------------------------------- accounting

def test_budget_ids_and_generations() -> None:
    ev = make_evaluator()
    s = PruneEASearch(N_VAR, seed=1, **SMALL)
    assert s.budget == 16 + 6 * 8
    first = s.ask(1000)
    assert len(first) == 16 and all(c.generation == 0 for c in first)
    assert [c.id for c in first] == list(range(16))
    assert s.ask(5) == []  # generation 0 is pending: nothing new until it is told
    for c in first:
        s.tell(c.id, ev(c.encoding))
    drive(s, ev)
    assert s.done
    cands = s.candidates
    assert len(cands) == s.budget
    assert [c.id for c in cands] == list(range(s.budget))
    assert [s.generation_of(c.id) for c in cands] == [0] * 16 + [g for g in range(1, 7) for _ in range(8)]
    assert [len(s.generation_ids(g)) for g in range(7)] == [16] + [8] * 6
    assert len({c.code for c in cands}) == len(cands)  # nothing asked twice
    assert all(len(c.encoding) == N_VAR and set(c.encoding) <= {0, 1} for c in cands)
    d = cands[20].to_dict()
    assert d == {"id": 20, "generation": cands[20].generation, "encoding": cands[20].code}
    assert s.ask(10) == []


def test_vega_defaults_budget() -> None:
    s = PruneEASearch(464, seed=0)
    assert (s.num_generation, s.num_individual, s.random_models) == (31, 32, 64)
    assert s.budget == 1056
    assert len(s.ask(1000)) == 64


def test_no_generations_is_random_sampling_alone() -> None:
    # the random control: exactly random_models encodings, all generation 0, nothing bred after
    ev = make_evaluator()
    s = PruneEASearch(N_VAR, seed=2, num_generation=0, num_individual=8, random_models=24)
    assert s.budget == 24
    drive(s, ev, batch=5)
    assert s.done and len(s.candidates) == 24
    assert {c.generation for c in s.candidates} == {0} and s.ask(8) == []
    assert roundtrip(s, num_generation=0, num_individual=8, random_models=24).candidates == s.candidates


def test_ask_hands_out_a_generation_in_batches() -> None:
    ev = make_evaluator()
    s = PruneEASearch(N_VAR, seed=3, **SMALL)
    a = s.ask(10)
    b = s.ask(10)
    assert [c.id for c in a + b] == list(range(16)) and s.ask(10) == []
    for c in a + b:
        s.tell(c.id, ev(c.encoding))
    nxt = s.ask(3)
    assert [c.generation for c in nxt] == [1, 1, 1] and s.generation == 1


def test_ask_rejects_bad_n() -> None:
    s = PruneEASearch(N_VAR, seed=3, **SMALL)
    with pytest.raises(ValueError):
        s.ask(-1)
    assert s.ask(0) == []


# --------------------------------------------------------------------------- resume

def test_state_round_trip_continues_exactly() -> None:
    ev = make_evaluator()
    fail = lambda c: c.id % 13 == 5  # a few failures, which must replay too  # noqa: E731
    a = PruneEASearch(N_VAR, seed=11, **SMALL)
    drive(a, ev, fail=fail)
    assert a.done

    # B: stop after two complete generations (0 and 1), restore, continue
    b = PruneEASearch(N_VAR, seed=11, **SMALL)
    drive(b, ev, fail=fail, max_rounds=2)
    assert b.generation == 1 and not b.pending_ids()
    b = roundtrip(b)
    drive(b, ev, fail=fail)
    assert summary(b) == summary(a)

    # C: stop in the middle of generation 3: all asked, some told, some pending
    c = PruneEASearch(N_VAR, seed=11, **SMALL)
    drive(c, ev, fail=fail, max_rounds=3)
    gen = c.ask(1000)
    assert gen and {x.generation for x in gen} == {3}
    for x in gen[:3]:
        c.tell(x.id, None if fail(x) else ev(x.encoding))
    c = roundtrip(c)
    assert c.pending_ids() == [x.id for x in gen[3:]]
    drive(c, ev, fail=fail)
    assert summary(c) == summary(a)

    # D: stop while a generation is only partly handed out (the rest still queued)
    d = PruneEASearch(N_VAR, seed=11, **SMALL)
    drive(d, ev, fail=fail, max_rounds=2)
    part = d.ask(3)
    for x in part[:2]:
        d.tell(x.id, None if fail(x) else ev(x.encoding))
    d = roundtrip(d)
    drive(d, ev, batch=3, fail=fail)
    assert summary(d) == summary(a)

    # the finished state round-trips too
    assert roundtrip(a).state_dict() == a.state_dict()


def test_state_is_plain_json_and_checks_settings() -> None:
    ev = make_evaluator()
    s = PruneEASearch(N_VAR, seed=2, **SMALL)
    drive(s, ev, max_rounds=2)
    state = json.loads(json.dumps(s.state_dict()))
    assert state["strategy"] == "PruneEASearch"
    assert state["settings"]["num_individual"] == 8
    assert len(state["candidates"]) == 16 + 8
    other = PruneEASearch(N_VAR, seed=2, num_generation=6, num_individual=4, random_models=16)
    with pytest.raises(ValueError, match="num_individual"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="strategy"):
        PruneEASearch(N_VAR, seed=2, **SMALL).load_state_dict({**state, "strategy": "SerialSearch"})
    tampered = json.loads(json.dumps(state))
    flipped = tampered["candidates"][20]["encoding"]
    tampered["candidates"][20]["encoding"] = ("0" if flipped[0] == "1" else "1") + flipped[1:]
    with pytest.raises(ValueError, match="does not replay"):
        PruneEASearch(N_VAR, seed=2, **SMALL).load_state_dict(tampered)


def test_same_seed_same_search_other_seed_differs() -> None:
    ev = make_evaluator()
    runs = []
    for seed in (5, 5, 6):
        s = PruneEASearch(N_VAR, seed=seed, **SMALL)
        drive(s, ev)
        runs.append(summary(s))
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]


# --------------------------------------------------------------------------- fronts and search quality

def test_fronts_match_brute_force() -> None:
    ev = make_evaluator()
    s = PruneEASearch(N_VAR, seed=4, **SMALL)
    drive(s, ev, fail=lambda c: c.id % 7 == 0)
    told = {c.id: (m["acc"], m["macs"]) for c, m in s.history if m is not None}
    assert s.pareto_ids() == brute_front(told)
    for g in range(s.generation + 1):
        upto = {cid: p for cid, p in told.items() if s.generation_of(cid) <= g}
        assert s.front_of_generation(g) == brute_front(upto)
    assert s.front_of_generation(s.generation) == s.pareto_ids()
    assert not any(cid % 7 == 0 for cid in s.pareto_ids())  # failures are never on a front


def test_nsga3_improves_hypervolume_over_random_init() -> None:
    ev = make_evaluator()
    ref = (0.0, ev.max_macs)
    gains = []
    for seed in range(3):
        s = PruneEASearch(N_VAR, seed=seed, num_generation=15, num_individual=16, random_models=32)
        drive(s, ev)
        metrics = {c.id: m for c, m in s.history if m is not None}

        def hv(ids):
            return hypervolume([(metrics[i]["acc"], metrics[i]["macs"]) for i in ids], (True, False), ref)

        gains.append(hv(s.pareto_ids()) / hv(s.front_of_generation(0)))
        # the front only grows its hypervolume generation by generation
        per_gen = [hv(s.front_of_generation(g)) for g in range(s.generation + 1)]
        assert all(b >= a for a, b in zip(per_gen, per_gen[1:]))
    assert min(gains) > 1.02, gains


def test_acc_floor_keeps_chance_level_networks_out_of_the_survivors() -> None:
    # networks keeping under a third of the channels score at chance (the cheap end of the front)
    ev = make_evaluator()

    def evaluate(bits: list[int]) -> dict[str, float]:
        m = ev(bits)
        return {**m, "acc": 0.1} if sum(bits) < N_VAR // 3 else m

    def survivors(floor: float) -> tuple[list[float], PruneEASearch]:
        s = PruneEASearch(N_VAR, seed=4, num_generation=2, num_individual=8, random_models=32, acc_floor=floor)
        drive(s, evaluate, max_rounds=2)  # generations 0 and 1 told: pymoo has chosen 8 survivors of 40
        return [evaluate([int(b) for b in x])["acc"] for x in s._algorithm.pop.get("X")], s

    without, _ = survivors(0.0)
    with_floor, s = survivors(0.15)
    assert min(without) == 0.1  # a chance-level network holds a survivor's place
    assert min(with_floor) > 0.15 and len(with_floor) == len(without) == 8
    assert any(m["acc"] == 0.1 for _, m in s.history)  # still in the history and its front
    drive(s, evaluate)
    assert roundtrip(s, num_generation=2, num_individual=8, random_models=32, acc_floor=0.15).candidates == s.candidates
    with pytest.raises(ValueError, match="acc_floor"):  # a state saved with the floor needs it
        roundtrip(s, num_generation=2, num_individual=8, random_models=32)


def test_best_is_most_accurate_within_limits() -> None:
    ev = make_evaluator()
    s = PruneEASearch(N_VAR, seed=8, **SMALL)
    drive(s, ev)
    metrics = {c.id: m for c, m in s.history if m is not None}
    limit = sorted(m["macs"] for m in metrics.values())[len(metrics) // 2]
    best = s.best({"macs": limit})
    assert metrics[best.id]["macs"] <= limit
    assert metrics[best.id]["acc"] == max(m["acc"] for m in metrics.values() if m["macs"] <= limit)
    assert s.best().id in s.pareto_ids()


def test_three_objectives_need_params() -> None:
    ev = make_evaluator()
    s = PruneEASearch(N_VAR, seed=9, objectives=("macs", "error", "params"), **SMALL)
    c = s.ask(1)[0]
    with pytest.raises(ValueError, match="params"):
        s.tell(c.id, {"macs": 1.0, "acc": 0.5})
    s.tell(c.id, ev(c.encoding))
    drive(s, ev)
    assert s.done and len(s.candidates) == s.budget


def test_bitflip_mutation_option_runs() -> None:
    ev = make_evaluator()
    s = PruneEASearch(N_VAR, seed=9, mutation="bitflip", mutation_prob=1.0, crossover_prob=0.9, **SMALL)
    drive(s, ev)
    assert s.done and len({c.code for c in s.candidates}) == len(s.candidates) == s.budget


def test_tell_checks_metrics() -> None:
    s = PruneEASearch(N_VAR, seed=1, **SMALL)
    c = s.ask(2)
    with pytest.raises(ValueError, match="acc"):
        s.tell(c[0].id, {"macs": 10.0, "acc": 91.5})  # a percentage, not a fraction
    with pytest.raises(ValueError, match="acc"):
        s.tell(c[0].id, {"macs": 10.0})
    with pytest.raises(ValueError, match="macs"):
        s.tell(c[0].id, {"macs": -1.0, "acc": 0.5})
    s.tell(c[0].id, {"macs": 10.0, "acc": 0.5})
    with pytest.raises(ValueError, match="already"):
        s.tell(c[0].id, {"macs": 10.0, "acc": 0.5})
    with pytest.raises(ValueError, match="unknown"):
        s.tell(99, None)


def test_all_failed_generation_still_moves_on() -> None:
    ev = make_evaluator()
    s = PruneEASearch(N_VAR, seed=1, **SMALL)
    drive(s, ev, fail=lambda c: c.generation == 0)
    assert s.done and len(s.candidates) == s.budget
    assert all(s.generation_of(i) > 0 for i in s.pareto_ids())


# --------------------------------------------------------------------------- repair, tiny spaces, operators

def test_repair_is_applied_to_every_asked_encoding() -> None:
    ev = make_evaluator()
    seen = []

    def repair(bits: list[int]) -> list[int]:
        seen.append(list(bits))
        fixed = list(bits)
        if not any(fixed[:8]):  # "group" 0..7 must keep a channel
            fixed[0] = 1
        return fixed

    s = PruneEASearch(N_VAR, seed=3, repair=repair, **SMALL)
    drive(s, ev)
    assert seen and all(any(c.encoding[:8]) for c in s.candidates)
    # round trip needs the same repair; without it the state refuses to load
    state = json.loads(json.dumps(s.state_dict()))
    with pytest.raises(ValueError, match="repair"):
        PruneEASearch(N_VAR, seed=3, **SMALL).load_state_dict(state)
    again = PruneEASearch(N_VAR, seed=3, repair=repair, **SMALL)
    again.load_state_dict(state)
    assert summary(again) == summary(s)


def test_bad_repair_output_is_reported() -> None:
    s = PruneEASearch(N_VAR, seed=3, repair=lambda bits: bits[:-1], **SMALL)
    with pytest.raises(ValueError, match="repair"):
        s.ask(1)


def test_tiny_space_stops_without_repeats() -> None:
    ev = make_evaluator(n_var=3)
    s = PruneEASearch(3, seed=0, num_generation=5, num_individual=4, random_models=6)
    drive(s, ev)
    assert s.done
    codes = [c.code for c in s.candidates]
    assert len(set(codes)) == len(codes) <= 8


def test_segment_flip_flips_one_contiguous_segment() -> None:
    class P:
        n_var = 40

    X = np.zeros((50, 40), dtype=bool)
    out = SegmentFlipMutation()._do(P(), X, random_state=np.random.default_rng(0))
    for row in out:
        idx = np.flatnonzero(row)
        assert len(idx) >= 1 and idx[-1] - idx[0] + 1 == len(idx)
    assert out[:, -1].any()  # the last bit can flip (unlike Vega's randint(0, length))


def test_resample_redraws_one_segment_at_the_parents_keep_rate() -> None:
    class P:
        n_var = 400

    rng = np.random.default_rng(1)
    keep = rng.random((200, 1))
    X = rng.random((200, 400)) < keep
    out = SegmentResampleMutation()._do(P(), X, random_state=np.random.default_rng(2))
    assert (out != X).any(axis=1).sum() > 150
    # density is kept on average (a flipped segment would pull every row towards 1/2)
    assert abs(float((out.mean(axis=1) - X.mean(axis=1)).mean())) < 0.01
    dense = X.mean(axis=1) > 0.85
    assert out[dense].mean() > 0.8
    # all-kept and all-pruned parents have nothing to redraw
    ends = np.array([[True] * 400, [False] * 400])
    assert (SegmentResampleMutation()._do(P(), ends, random_state=np.random.default_rng(0)) == ends).all()


def test_resample_mutation_option_runs_and_resumes() -> None:
    ev = make_evaluator()
    s = PruneEASearch(N_VAR, seed=9, mutation="resample", mutation_prob=1.0, **SMALL)
    drive(s, ev, max_rounds=3)
    resumed = roundtrip(s, mutation="resample", mutation_prob=1.0)
    drive(s, ev)
    drive(resumed, ev)
    assert s.done and len({c.code for c in s.candidates}) == len(s.candidates) == s.budget
    assert summary(resumed) == summary(s)


def test_reference_directions_fit_the_population() -> None:
    assert len(reference_directions(2, 32)) == 32
    assert len(reference_directions(3, 32)) == 28
    assert len(reference_directions(2, 1)) == 2  # at least the axis directions


def test_encoding_helpers() -> None:
    assert encoding_to_str([1, 0, 1]) == "101"
    assert encoding_from("101") == [1, 0, 1]
    assert encoding_from([True, False]) == [1, 0]
    with pytest.raises(InputError) as err:
        encoding_from("10a")
    assert err.value.field == "encoding"
    with pytest.raises(InputError, match="3 bits"):
        encoding_from([1, 0], n_var=3)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(n_var=0), "n_var"),
        (dict(n_var=4.5), "n_var"),
        (dict(num_generation=-1), "num_generation"),
        (dict(num_individual=0), "num_individual"),
        (dict(random_models=4, num_individual=8), "random_models"),
        (dict(objectives=("macs", "acc")), "objectives"),
        (dict(objectives="macs"), "objectives"),
        (dict(seed=-1), "seed"),
        (dict(seed=True), "seed"),
        (dict(mutation="gauss"), "mutation"),
        (dict(mutation_prob=1.5), "mutation_prob"),
        (dict(crossover_prob=-0.1), "crossover_prob"),
        (dict(repair="fix"), "repair"),
    ],
)
def test_bad_arguments_name_their_field(kwargs: dict, field: str) -> None:
    args = dict(n_var=N_VAR, seed=0, **SMALL)
    args.update(kwargs)
    with pytest.raises(InputError) as err:
        PruneEASearch(**args)
    assert err.value.field == field
