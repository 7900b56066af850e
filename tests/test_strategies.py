"""Fast tests for the SP-NAS search strategies: pure Python, fake evaluators, no torch."""
from __future__ import annotations

import itertools
import json
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InputError
from strategies.parallel import (
    ParallelSearch,
    count_neck_codes,
    sample_neck_code,
    sampling_probabilities,
)
from strategies.pareto import (
    crowding_distances,
    dominates,
    hypervolume,
    pareto_front,
    pareto_ranks,
    select_parents,
)
from strategies.serial import (
    SerialSearch,
    SerialSearchConfig,
    add_stage,
    code_problem,
    expand,
    mutate,
    num_blocks,
    num_stages,
    swap,
    swap_moves,
)

MAX_STAGES = 6
FAST = settings(max_examples=60, deadline=None)

# Random valid serial codes: 1..MAX_STAGES stages, each 1..6 blocks of '1'/'2'.
codes = st.lists(st.text(alphabet="12", min_size=1, max_size=6), min_size=1, max_size=MAX_STAGES).map("-".join)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def assert_valid(code: str, max_stages: int = MAX_STAGES) -> None:
    assert code_problem(code, max_stages) is None, code_problem(code, max_stages)


# --------------------------------------------------------------------------- mutations

@FAST
@given(codes, seeds)
def test_expand_adds_one_stride1_block_keeping_stages(code: str, seed: int) -> None:
    child = expand(code, random.Random(seed))
    assert_valid(child)
    assert child.count("-") == code.count("-")
    assert Counter(child) - Counter(code) == Counter("1") and len(child) == len(code) + 1
    # the first block of every stage (the width-changing one) stays in place
    assert [s[0] for s in child.split("-")] == [s[0] for s in code.split("-")]


@FAST
@given(codes, seeds)
def test_swap_moves_one_boundary_keeping_blocks_and_stages(code: str, seed: int) -> None:
    child = swap(code, random.Random(seed))
    if not swap_moves(code):
        assert child is None
        assert "-" not in code or all(len(s) == 1 for s in code.split("-"))
        return
    assert child is not None and child != code
    assert_valid(child)
    assert child.replace("-", "") == code.replace("-", "")  # same blocks, same order
    assert child.count("-") == code.count("-")
    lengths = [len(s) for s in code.split("-")]
    new_lengths = [len(s) for s in child.split("-")]
    diffs = [b - a for a, b in zip(lengths, new_lengths) if a != b]
    assert sorted(diffs) == [-1, 1]  # exactly one block crossed one boundary


@FAST
@given(codes, seeds)
def test_add_stage_appends_one_stride2_stage(code: str, seed: int) -> None:
    child = add_stage(code, random.Random(seed), MAX_STAGES)
    if code.count("-") + 1 >= MAX_STAGES:
        assert child is None
    else:
        assert child == code + "-2"
        assert_valid(child)


@FAST
@given(codes, seeds, st.integers(min_value=1, max_value=5))
def test_mutate_stays_valid_and_reports_kinds(code: str, seed: int, num_mutate: int) -> None:
    child, kinds = mutate(code, random.Random(seed), num_mutate, 0.3, 0.05, MAX_STAGES)
    assert_valid(child)
    assert len(kinds) == num_mutate and set(kinds) <= {"expand", "swap", "add_stage"}
    stages_added = kinds.count("add_stage")
    assert child.count("-") == code.count("-") + stages_added
    assert len(child.replace("-", "")) == len(code.replace("-", "")) + kinds.count("expand") + stages_added


def test_all_mutation_kinds_are_reachable_with_seed_config() -> None:
    cfg = SerialSearchConfig()
    rng = random.Random(0)
    seen: Counter[str] = Counter()
    for _ in range(400):
        _, kinds = mutate("11-21-21-21", rng, cfg.num_mutate, cfg.expend_ratio, cfg.add_stage_ratio, cfg.max_stages)
        seen.update(kinds)
    assert set(seen) == {"expand", "swap", "add_stage"}
    # roughly the configured mix: 5 % add_stage, then 30 % of the rest expand
    total = sum(seen.values())
    assert 0.02 < seen["add_stage"] / total < 0.09
    assert 0.22 < seen["expand"] / total < 0.36


def test_mutate_falls_back_to_expand_when_swap_impossible() -> None:
    child, kinds = mutate("2", random.Random(1), 1, 0.0, 0.0, 1)
    assert kinds == ["expand"] and child == "21"


def test_mutate_is_deterministic_by_seed() -> None:
    def chain(seed: int) -> list[tuple[str, list[str]]]:
        rng = random.Random(seed)
        return [mutate("111-2111-211111-211", rng, 3, 0.3, 0.05, 6) for _ in range(20)]

    assert chain(7) == chain(7)
    assert chain(7) != chain(8)


@pytest.mark.parametrize("code", ["", "11--21", "-11", "113-21", "11-21-21-21-2-2-2", 1121])
def test_mutate_rejects_invalid_codes(code: object) -> None:
    with pytest.raises(InputError):
        mutate(code, random.Random(0), 1, 0.3, 0.05, MAX_STAGES)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pareto

def brute_dominates(a: tuple[float, ...], b: tuple[float, ...], maximize: tuple[bool, ...]) -> bool:
    """Reference dominance written from the definition, in the user's directions."""
    no_worse = all((x >= y) if m else (x <= y) for x, y, m in zip(a, b, maximize))
    return no_worse and a != b


def brute_front(points: list[tuple[float, ...]], maximize: tuple[bool, ...]) -> list[int]:
    return [i for i, p in enumerate(points) if not any(brute_dominates(q, p, maximize) for q in points)]


def brute_ranks(points: list[tuple[float, ...]], maximize: tuple[bool, ...]) -> list[int]:
    """Peel fronts off one by one: O(n^2) per front."""
    ranks = [-1] * len(points)
    rank = 0
    while -1 in ranks:
        rest = [i for i, r in enumerate(ranks) if r < 0]
        for i in rest:
            if not any(brute_dominates(points[j], points[i], maximize) for j in rest):
                ranks[i] = rank
        rank += 1
    return ranks


def brute_hypervolume_2d(points: list[tuple[float, ...]], ref: tuple[float, float]) -> float:
    """Minimization, 2-D: sweep x ascending and sum the rectangles each new best y adds."""
    inside = sorted(p for p in points if p[0] < ref[0] and p[1] < ref[1])
    total, best_y = 0.0, ref[1]
    for x, y in inside:
        if y < best_y:
            total += (ref[0] - x) * (best_y - y)
            best_y = y
    return total


# Small integer grids make ties and exact duplicates frequent; 2 and 3 objectives.
def point_sets(dims: int, max_size: int = 25) -> st.SearchStrategy[list[tuple[float, ...]]]:
    coord = st.integers(0, 5).map(float)
    return st.lists(st.tuples(*[coord] * dims), min_size=0, max_size=max_size)


points_and_flags = st.integers(2, 3).flatmap(
    lambda d: st.tuples(point_sets(d), st.tuples(*[st.booleans()] * d))
)


@FAST
@given(points_and_flags)
def test_pareto_front_matches_brute_force(case: tuple[list[tuple[float, ...]], tuple[bool, ...]]) -> None:
    points, maximize = case
    assert pareto_front(points, maximize) == brute_front(points, maximize)


@FAST
@given(points_and_flags)
def test_pareto_ranks_match_brute_force(case: tuple[list[tuple[float, ...]], tuple[bool, ...]]) -> None:
    points, maximize = case
    ranks = pareto_ranks(points, maximize)
    assert ranks == brute_ranks(points, maximize)
    assert [i for i, r in enumerate(ranks) if r == 0] == pareto_front(points, maximize)
    for i, j in itertools.permutations(range(len(points)), 2):
        assert dominates(points[i], points[j], maximize) == brute_dominates(points[i], points[j], maximize)
        if dominates(points[i], points[j], maximize):
            assert ranks[i] < ranks[j]
        if points[i] == points[j]:
            assert ranks[i] == ranks[j]  # duplicates share a rank


def test_pareto_front_keeps_duplicates() -> None:
    pts = [(0.5, 10.0), (0.5, 10.0), (0.4, 12.0)]
    assert pareto_front(pts, (True, False)) == [0, 1]
    assert pareto_ranks(pts, (True, False)) == [0, 0, 1]


def test_pareto_handles_infinities_and_rejects_nan() -> None:
    inf = float("inf")
    pts = [(1.0, inf), (inf, 1.0), (0.0, 0.0)]
    assert pareto_front(pts, (True, True)) == [0, 1]
    assert pareto_ranks(pts, (True, True)) == [0, 0, 1]
    with pytest.raises(ValueError):
        pareto_front([(1.0, float("nan"))], (True, False))
    with pytest.raises(ValueError):
        pareto_ranks([(1.0, 2.0, 3.0)], (True, False))
    assert pareto_front([], (True, False)) == [] and pareto_ranks([], (True,)) == []


@FAST
@given(point_sets(2, max_size=30), st.tuples(st.booleans(), st.booleans()))
def test_hypervolume_matches_brute_force_2d(points: list[tuple[float, ...]], maximize: tuple[bool, bool]) -> None:
    # reference point in the user's directions: worst corner, a bit beyond the grid
    ref = tuple(-0.5 if m else 5.5 for m in maximize)
    sign = [-1.0 if m else 1.0 for m in maximize]
    as_min = [tuple(s * v for s, v in zip(sign, p)) for p in points]
    ref_min = (sign[0] * ref[0], sign[1] * ref[1])
    assert hypervolume(points, maximize, ref) == pytest.approx(brute_hypervolume_2d(as_min, ref_min))


def test_hypervolume_reference_point_convention() -> None:
    # mAP maximized (ref is a lower bound), params minimized (ref is an upper bound)
    pts = [(0.8, 2.0), (0.6, 1.0)]
    assert hypervolume(pts, (True, False), (0.0, 4.0)) == pytest.approx(0.8 * 2 + 0.6 * 1)
    assert hypervolume(pts, (True, False), (0.9, 4.0)) == 0.0  # no point beats the ref on mAP
    assert hypervolume([], (True, False), (0.0, 4.0)) == 0.0
    assert hypervolume([(0.5, 4.0)], (True, False), (0.0, 4.0)) == 0.0  # on the boundary: no volume
    assert hypervolume([(1.0, 1.0, 1.0)], (False, False, False), (2.0, 3.0, 4.0)) == pytest.approx(6.0)
    with pytest.raises(ValueError):
        hypervolume(pts, (True, False), (0.0,))
    with pytest.raises(ValueError):
        hypervolume(pts, (True, False), (0.0, float("inf")))
    with pytest.raises(ValueError):
        hypervolume([(float("inf"), 1.0)], (True, False), (0.0, 4.0))


@FAST
@given(st.integers(2, 3).flatmap(lambda d: point_sets(d, max_size=20)))
def test_crowding_distance_boundary_points_are_infinite(points: list[tuple[float, ...]]) -> None:
    dist = crowding_distances(points)
    assert len(dist) == len(points)
    if len(points) <= 2:
        assert all(d == float("inf") for d in dist)
        return
    for m in range(len(points[0])):
        values = [p[m] for p in points]
        lo, hi = min(values), max(values)
        if lo == hi:
            continue  # a zero-range objective neither rewards nor marks boundaries
        # ties at an extreme: pymoo's stable sort marks the lowest index at the minimum and
        # the highest index at the maximum
        assert dist[values.index(lo)] == float("inf")
        assert dist[len(values) - 1 - values[::-1].index(hi)] == float("inf")
    assert all(d >= 0 for d in dist)


def test_crowding_distance_interior_points() -> None:
    # the middle point's neighbours span the whole range on both objectives; pymoo averages
    # the normalized gaps over objectives
    dist = crowding_distances([(0.0, 4.0), (1.0, 3.0), (4.0, 0.0)])
    assert dist[0] == dist[2] == float("inf")
    assert dist[1] == pytest.approx(1.0)
    assert crowding_distances([]) == []


def test_select_parents_front_then_fill_and_truncate() -> None:
    recs = [{"mAP": m, "params": p} for m, p in [(0.9, 30), (0.5, 10), (0.7, 20), (0.6, 25), (0.4, 40)]]
    keys, maxi = ("mAP", "params"), (True, False)
    # front = {0, 1, 2}; k=5 fills from rank 1 (3) then rank 2 (4)
    assert select_parents(recs, keys, maxi, 5) == [0, 2, 1, 3, 4]
    assert select_parents(recs, keys, maxi, 4) == [0, 2, 1, 3]
    # k smaller than the front: crowding keeps the two extremes, best mAP first
    assert select_parents(recs, keys, maxi, 2) == [0, 1]
    assert select_parents(recs, keys, maxi, 1) == [0]
    assert select_parents([], keys, maxi, 3) == []
    with pytest.raises(ValueError):
        select_parents(recs, keys, maxi, 0)
    with pytest.raises(ValueError):
        select_parents([{"mAP": 1.0}], keys, maxi, 1)


@FAST
@given(points_and_flags, st.integers(1, 10))
def test_select_parents_takes_whole_ranks_first(case: tuple[list[tuple[float, ...]], tuple[bool, ...]], k: int) -> None:
    points, maximize = case
    keys = [f"o{d}" for d in range(len(maximize))]
    recs = [dict(zip(keys, p)) for p in points]
    chosen = select_parents(recs, keys, maximize, k)
    assert chosen == select_parents(recs, keys, maximize, k)  # deterministic
    assert len(chosen) == min(k, len(points)) and len(set(chosen)) == len(chosen)
    ranks = brute_ranks(points, maximize)
    worst = max((ranks[i] for i in chosen), default=-1)
    # nothing left out is better ranked than the worst chosen one; lower ranks come whole
    assert all(ranks[i] >= worst for i in range(len(points)) if i not in chosen)
    assert [ranks[i] for i in chosen] == sorted(ranks[i] for i in chosen)


# --------------------------------------------------------------------------- SerialSearch

def fake_metrics(code: str) -> dict[str, float]:
    """Deeper and more stages score higher, and cost more params: a real trade-off."""
    blocks = len(code.replace("-", ""))
    stages = code.count("-") + 1
    score = 0.1 * blocks + 0.05 * stages + 0.01 * code.count("2")
    return {"mAP": 1.0 - 1.0 / (1 + score), "params": float(blocks * stages)}


def run(search: SerialSearch | ParallelSearch, batch: int, evaluate, stop_after: int | None = None) -> int:
    steps = 0
    while not search.done:
        if stop_after is not None and steps >= stop_after:
            break
        cands = search.ask(batch)
        if not cands:  # everything told, nothing new: the search must call itself done
            assert search.done
        for c in cands:
            search.tell(c.id, evaluate(c.code))
        steps += 1
    return steps


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_serial_search_runs_to_budget_without_duplicates(batch: int) -> None:
    cfg = SerialSearchConfig(max_sample=20)
    search = SerialSearch(["11-21-21-21"], cfg, seed=3)
    first = search.ask(batch)
    assert [c.code for c in first] == ["11-21-21-21"] and first[0].parent_id is None
    assert search.ask(batch) == []  # no parents until the initial code is told
    search.tell(first[0].id, fake_metrics(first[0].code))
    run(search, batch, fake_metrics)
    assert search.done and search.ask(5) == []
    hist = search.history
    assert len(hist) == 20
    all_codes = [c.code for c, _ in hist]
    assert len(set(all_codes)) == len(all_codes)
    ids = {c.id for c, _ in hist}
    for c, _ in hist:
        assert_valid(c.code, cfg.max_stages)
        assert len(c.code.replace("-", "")) <= cfg.max_blocks
        if c.parent_id is not None:
            assert c.parent_id in ids and c.parent_id < c.id and len(c.mutations) == cfg.num_mutate
    front = search.pareto_ids()
    assert front and search.best().id in front
    best_map = max(m["mAP"] for c, m in hist if c.id in front)
    assert fake_metrics(search.best().code)["mAP"] == best_map
    json.dumps(search.state_dict())


def test_serial_search_respects_max_sample_and_multiple_init_codes() -> None:
    search = SerialSearch(["11-21-21-21", "111-2111-211111-211"], SerialSearchConfig(max_sample=5), seed=0)
    batch = search.ask(10)
    assert [c.code for c in batch] == ["11-21-21-21", "111-2111-211111-211"]
    for c in batch:
        search.tell(c.id, fake_metrics(c.code))
    more = search.ask(10)
    assert len(more) == 3 and search.ask(10) == []
    for c in more:
        search.tell(c.id, fake_metrics(c.code))
    assert search.done and len(search.history) == 5


def test_serial_search_failed_candidates_are_not_parents() -> None:
    search = SerialSearch(["11-21", "1-2"], SerialSearchConfig(max_sample=12), seed=5)
    a, b = search.ask(2)
    search.tell(a.id, None)
    search.tell(b.id, fake_metrics(b.code))
    run(search, 2, lambda code: fake_metrics(code) if len(code) % 3 else None)
    assert all(c.parent_id != a.id for c, _ in search.history)
    failed = {c.id for c, m in search.history if m is None}
    assert all(c.parent_id not in failed for c, _ in search.history)
    assert not set(search.pareto_ids()) & failed


def test_serial_search_stalls_when_everything_failed() -> None:
    search = SerialSearch(["11-21"], SerialSearchConfig(max_sample=10), seed=0)
    (c,) = search.ask(1)
    search.tell(c.id, None)
    assert search.ask(4) == [] and search.done
    with pytest.raises(ValueError):
        search.best()


def test_serial_search_is_deterministic_by_seed() -> None:
    def codes_for(seed: int) -> list[str]:
        s = SerialSearch(["11-21-21-21"], SerialSearchConfig(), seed=seed)
        run(s, 2, fake_metrics)
        return [c.code for c, _ in s.history]

    assert codes_for(11) == codes_for(11)
    assert codes_for(11) != codes_for(12)


@pytest.mark.parametrize("stop_after", [1, 2, 4])
def test_serial_state_dict_round_trip_continues_identically(stop_after: int) -> None:
    cfg = SerialSearchConfig(max_sample=16)
    reference = SerialSearch(["11-21-21-21"], cfg, seed=9)
    run(reference, 3, fake_metrics)

    first = SerialSearch(["11-21-21-21"], cfg, seed=9)
    run(first, 3, fake_metrics, stop_after=stop_after)
    pending = first.ask(3)  # snapshot with candidates in flight
    state = json.loads(json.dumps(first.state_dict()))
    resumed = SerialSearch.from_state_dict(state)
    assert resumed.pending_ids() == [c.id for c in pending]
    for cid in resumed.pending_ids():
        resumed.tell(cid, fake_metrics(resumed.candidates[cid].code))
    run(resumed, 3, fake_metrics)
    assert [(c.to_dict(), m) for c, m in resumed.history] == [(c.to_dict(), m) for c, m in reference.history]

    # load_state_dict into a fresh search built with the same arguments works too
    fresh = SerialSearch(["11-21-21-21"], cfg, seed=9)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    with pytest.raises(ValueError):
        SerialSearch(["11-21-21-21"], SerialSearchConfig(max_sample=17), seed=9).load_state_dict(state)


def test_tell_validation() -> None:
    search = SerialSearch(["11-21"], SerialSearchConfig(max_sample=3), seed=0)
    (c,) = search.ask(1)
    with pytest.raises(ValueError):
        search.tell(99, {"mAP": 0.1, "params": 1.0})
    with pytest.raises(ValueError):
        search.tell(c.id, {"mAP": 0.1})  # missing objective
    with pytest.raises(ValueError):
        search.tell(c.id, {"mAP": float("nan"), "params": 1.0})
    search.tell(c.id, {"mAP": 0.1, "params": 1, "note": "ok"})
    with pytest.raises(ValueError):
        search.tell(c.id, {"mAP": 0.1, "params": 1.0})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_sample": 0}, "max_sample"),
        ({"max_optimal": -1}, "max_optimal"),
        ({"num_mutate": 1.5}, "num_mutate"),
        ({"add_stage_ratio": 1.2}, "add_stage_ratio"),
        ({"expend_ratio": -0.1}, "expend_ratio"),
        ({"max_stages": True}, "max_stages"),
        ({"max_blocks": 0}, "max_blocks"),
        ({"objective_keys": ()}, "objective_keys"),
        ({"objective_keys": ("mAP", "mAP"), "maximize": (True, True)}, "objective_keys"),
        ({"maximize": (True,)}, "maximize"),
        ({"maximize": (1, 0)}, "maximize"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InputError) as err:
        SerialSearchConfig(**kwargs)
    assert err.value.field == field


def test_config_round_trip_and_unknown_keys() -> None:
    cfg = SerialSearchConfig(max_sample=7, objective_keys=["mAP", "macs"], maximize=[True, False])
    assert SerialSearchConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(InputError) as err:
        SerialSearchConfig.from_dict({"max_samples": 3})
    assert err.value.field == "max_samples"


@pytest.mark.parametrize(
    "init_codes",
    [[], "11-21", ["11-31"], ["11-21", "11-21"], ["1-1-1-1-1-1-1"], ["1" * 61], ["1", "2", "11", "12", "21", "22"]],
)
def test_serial_search_rejects_bad_init_codes(init_codes: object) -> None:
    with pytest.raises(InputError) as err:
        SerialSearch(init_codes, SerialSearchConfig(max_sample=5), seed=0)  # type: ignore[arg-type]
    assert err.value.field == "init_codes"


# --------------------------------------------------------------------------- ParallelSearch

def test_sampling_probabilities_inverse_to_cost() -> None:
    p = sampling_probabilities([1.0, 2.0, 4.0, 4.0])
    assert p == pytest.approx([0.5, 0.25, 0.125, 0.125])  # 1/c = 1, .5, .25, .25 of 2
    with pytest.raises(InputError):
        sampling_probabilities([1.0, 0.0])


def test_single_additions_follow_inverse_cost_frequencies() -> None:
    costs = [1.0, 2.0, 4.0, 8.0]
    rng = random.Random(1234)
    n = 20000
    counts = Counter(sample_neck_code(rng, costs, 3, 1).index(1) for _ in range(n))
    for stage, p in enumerate(sampling_probabilities(costs)):
        assert abs(counts[stage] / n - p) < 0.015, (stage, counts[stage] / n, p)


def test_additions_count_is_uniform_and_within_limits() -> None:
    rng = random.Random(0)
    sums = Counter()
    for _ in range(8000):
        code = sample_neck_code(rng, [1.0, 3.0, 9.0], 2, 5)
        assert all(0 <= k <= 2 for k in code)
        sums[sum(code)] += 1
    assert set(sums) == {1, 2, 3, 4, 5}
    assert all(abs(v / 8000 - 0.2) < 0.03 for v in sums.values())


def test_count_neck_codes_matches_enumeration() -> None:
    for stages, per, adds in [(4, 3, 4), (3, 2, 5), (1, 3, 2), (5, 1, 3)]:
        brute = sum(1 for c in itertools.product(range(per + 1), repeat=stages) if 1 <= sum(c) <= adds)
        assert count_neck_codes(stages, per, adds) == brute


def neck_metrics(code: list[int]) -> dict[str, float]:
    costs = [8.0, 4.0, 2.0, 1.0]
    return {"mAP": 0.5 + 0.02 * sum(k * (i + 1) for i, k in enumerate(code)),
            "macs": 100.0 + sum(k * c for k, c in zip(code, costs))}


@pytest.mark.parametrize("batch", [1, 4])
def test_parallel_search_codes_within_limits_no_duplicates(batch: int) -> None:
    search = ParallelSearch(4, [8.0, 4.0, 2.0, 1.0], max_sample=30, seed=2)
    run(search, batch, neck_metrics)
    codes_seen = [tuple(c.code) for c, _ in search.history]
    assert len(codes_seen) == 30 and len(set(codes_seen)) == 30
    for code in codes_seen:
        assert len(code) == 4 and all(0 <= k <= 3 for k in code) and 1 <= sum(code) <= 4
    assert search.best().id in search.pareto_ids()
    json.dumps(search.state_dict())


def test_parallel_search_budget_capped_by_space() -> None:
    search = ParallelSearch(2, [1.0, 1.0], max_sample=50, seed=0, max_per_stage=1, max_additions=2)
    run(search, 10, neck_metrics)
    assert sorted(tuple(c.code) for c, _ in search.history) == [(0, 1), (1, 0), (1, 1)]
    assert search.done


def test_parallel_state_dict_round_trip_continues_identically() -> None:
    args = dict(num_stages=4, extra_cost=[8.0, 4.0, 2.0, 1.0], max_sample=25, seed=4)
    reference = ParallelSearch(**args)
    run(reference, 3, neck_metrics)
    first = ParallelSearch(**args)
    run(first, 3, neck_metrics, stop_after=3)
    resumed = ParallelSearch.from_state_dict(json.loads(json.dumps(first.state_dict())))
    run(resumed, 3, neck_metrics)
    assert [(c.to_dict(), m) for c, m in resumed.history] == [(c.to_dict(), m) for c, m in reference.history]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_stages": 0, "extra_cost": []}, "num_stages"),
        ({"extra_cost": [1.0, 2.0]}, "extra_cost"),
        ({"extra_cost": [1.0, 0.0, 1.0, 1.0]}, "extra_cost"),
        ({"extra_cost": [1.0, -2.0, 1.0, 1.0]}, "extra_cost"),
        ({"extra_cost": [1.0, float("inf"), 1.0, 1.0]}, "extra_cost"),
        ({"max_sample": 0}, "max_sample"),
        ({"max_per_stage": 0}, "max_per_stage"),
        ({"max_additions": 0}, "max_additions"),
        ({"max_additions": 13}, "max_additions"),
        ({"objective_keys": ("mAP",)}, "maximize"),
    ],
)
def test_parallel_search_validation(kwargs: dict, field: str) -> None:
    args = dict(num_stages=4, extra_cost=[1.0, 2.0, 3.0, 4.0], max_sample=5, seed=0) | kwargs
    with pytest.raises(InputError) as err:
        ParallelSearch(**args)
    assert err.value.field == field
    with pytest.raises(ValueError):  # InputError is a ValueError, as NNI-style callers expect
        ParallelSearch(**args)


# --------------------------------------------------------------------------- limit-aware proposals

def test_serial_search_never_proposes_a_code_the_size_gate_refuses() -> None:
    asked: list[str] = []

    def small(code: str) -> bool:  # stands in for "params within the start network's"
        return num_blocks(code) <= 9 and num_stages(code) <= 4

    def fits(code: str) -> bool:
        asked.append(code)
        return small(code)

    search = SerialSearch(["11-21-21-21"], SerialSearchConfig(max_sample=12), seed=5, fits=fits)
    run(search, 2, fake_metrics)
    children = [c for c, _ in search.history if c.parent_id is not None]
    assert children and all(small(c.code) for c in children)
    assert search.skipped > 0 and len(asked) == len(set(asked))  # each code asked about once
    refused = set(search.state_dict()["refused"])
    assert len(refused) == search.skipped and not refused & {c.code for c, _ in search.history}
    resumed = SerialSearch.from_state_dict(json.loads(json.dumps(search.state_dict())))
    assert resumed.skipped == search.skipped


def test_serial_search_without_a_gate_is_unchanged() -> None:
    gated = SerialSearch(["11-21-21-21"], SerialSearchConfig(max_sample=10), seed=2, fits=lambda code: True)
    plain = SerialSearch(["11-21-21-21"], SerialSearchConfig(max_sample=10), seed=2)
    run(gated, 2, fake_metrics)
    run(plain, 2, fake_metrics)
    assert [c.code for c, _ in gated.history] == [c.code for c, _ in plain.history] and gated.skipped == 0


def test_parallel_search_skips_necks_over_the_limit_and_stops_when_none_fit() -> None:
    search = ParallelSearch(4, [8.0, 4.0, 2.0, 1.0], max_sample=30, seed=2, include_plain=True,
                            fits=lambda code: sum(code) <= 1)
    run(search, 4, neck_metrics)
    codes = [tuple(c.code) for c, _ in search.history]
    # the plain neck, then only the four single additions: everything else is skipped, untrained
    assert codes[0] == (0, 0, 0, 0) and sorted(codes[1:]) == [(0, 0, 0, 1), (0, 0, 1, 0), (0, 1, 0, 0), (1, 0, 0, 0)]
    assert search.done and search.skipped > 0
    nothing_fits = ParallelSearch(4, [8.0, 4.0, 2.0, 1.0], max_sample=5, seed=0, include_plain=True,
                                  fits=lambda code: False)
    run(nothing_fits, 2, neck_metrics)
    assert [tuple(c.code) for c, _ in nothing_fits.history] == [(0, 0, 0, 0)] and nothing_fits.done


def test_best_breaks_ties_on_the_first_objective_by_the_others() -> None:
    # The prune-ea case: accuracy 1.0 at 35.8 M MACs told first, 1.0 at 3.8 M later.
    search = SerialSearch(["11-21-21-21"], SerialSearchConfig(max_sample=4), seed=0)
    told = iter([{"mAP": 1.0, "params": 35.8e6}, {"mAP": 1.0, "params": 3.8e6},
                 {"mAP": 0.9, "params": 1e6}, {"mAP": 1.0, "params": 3.8e6}])
    run(search, 1, lambda code: next(told))
    assert search.best().id == 1 and search.best().id in search.pareto_ids()  # the smaller, then lowest id
    assert search.best({"params": 2e6}).id == 2


@given(st.lists(st.tuples(st.sampled_from([0.5, 0.8, 1.0]), st.integers(1, 5)), min_size=1, max_size=12))
@FAST
def test_best_is_never_dominated(points: list[tuple[float, int]]) -> None:
    search = SerialSearch(["11-21-21-21"], SerialSearchConfig(max_sample=len(points)), seed=1)
    told = iter([{"mAP": a, "params": float(p)} for a, p in points])
    run(search, 1, lambda code: next(told))
    if len(search.history) < len(points):
        return  # the mutation neighbourhood ran out before every point was told
    best = dict(search.history[search.best().id][1])
    assert not any(m["mAP"] >= best["mAP"] and m["params"] <= best["params"] and m != best
                   and (m["mAP"] > best["mAP"] or m["params"] < best["params"]) for _, m in search.history)


# --------------------------------------------------------------------------- random controls

def test_serial_control_mutates_only_the_start_code() -> None:
    search = SerialSearch(["11-21-21-21"], SerialSearchConfig(max_sample=10, parents="start"), seed=4)
    run(search, 3, fake_metrics)
    assert len(search.history) == 10 and all(c.parent_id in (None, 0) for c, _ in search.history)
    with pytest.raises(InputError, match="parents"):
        SerialSearchConfig(parents="best")


def test_sa_uniform_proposals_stay_in_the_window_and_never_repeat() -> None:
    from strategies.sa import SASearch

    search = SASearch([4, 4, 4], [0, 0, 0], seed=1, search_steps=20, constraint_of=lambda t: float(sum(t)),
                      low=0.0, high=6.0, proposal="uniform")
    while not search.done:
        for c in search.ask():
            search.tell(c.id, {"reward": float(c.tokens[0])})
    tokens = [tuple(c.tokens) for c, _ in search.history]
    assert tokens[0] == (0, 0, 0) and len(set(tokens)) == len(tokens) == 20 and all(sum(t) <= 6 for t in tokens)
    # not neighbours: uniform draws change several tokens at once
    assert any(sum(a != b for a, b in zip(x, y)) > 1 for x, y in zip(tokens, tokens[1:]))
    annealing = SASearch([4, 4, 4], [0, 0, 0], seed=1, search_steps=20, constraint_of=lambda t: float(sum(t)),
                         low=0.0, high=6.0)
    with pytest.raises(ValueError, match="proposal"):  # a control's state never resumes the search
        annealing.load_state_dict(search.state_dict())
