"""Multi-fidelity screening: successive halving's rungs, its ranking and ASHA promotions against
brute-force references, and the search driver running it with plain evaluate functions (no
Prefect server: tests/test_search_driver.py runs it through Prefect, killed and resumed)."""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.halving import Fidelity, promotions, ranked, total_steps
from strategies.serial import SerialSearch, SerialSearchConfig

# ----------------------------------------------------------------------------------- rungs


@pytest.mark.parametrize("fid, rungs", [
    (Fidelity(10, 100, 3), [10, 30, 90, 100]),
    (Fidelity(10, 90, 3), [10, 30, 90]),
    (Fidelity(1, 8, 2), [1, 2, 4, 8]),
    (Fidelity(5, 5, 2), [5]),
    (Fidelity(40, 50, 4), [40, 50]),
])
def test_rungs_grow_by_eta_up_to_max_steps(fid: Fidelity, rungs: list[int]) -> None:
    assert fid.rungs() == rungs and fid.top == len(rungs) - 1


@pytest.mark.parametrize("args", [(0, 10, 2), (11, 10, 2), (1, 10, 1), (1.5, 10, 2), (True, 10, 2)])
def test_fidelity_refuses_impossible_settings(args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        Fidelity(*args)


def test_total_steps_counts_each_candidates_highest_rung_once() -> None:
    # continuation trains only the increment: 3 at rung 0, 1 of them went on to rung 2
    assert total_steps({0: 2, 1: 0, 2: 0}, Fidelity(10, 90, 3)) == 90 + 10 + 10


# ------------------------------------------------------------------ brute-force references


def _dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    worse = any((x < y) if up else (x > y) for x, y, up in zip(a, b, maximize))
    better = any((x > y) if up else (x < y) for x, y, up in zip(a, b, maximize))
    return better and not worse


def _ref_ranks(points: Mapping[int, Sequence[float]], maximize: Sequence[bool]) -> dict[int, int]:
    """Peel non-dominated fronts one at a time."""
    left, rank, r = set(points), {}, 0
    while left:
        front = {i for i in left if not any(_dominates(points[j], points[i], maximize) for j in left)}
        rank |= {i: r for i in front}
        left -= front
        r += 1
    return rank


def _ref_crowding(members: list[int], points: Mapping[int, Sequence[float]]) -> dict[int, float]:
    """NSGA-II crowding distance by its definition, members in id order: per objective, the gap
    between the neighbours over the objective's range; the extremes (the first / last of a stable
    sort) infinite; an objective of zero range adds nothing; averaged over the objectives. Sums in
    pymoo's order (gap to the previous + gap to the next), so equal distances stay equal."""
    n = len(members)
    if n <= 2:
        return {i: math.inf for i in members}
    m = len(points[members[0]])
    parts: dict[int, list[float]] = {i: [] for i in members}
    for j in range(m):
        order = sorted(range(n), key=lambda p: (points[members[p]][j], p))
        v = [float(points[members[p]][j]) for p in order]
        norm = v[-1] - v[0]
        for q, p in enumerate(order):
            if norm == 0:
                parts[members[p]].append(0.0)
                continue
            last = math.inf if q == 0 else (v[q] - v[q - 1]) / norm
            nxt = math.inf if q == n - 1 else (v[q + 1] - v[q]) / norm
            parts[members[p]].append(last + nxt)
    return {i: sum(parts[i]) / m for i in members}


def _ref_ranked(points: Mapping[int, Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    if len(maximize) == 1:
        return sorted(points, key=lambda i: ((-1 if maximize[0] else 1) * points[i][0], i))
    rank = _ref_ranks(points, maximize)
    crowd: dict[int, float] = {}
    for r in set(rank.values()):
        crowd |= _ref_crowding(sorted(i for i in points if rank[i] == r), points)
    return sorted(points, key=lambda i: (rank[i], -crowd[i], i))


def _ref_promotions(history: Mapping[int, Sequence[Mapping[str, float]]], keys: Sequence[str],
                    maximize: Sequence[bool], eta: int, top: int,
                    promoted: Mapping[int, set[int]]) -> dict[int, list[int]]:
    out = {}
    for k in range(top):
        done = {c: [h[k][key] for key in keys] for c, h in history.items() if len(h) > k}
        best = _ref_ranked(done, maximize)[:len(done) // eta]
        up = [c for c in best if len(history[c]) <= k + 1 and c not in promoted.get(k, set())]
        if up:
            out[k + 1] = up
    return out


# --------------------------------------------------------------------- ranking, promotions

KEYS = ("a", "b", "c")


Case = tuple[dict[int, list[dict[str, float]]], tuple[bool, ...], int, int, dict[int, set[int]]]


@st.composite
def rung_histories(draw: Any) -> Case:
    """Random ASHA states: candidates' completed rungs with small integer metrics (ties and
    duplicate points are common), one to three objectives, and failed promotions."""
    m = draw(st.integers(1, 3))
    maximize = tuple(draw(st.lists(st.booleans(), min_size=m, max_size=m)))
    top = draw(st.integers(1, 3))
    eta = draw(st.integers(2, 4))
    n = draw(st.integers(0, 14))
    value = st.integers(0, 4).map(float)
    history = {}
    for cid in range(n):
        height = draw(st.integers(0, top))
        history[cid] = [{k: draw(value) for k in KEYS[:m]} for _ in range(height + 1)]
    promoted: dict[int, set[int]] = {}
    for cid, h in history.items():  # a failed promotion: tried from its highest completed rung
        if len(h) - 1 < top and draw(st.booleans()):
            promoted.setdefault(len(h) - 1, set()).add(cid)
    return history, maximize, eta, top, promoted


@settings(max_examples=300, deadline=None)
@given(rung_histories())
def test_promotions_match_a_brute_force_reference(case: Any) -> None:
    history, maximize, eta, top, promoted = case
    keys = KEYS[:len(maximize)]
    assert promotions(history, keys, maximize, eta, top, promoted) == \
        _ref_promotions(history, keys, maximize, eta, top, promoted)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3).flatmap(lambda m: st.tuples(
    st.dictionaries(st.integers(0, 30), st.lists(st.integers(0, 5).map(float), min_size=m, max_size=m), max_size=12),
    st.lists(st.booleans(), min_size=m, max_size=m))))
def test_ranking_matches_a_brute_force_reference(case: Any) -> None:
    points, maximize = case
    assert ranked(points, maximize) == _ref_ranked(points, maximize)


def test_ranking_ties_go_to_the_lower_id() -> None:
    assert ranked({5: [0.5], 2: [0.5], 9: [0.7]}, [True]) == [9, 2, 5]
    assert ranked({5: [0.5], 2: [0.5], 9: [0.7]}, [False]) == [2, 5, 9]
    # identical points: one rank, equal crowding -> by id
    assert ranked({4: [1.0, 2.0], 1: [1.0, 2.0], 3: [1.0, 2.0]}, [True, False]) == [1, 3, 4]
    # the front first (0.9 at 20 and 0.5 at 10), then what they dominate
    assert ranked({0: [0.4, 30.0], 1: [0.9, 20.0], 2: [0.5, 10.0]}, [True, False]) == [1, 2, 0]


def test_asha_promotes_the_top_third_once_and_not_what_already_went_up() -> None:
    hist = {cid: [{"a": float(cid)}] for cid in range(7)}  # 7 at rung 0: floor(7/3) = 2 go up
    assert promotions(hist, ["a"], [True], 3, 2) == {1: [6, 5]}
    hist[6].append({"a": 1.0})
    assert promotions(hist, ["a"], [True], 3, 2) == {1: [5]}
    assert promotions(hist, ["a"], [True], 3, 2, {0: {5}}) == {}  # 5's promotion failed: never again
    hist |= {7: [{"a": 10.0}], 8: [{"a": 9.0}]}  # 9 at rung 0: the top 3 are 7, 8, 6
    assert promotions(hist, ["a"], [True], 3, 2) == {1: [7, 8]}


# --------------------------------------------------- the driver with plain evaluate functions


def _search(n: int, objectives: tuple[str, ...] = ("mAP",), seed: int = 3) -> SerialSearch:
    return SerialSearch(["11-21"], SerialSearchConfig(max_sample=n, max_stages=4, objective_keys=objectives,
                                                      maximize=tuple(k == "mAP" for k in objectives)), seed=seed)


def _spec(fid: Fidelity | None, batch: int = 2) -> Any:
    from tasks.orchestration.search import SearchSpec

    return SearchSpec("serial", None, batch, lambda c: {"id": c.id, "code": c.code},
                      lambda r: dict(r["performance"]), lambda r: {"code": r["code"], **r.get("performance", {})},
                      ("params", "mAP"), "fake search", fidelity=fid)


class Killed(BaseException):
    """Stands in for the process dying."""


def _evaluator(log: list[list[tuple[int, int]]], fail: Callable[[dict[str, Any]], bool] = lambda i: False,
               kill_at: int | None = None, check: Callable[[list[dict[str, Any]]], None] | None = None) -> Any:
    """A fake candidate task: a made-up score that grows with training and depends on the id;
    checks the fidelity fields of every input; `kill_at`: the evaluate call that dies."""
    def evaluate(inputs: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        if kill_at is not None and len(log) == kill_at:
            raise Killed()
        if check:
            check(inputs)
        log.append([(i["id"], i["rung"]) for i in inputs])
        outs: list[dict[str, Any] | None] = []
        for i in inputs:
            assert i["resume_from"] == (None if i["rung"] == 0 else f"ck-{i['id']}-{i['rung'] - 1}")
            if fail(i):
                outs.append(None)
                continue
            aptitude = ((i["id"] * 7919) % 11) / 11  # scrambled by id: promotion is not id order
            blocks = len(i["code"].replace("-", ""))
            perf = {"mAP": aptitude * i["steps"] / (i["steps"] + 30), "params": blocks * 1000.0,
                    "rung": i["rung"], "train_steps": i["steps"]}
            outs.append({"id": i["id"], "code": i["code"], "performance": perf,
                         "checkpoint": f"ck-{i['id']}-{i['rung']}", "files": [f"ck-{i['id']}-{i['rung']}"]})
        return outs

    return evaluate


def _run(strategy: SerialSearch, spec: Any, results: dict[int, dict[str, Any]], evaluate: Any,
         state: Path | None = None) -> None:
    from tasks.orchestration.search import drive, save_state

    for _ in drive(strategy, spec, results, evaluate):
        if state is not None:
            save_state(state, strategy, results)


def _reference_check(results: dict[int, dict[str, Any]], fid: Fidelity, keys: tuple[str, ...],
                     maximize: tuple[bool, ...]) -> Callable[[list[dict[str, Any]]], None]:
    """Before every promotion batch: it is the lowest rung the reference says is due, in its order."""
    def check(inputs: list[dict[str, Any]]) -> None:
        rung = inputs[0]["rung"]
        if rung == 0:
            assert _due(results, fid, keys, maximize) == {}  # new candidates only once nothing is due
            return
        due = _due(results, fid, keys, maximize)
        assert min(due) == rung and [i["id"] for i in inputs] == due[rung]
        assert all(i["steps"] == fid.rungs()[rung] and i["max_steps"] == fid.max_steps for i in inputs)

    return check


def _due(results: dict[int, dict[str, Any]], fid: Fidelity, keys: tuple[str, ...],
         maximize: tuple[bool, ...]) -> dict[int, list[int]]:
    history = {c: r["rungs"] for c, r in results.items() if r.get("rungs")}
    failed: dict[int, set[int]] = {}
    for c, r in results.items():
        if r.get("promotion_failed"):
            failed.setdefault(r["promotion_failed"] - 1, set()).add(c)
    return _ref_promotions(history, keys, maximize, fid.eta, fid.top, failed)


@pytest.mark.parametrize("objectives", [("mAP",), ("mAP", "params")], ids=["single", "multi"])
def test_driver_promotes_in_the_reference_order_and_spends_fewer_steps(objectives: tuple[str, ...]) -> None:
    from tasks.orchestration.search import SearchOutcome, _rows, choose

    fid = Fidelity(10, 90, 3)
    strategy, results, log = _search(14, objectives), {}, []
    maximize = tuple(k == "mAP" for k in objectives)
    _run(strategy, _spec(fid), results, _evaluator(log, check=_reference_check(results, fid, objectives, maximize)))
    assert strategy.done and sorted(results) == list(range(14)) and _due(results, fid, objectives, maximize) == {}
    ups = [b for b in log if b[0][1] > 0]
    assert ups and all(len({r for _, r in b}) == 1 for b in log)  # one rung per batch
    at = {r: sum(1 for res in results.values() if len(res["rungs"]) > r) for r in range(3)}
    assert at[0] == 14 and at[1] >= 14 // 3 and at[2] >= at[1] // 3 and at[2] >= 1
    # the strategy holds every candidate's highest-rung result
    told = {c.id: m for c, m in strategy.history}
    assert all(told[c]["rung"] == r["rungs"][-1]["rung"] and told[c]["mAP"] == r["performance"]["mAP"]
               for c, r in results.items())
    outcome = SearchOutcome(results, strategy.pareto_ids(), 0)
    assert outcome.screened == 14
    assert outcome.train_steps == total_steps({c: len(r["rungs"]) - 1 for c, r in results.items()}, fid)
    assert outcome.train_steps < 14 * fid.max_steps
    rows = _rows(_spec(fid), results, outcome.front)
    assert all(r["rung"] == results[r["id"]]["rungs"][-1]["rung"] for r in rows)
    assert all(r["train_steps"] == fid.rungs()[r["rung"]] for r in rows)
    assert all(len(r["rungs"].split()) == r["rung"] + 1 for r in rows)
    best = choose(strategy, {}, "serial")
    assert results[best.id]["rungs"][-1]["rung"] == 2  # only candidates trained the longest compete


def test_without_a_fidelity_inputs_and_rows_are_as_before() -> None:
    from tasks.orchestration.search import SearchOutcome, _rows

    seen: list[dict[str, Any]] = []

    def evaluate(inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen.extend(inputs)
        return [{"id": i["id"], "code": i["code"], "performance": {"mAP": 0.1 * i["id"]}} for i in inputs]

    strategy, results = _search(5), {}
    _run(strategy, _spec(None), results, evaluate)
    assert all(set(i) == {"id", "code"} for i in seen) and len(seen) == 5
    assert all("rungs" not in r for r in results.values())
    assert set(_rows(_spec(None), results, [])[0]) == {"id", "code", "mAP", "pareto"}
    assert SearchOutcome(results, [], 0).train_steps is None


def test_a_failed_promotion_keeps_the_lower_rung_and_is_not_tried_again() -> None:
    fid = Fidelity(10, 90, 3)
    log: list[list[tuple[int, int]]] = []
    first: list[int] = []

    def fail(i: dict[str, Any]) -> bool:  # the first candidate promoted to rung 1 fails there
        if i["rung"] == 1 and not first:
            first.append(i["id"])
        return i["rung"] == 1 and i["id"] == first[0]

    strategy, results = _search(12), {}
    _run(strategy, _spec(fid), results, _evaluator(log, fail, check=_reference_check(results, fid, ("mAP",), (True,))))
    bad = first[0]
    assert [c for b in log for c in b].count((bad, 1)) == 1
    assert results[bad]["promotion_failed"] == 1 and len(results[bad]["rungs"]) == 1
    assert {c.id: m for c, m in strategy.history}[bad]["rung"] == 0  # still told its rung-0 result


@pytest.mark.parametrize("objectives", [("mAP",), ("mAP", "params")], ids=["single", "multi"])
def test_killed_mid_rung_resumes_to_the_uninterrupted_result(tmp_path: Path, objectives: tuple[str, ...]) -> None:
    fid = Fidelity(5, 45, 3)
    whole, whole_log = {}, []
    _run(_search(12, objectives), _spec(fid), whole, _evaluator(whole_log))
    kill = next(n for n, b in enumerate(whole_log) if b[0][1] == 1 and n > 3)  # a promotion batch, mid-search
    state = tmp_path / "search_state.json"
    part, log = {}, []
    with pytest.raises(Killed):
        _run(_search(12, objectives), _spec(fid), part, _evaluator(log, kill_at=kill), state)
    assert log == whole_log[:kill]
    saved = json.loads(state.read_text())
    strategy = _search(12, objectives)
    strategy.load_state_dict(saved["strategy"])
    results = {int(k): v for k, v in saved["results"].items()}
    _run(strategy, _spec(fid), results, _evaluator(log), state)
    assert log == whole_log  # nothing evaluated twice, the same promotions in the same order
    assert json.loads(json.dumps(results)) == json.loads(json.dumps(whole))


def test_choose_compares_only_the_highest_rung_within_the_limits() -> None:
    from tasks.orchestration.search import candidates_at_top_rung, choose

    s = _search(4, ("mAP", "params"))
    (start,) = s.ask(1)
    s.tell(start.id, {"mAP": 0.2, "params": 10.0, "rung": 2})
    kids = s.ask(3)
    for c, (m, p, r) in zip(kids, [(0.9, 5.0, 0), (0.5, 50.0, 2), (0.3, 5.0, 1)]):
        s.tell(c.id, {"mAP": m, "params": p, "rung": r})
    ids = [0] + [c.id for c in kids]
    assert candidates_at_top_rung(s) == [ids[0], ids[2]]
    assert choose(s, {}, "t").id == ids[2]                      # 0.9 at rung 0 is not compared
    assert choose(s, {"params": 20.0}, "t").id == ids[0]        # within the limits: rung 2 is 0
    assert candidates_at_top_rung(s, {"params": 6.0}) == [ids[3]]
    assert choose(s, {"params": 1.0}, "t").id == ids[2]         # none within: top rung overall
    plain = _search(2)
    for c in plain.ask(2):
        plain.tell(c.id, {"mAP": 0.1})
    assert candidates_at_top_rung(plain) is None


def test_update_replaces_a_told_result_and_tell_still_refuses_a_second_tell() -> None:
    s = _search(2)
    (c,) = s.ask(1)
    with pytest.raises(ValueError, match="not told"):
        s.update(c.id, {"mAP": 0.5})
    s.tell(c.id, {"mAP": 0.1, "rung": 0})
    s.update(c.id, {"mAP": 0.5, "rung": 1})
    assert dict((k.id, m) for k, m in s.history)[c.id] == {"mAP": 0.5, "rung": 1}
    with pytest.raises(ValueError, match="already told"):
        s.tell(c.id, {"mAP": 0.7})
    with pytest.raises(ValueError):
        s.update(c.id, {"rung": 2})  # the objective is missing
    again = _search(2)
    again.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert again.history[0][1] == {"mAP": 0.5, "rung": 1}
    (d,) = s.ask(1)
    s.tell(d.id, None)
    with pytest.raises(ValueError, match="failed"):
        s.update(d.id, {"mAP": 0.5})
