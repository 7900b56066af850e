"""Path samplers: uniform paths, and FLOPs-bin sampling checked against brute force (flat over
bins, uniform within a bin, always inside the range), determinism and errors. Pure Python;
the file runs in a few seconds."""
from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2

from core.errors import InputError
from strategies.path_sampler import FlopsBinSampler, path_cost, uniform

# The small SPOS preset's per-op MACs at 32 px (latency/macs_table.py), so the sampler is
# tested on the cost shape it meets in training without importing torch here.
SMALL_FIXED = 576_000
SMALL_PER_BLOCK = (
    [[466944, 598016, 794624, 409600]] + [[167936, 233472, 331776, 307200]] * 3
    + [[430080, 495616, 593920, 335872]] + [[149504, 182272, 231424, 251904]] * 3
    + [[302848, 331520, 374528, 208384]] + [[80640, 92928, 111360, 131328]] * 7
    + [[149120, 159360, 174720, 97536]] + [[35072, 39168, 45312, 56064]] * 3
)
SMALL_MIN = SMALL_FIXED + sum(min(r) for r in SMALL_PER_BLOCK)
SMALL_MAX = SMALL_FIXED + sum(max(r) for r in SMALL_PER_BLOCK)


def _bin(cost: float, low: float, high: float, bins: int) -> int | None:
    """Reference binning, written independently of the sampler: [e_b, e_b+1), last closed."""
    edges = [low + (high - low) * b / bins for b in range(bins + 1)]
    edges[-1] = high
    if not low <= cost <= high:
        return None
    for b in range(bins):
        if edges[b] <= cost < edges[b + 1] or (b == bins - 1 and cost == high):
            return b
    return None


def _all_paths(per_block: list[list[int]]) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(len(r)) for r in per_block)))


def _chi2_stat(counts: list[int]) -> float:
    expected = sum(counts) / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


def test_uniform_paths() -> None:
    rng = random.Random(3)
    paths = [uniform(rng) for _ in range(2000)]
    assert all(len(p) == 20 and all(0 <= c < 4 for c in p) for p in paths)
    per_choice = Counter(c for p in paths for c in p)  # 40k draws, 10k expected each
    assert _chi2_stat([per_choice[c] for c in range(4)]) < chi2.ppf(0.999, 3)
    assert [uniform(random.Random(9)) for _ in range(3)] == [uniform(random.Random(9))] * 3
    assert uniform(random.Random(1), n_blocks=5, n_choices=2) != uniform(random.Random(2), 5, 2)


def test_bins_are_flat_on_the_small_preset_costs() -> None:
    low, high, bins = SMALL_MIN, SMALL_MAX, 8
    sampler = FlopsBinSampler(SMALL_PER_BLOCK, SMALL_FIXED, low, high, bins)
    rng = random.Random(0)
    costs = [path_cost(SMALL_PER_BLOCK, SMALL_FIXED, sampler.sample(rng)) for _ in range(4000)]
    assert all(low <= c <= high for c in costs)
    hist = Counter(_bin(c, low, high, bins) for c in costs)
    assert None not in hist
    counts = [hist[b] for b in range(bins)]
    assert _chi2_stat(counts) < chi2.ppf(0.999, bins - 1), counts
    # Uniform paths would put almost nothing in the outer bins.
    rng = random.Random(0)
    plain = Counter(_bin(path_cost(SMALL_PER_BLOCK, SMALL_FIXED, uniform(rng)), low, high, bins)
                    for _ in range(4000))
    assert plain[0] + plain[bins - 1] < 40


def test_narrow_range_stays_inside() -> None:
    low, high = 3_900_000, 4_100_000
    sampler = FlopsBinSampler(SMALL_PER_BLOCK, SMALL_FIXED, low, high, bins=4,
                              field="supernet.flops_range")
    rng = random.Random(5)
    for _ in range(500):
        path = sampler.sample(rng)
        assert low <= sampler.cost(path) <= high
        assert len(path) == 20


@pytest.mark.parametrize("enumerate_limit", [200_000, 0])  # 0: uncertain bins use rejection only
@pytest.mark.parametrize("coarse", [False, True])
def test_uniform_within_bin_by_brute_force(coarse: bool, enumerate_limit: int) -> None:
    # 4 blocks x 4 choices = 256 paths, enumerable; a coarse resolution makes quantization
    # error comparable to a bin, so the exact-cost check and rejection do real work.
    gen = random.Random(11)
    per_block = [[gen.randrange(100, 1000) for _ in range(4)] for _ in range(4)]
    fixed = 50
    costs = {p: path_cost(per_block, fixed, p) for p in _all_paths(per_block)}
    low, high, bins = min(costs.values()), max(costs.values()), 3
    resolution = (high - low) / bins / 3 if coarse else None
    sampler = FlopsBinSampler(per_block, fixed, low, high, bins, resolution,
                              enumerate_limit=enumerate_limit)
    members = {b: sorted(p for p, c in costs.items() if _bin(c, low, high, bins) == b)
               for b in range(bins)}
    rng = random.Random(1)
    draws = 150 * len(costs)
    seen: Counter[tuple[int, ...]] = Counter(tuple(sampler.sample(rng)) for _ in range(draws))
    per_bin = [sum(seen[p] for p in members[b]) for b in range(bins)]
    assert _chi2_stat(per_bin) < chi2.ppf(0.999, bins - 1), per_bin
    for b in range(bins):
        counts = [seen[p] for p in members[b]]
        assert sum(counts) == per_bin[b]  # nothing sampled outside its bin
        if len(counts) > 1:
            assert _chi2_stat(counts) < chi2.ppf(0.999, len(counts) - 1), (b, counts)


def test_sample_in_bin_only_returns_that_bin() -> None:
    sampler = FlopsBinSampler(SMALL_PER_BLOCK, SMALL_FIXED, SMALL_MIN, SMALL_MAX, 5)
    rng = random.Random(2)
    for b in range(5):
        for _ in range(40):
            assert sampler.bin_of(sampler.cost(sampler.sample_in_bin(rng, b))) == b


def test_same_seed_same_paths() -> None:
    def run(seed: int) -> list[list[int]]:
        sampler = FlopsBinSampler(SMALL_PER_BLOCK, SMALL_FIXED, 3_500_000, 5_000_000, 6)
        rng = random.Random(seed)
        return [sampler.sample(rng) for _ in range(50)]

    assert run(7) == run(7)
    assert run(7) != run(8)
    # The caller's RNG carries all the state: restoring it replays the stream.
    sampler = FlopsBinSampler(SMALL_PER_BLOCK, SMALL_FIXED, 3_500_000, 5_000_000, 6)
    rng = random.Random(4)
    sampler.sample(rng)
    state = rng.getstate()
    first = [sampler.sample(rng) for _ in range(5)]
    rng.setstate(state)
    assert [sampler.sample(rng) for _ in range(5)] == first


def test_bin_edges() -> None:
    sampler = FlopsBinSampler([[0, 10], [0, 20], [0, 40]], 0, 0, 70, 7, resolution=1)
    assert [sampler.bin_of(c) for c in (0, 9, 10, 69, 70)] == [0, 0, 1, 6, 6]
    assert sampler.bin_of(-1) is None and sampler.bin_of(70.5) is None


def test_range_outside_feasible_names_field_and_bounds() -> None:
    with pytest.raises(InputError) as err:
        FlopsBinSampler(SMALL_PER_BLOCK, SMALL_FIXED, 6_000_000, 7_000_000, 4,
                        field="supernet.flops_range")
    assert err.value.field == "supernet.flops_range"
    msg = str(err.value)
    assert f"[{SMALL_MIN}, {SMALL_MAX}]" in msg and "hold no path" in msg


def test_empty_middle_bin_is_named() -> None:
    # Totals are 0, 100, 200 only: [50, 100) holds nothing.
    with pytest.raises(InputError) as err:
        FlopsBinSampler([[0, 100], [0, 100]], 0, 0, 200, 4, resolution=1)
    assert err.value.field == "flops_range"
    assert "bins 1 [50, 100]" in str(err.value) and "[0, 200]" in str(err.value)


def test_extreme_bins_decided_exactly() -> None:
    # Only the all-cheapest path lies in the lowest bin, within the quantization band: the
    # sampler must find it (enumeration), not call the bin empty.
    per_block = [[0, 7]] * 6
    sampler = FlopsBinSampler(per_block, 3, 3, 45, 6, resolution=5)
    rng = random.Random(0)
    assert {sampler.cost(sampler.sample_in_bin(rng, 0)) for _ in range(20)} == {3}


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"low": 10, "high": 10}, "flops_range"),
    ({"low": 20, "high": 10}, "flops_range"),
    ({"low": float("nan")}, "flops_range"),
    ({"bins": 0}, "flops_range.bins"),
    ({"bins": True}, "flops_range.bins"),
    ({"bins": 2.5}, "flops_range.bins"),
    ({"resolution": 0}, "resolution"),
    ({"resolution": -3.0}, "resolution"),
    ({"per_block": []}, "per_block"),
    ({"per_block": [[1, 2], []]}, "per_block"),
    ({"per_block": [[1, -2]]}, "per_block"),
    ({"per_block": [[1, 2.5]]}, "per_block"),
    ({"per_block": [[1, True]]}, "per_block"),
    ({"per_block": "12"}, "per_block"),
    ({"fixed": -1}, "fixed"),
])
def test_bad_arguments(kwargs: dict, field: str) -> None:
    args = {"per_block": [[0, 5], [0, 5]], "fixed": 0, "low": 0, "high": 10, "bins": 2} | kwargs
    with pytest.raises(InputError) as err:
        FlopsBinSampler(**args)
    assert err.value.field == field


cost_tables = st.lists(st.lists(st.integers(0, 60), min_size=1, max_size=4), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(per_block=cost_tables, fixed=st.integers(0, 20), lo_frac=st.floats(0, 0.9),
       width_frac=st.floats(0.05, 1.0), bins=st.integers(1, 5), resolution=st.integers(1, 12),
       enumerate_limit=st.sampled_from([0, 10_000]), seed=st.integers(0, 2**16))
def test_property_matches_brute_force(per_block: list[list[int]], fixed: int, lo_frac: float,
                                      width_frac: float, bins: int, resolution: int,
                                      enumerate_limit: int, seed: int) -> None:
    costs = [path_cost(per_block, fixed, p) for p in _all_paths(per_block)]
    cmin, cmax = min(costs), max(costs)
    low = cmin - 5 + lo_frac * (cmax - cmin + 10)
    high = low + max(width_frac * (cmax - cmin + 10), 1.0)
    filled = {_bin(c, low, high, bins) for c in costs} - {None}
    if len(filled) < bins:  # some bin holds no path: must be refused, naming the field
        with pytest.raises(InputError) as err:
            FlopsBinSampler(per_block, fixed, low, high, bins, resolution,
                            enumerate_limit=enumerate_limit)
        assert err.value.field == "flops_range"
        assert f"[{cmin}, {cmax}]" in str(err.value)
        return
    sampler = FlopsBinSampler(per_block, fixed, low, high, bins, resolution,
                              enumerate_limit=enumerate_limit)
    rng = random.Random(seed)
    for b in range(bins):
        path = sampler.sample_in_bin(rng, b)
        assert len(path) == len(per_block)
        assert all(0 <= c < len(row) for c, row in zip(path, per_block))
        assert _bin(path_cost(per_block, fixed, path), low, high, bins) == b
    for _ in range(10):
        assert low <= sampler.cost(sampler.sample(rng)) <= high
