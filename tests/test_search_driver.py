"""The one search driver: ask → map candidate tasks → tell, state saved after every batch; a
search killed midway and started again on the same work folder continues from its saved
state, and a candidate that finished before the kill is not evaluated again."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from params.models import Runtime
from strategies.serial import SerialSearch, SerialSearchConfig
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.search import SearchSpec, keep_weights, run_search

pytestmark = pytest.mark.slow  # needs the Prefect test server (module-level tasks below)

CALLS: list[int] = []
KILL_AT: dict[str, int | None] = {"id": None}


class Killed(BaseException):
    """Stands in for the process dying (not an Exception: nothing may catch and carry on)."""


@task(persist_result=True, cache_policy=STAGE_CACHE)
def fake_candidate(candidate: dict, ctx: StageContext) -> dict:
    if candidate["id"] == KILL_AT["id"]:
        raise Killed()
    CALLS.append(candidate["id"])
    path = ctx.work / f"model_{candidate['id']}.pth"
    path.write_text(candidate["code"])
    # A made-up trade-off: more blocks, more "mAP" and more "params".
    blocks = len(candidate["code"].replace("-", ""))
    return {"id": candidate["id"], "code": candidate["code"], "performance": {"mAP": blocks / 10 - 0.01 * candidate["id"],
                                                                              "params": blocks * 1000.0},
            "model_path": str(path), "files": [str(path)]}


def _spec() -> SearchSpec:
    return SearchSpec("serial", fake_candidate, 2, lambda c: {"id": c.id, "code": c.code},
                      lambda r: dict(r["performance"]), lambda r: {"code": r["code"], **r.get("performance", {})},
                      ("params", "mAP"), "fake search")


def _strategy() -> SerialSearch:
    return SerialSearch(["11-21"], SerialSearchConfig(max_sample=6, max_stages=4), seed=3)


@flow(task_runner=ThreadPoolTaskRunner(max_workers=1))  # candidates in order, as the flows run them
def search_flow(work_dir: str, run_id: str) -> dict:
    outcome = run_search(_strategy(), _spec(), StageContext("serial", work_dir, run_id, Runtime()), run_id,
                         refresh=False)
    return {"ids": sorted(outcome.results), "resumed_from": outcome.resumed_from, "front": outcome.front}


def test_killed_search_continues_from_its_saved_state(prefect_api, tmp_path: Path) -> None:
    from tracking import tracker

    run_id = tracker.start_run(tracker.ensure_experiment("driver-test"), "driver")
    CALLS.clear()
    KILL_AT["id"] = 4  # batches: [0], [1, 2], [3, 4]: dies in the third, after 3 finished
    with pytest.raises(BaseException):
        search_flow(str(tmp_path), run_id)
    saved = json.loads((tmp_path / "search_state.json").read_text())
    assert sorted(int(k) for k in saved["results"]) == [0, 1, 2]
    assert CALLS == [0, 1, 2, 3]

    KILL_AT["id"] = None
    out = search_flow(str(tmp_path), run_id)
    assert out["ids"] == [0, 1, 2, 3, 4, 5] and out["resumed_from"] == 3
    # 0-2 were told before the kill (not asked again); 3 finished but was never told: it came
    # back from the result cache. Only 4 and 5 ran in the second go.
    assert CALLS == [0, 1, 2, 3, 4, 5]

    # An uninterrupted search with the same seed proposes the same candidates.
    CALLS.clear()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    uninterrupted = json.loads(json.dumps(search_flow(str(fresh), run_id)))
    assert uninterrupted["ids"] == out["ids"] and uninterrupted["front"] == out["front"]
    codes = lambda d: [r["code"] for _, r in sorted(json.loads((d / "search_state.json").read_text())["results"].items())]
    assert codes(fresh) == codes(tmp_path)


def test_keep_weights_keeps_the_front_and_what_is_needed(tmp_path: Path) -> None:
    from tasks.orchestration.search import SearchOutcome

    results = {}
    for cid in range(5):
        path = tmp_path / f"model_{cid}.pth"
        path.write_text("w")
        results[cid] = {"model_path": str(path), "files": [str(path)]}
    outcome = SearchOutcome(results, front=[1, 3], resumed_from=0)
    assert keep_weights(outcome, "all", {0}) == []
    assert keep_weights(outcome, "pareto", {0}) == [2, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_0.pth", "model_1.pth", "model_3.pth"]
    assert results[2]["model_path"] is None and results[2]["files"] == []
    assert keep_weights(outcome, "best", {3}) == [0, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["model_3.pth"]


@task
def slow_or_failing(candidate: dict, ctx: StageContext) -> dict:
    import time

    time.sleep(candidate["sleep"])
    if candidate.get("fail"):
        raise ValueError("this candidate fails")
    FINISHED.append(candidate["id"])
    return {"id": candidate["id"]}


FINISHED: list[int] = []


@flow(task_runner=ThreadPoolTaskRunner(max_workers=3))
def map_flow(work_dir: str) -> tuple[list, list]:
    from tasks.orchestration.pipeline import map_candidates

    seen: list[tuple[int, list[int]]] = []
    ctx = StageContext("serial", work_dir, "no-run", Runtime())
    results = map_candidates(slow_or_failing, [{"id": 0, "sleep": 1.5}, {"id": 1, "sleep": 0.0},
                                               {"id": 2, "sleep": 0.3, "fail": True}], ctx,
                             on_done=lambda n: seen.append((n, list(FINISHED))))
    return results, seen


def test_progress_counts_candidates_as_they_finish(prefect_api, tmp_path: Path) -> None:
    FINISHED.clear()
    results, seen = map_flow(str(tmp_path))
    assert results == [{"id": 0}, {"id": 1}, None]  # in the candidates' order, failed = None
    # one call per candidate, in finishing order: the quick one is counted before the slow one ends
    assert [n for n, _ in seen] == [1, 2, 3] and seen[0][1] == [1] and seen[-1][1] == [1, 0]


def test_control_report_compares_best_within_limits_and_hypervolume() -> None:
    from tasks.orchestration.search import control_report

    def told(points: list[tuple[float, float]], seed: int) -> SerialSearch:
        s = SerialSearch(["11-21"], SerialSearchConfig(max_sample=len(points), max_stages=4), seed=seed)
        it = iter(points)
        while not s.done:
            for c in s.ask(1):
                mAP, params = next(it)
                s.tell(c.id, {"mAP": mAP, "params": params})
        return s

    search = told([(0.5, 10.0), (0.7, 12.0), (0.9, 30.0)], 0)
    control = told([(0.5, 10.0), (0.6, 11.0), (0.95, 40.0)], 1)
    report = control_report(search, control, {"params": 20.0})
    assert (report.best_search, report.best_control) == (0.7, 0.6) and report.best_gain == pytest.approx(0.1)
    # reference point: worst mAP 0.5 - 10 % of 0.45, worst params 40 + 10 % of 30 (the same for both sides)
    ref_map, ref_params = 0.5 - 0.045, 43.0
    hv = lambda pts: sum((m - prev) * (ref_params - p) for (m, p), prev in
                         zip(sorted(pts), [ref_map] + [m for m, _ in sorted(pts)][:-1]))
    assert report.hv_search == pytest.approx(hv([(0.5, 10.0), (0.7, 12.0), (0.9, 30.0)]))
    assert report.hv_control == pytest.approx(hv([(0.5, 10.0), (0.6, 11.0), (0.95, 40.0)]))
    assert report.hv_ratio == pytest.approx(report.hv_search / report.hv_control)
    # the ideal front: mAP 0.95 (control) at 10 params (both) at once
    assert report.hv_box == pytest.approx((0.95 - ref_map) * (ref_params - 10.0))
    assert report.hv_ratio_bound == pytest.approx(report.hv_box / report.hv_control)
    assert report.hv_ratio < report.hv_ratio_bound and "an ideal front would reach" in report.describe()
    assert set(report.figures()) >= {"best_search", "best_control", "hv_ratio", "hv_ratio_bound"}
    nothing = control_report(search, control, {"params": 1.0})
    assert nothing.best_search is None and "best_gain" not in nothing.figures()


@flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
def controlled_flow(work_dir: str, run_id: str) -> dict:
    from dataclasses import replace

    from tasks.orchestration.search import choose, finalize, run_control

    strategy = _strategy()
    control = lambda n: SerialSearch(["11-21"], SerialSearchConfig(max_sample=n, max_stages=4, parents="start"), seed=11)
    spec = replace(_spec(), control=control)
    ctx = StageContext("serial", work_dir, run_id, Runtime())
    outcome = run_search(strategy, spec, ctx, run_id, refresh=False)
    report = run_control(strategy, spec, outcome, ctx, run_id, False, {"params": 4000.0})
    best = choose(strategy, {"params": 4000.0}, "serial")
    rows = finalize(strategy, spec, outcome, work_dir, best.id, "all", set())
    return {"rows": rows, "report": report.figures(), "control_resumed": outcome.control.resumed_from}


def test_control_runs_beside_the_search_and_is_never_chosen(prefect_api, tmp_path: Path) -> None:
    from tasks.orchestration.tables import read_table
    from tracking import tracker

    run_id = tracker.start_run(tracker.ensure_experiment("driver-test"), "control")
    CALLS.clear()
    KILL_AT["id"] = None
    out = controlled_flow(str(tmp_path), run_id)
    rows = out["rows"]
    search, control = [r for r in rows if r["origin"] == "search"], [r for r in rows if r["origin"] == "control"]
    assert len(search) == len(control) == 6 and sum(r["chosen"] for r in rows) == 1
    assert not any(r["chosen"] for r in control)
    assert (tmp_path / "control" / "search_state.json").exists() and (tmp_path / "control" / "model_5.pth").exists()
    table = read_table(tmp_path / "output.csv")
    assert list(table["origin"]) == [r["origin"] for r in rows]
    best_control = max(r["mAP"] for r in control if r["params"] <= 4000.0)
    assert out["report"]["best_control"] == pytest.approx(best_control)
    # Started again on the same folder: both the search and its control resume, nothing trains again.
    CALLS.clear()
    again = controlled_flow(str(tmp_path), run_id)
    assert CALLS == [] and again["control_resumed"] == 6 and again["report"] == out["report"]


# -- multi-fidelity (successive halving) through Prefect: killed mid-rung, resumed ----------------

HALVING_CALLS: list[tuple[str, int, int]] = []   # (search | control, id, rung) of every evaluation run
HALVING_KILL: dict[str, tuple[int, int] | None] = {"at": None}


def _halving_out(candidate: dict, work: Path) -> dict:
    """A fake candidate trained to candidate["steps"] from its own checkpoint: a score that grows
    with training and depends on the id; the checkpoint holds the steps it was trained."""
    cid, rung, steps = candidate["id"], candidate["rung"], candidate["steps"]
    if candidate["resume_from"] is not None:  # continues where its previous rung stopped
        assert rung > 0 and Path(candidate["resume_from"]).read_text().startswith(f"{cid}:")
    else:
        assert rung == 0
    ckpt = work / f"ckpt_{cid}_rung{rung}.pth"
    ckpt.write_text(f"{cid}:{steps}")
    blocks = len(candidate["code"].replace("-", ""))
    perf = {"mAP": ((cid * 7919) % 11) / 11 * steps / (steps + 30), "params": blocks * 1000.0, "rung": rung,
            "train_steps": steps}
    return {"id": cid, "code": candidate["code"], "performance": perf, "checkpoint": str(ckpt),
            "model_path": str(ckpt), "files": [str(ckpt)]}


@task(persist_result=True, cache_policy=STAGE_CACHE)
def fake_halving_candidate(candidate: dict, ctx: StageContext) -> dict:
    origin = "control" if "control" in Path(ctx.work).parts else "search"
    if origin == "search" and (candidate["id"], candidate["rung"]) == HALVING_KILL["at"]:
        raise Killed()
    HALVING_CALLS.append((origin, candidate["id"], candidate["rung"]))
    return _halving_out(candidate, ctx.work)


def _halving_spec(tag: str) -> SearchSpec:
    from dataclasses import replace

    from strategies.halving import Fidelity

    control = lambda n: SerialSearch(["11-21"], SerialSearchConfig(max_sample=n, max_stages=4, parents="start"), seed=11)
    # `tag` keeps one test's runs out of another's cache entries (the work folder is not in the key)
    return replace(_spec(), task=fake_halving_candidate, to_input=lambda c: {"id": c.id, "code": c.code, "tag": tag},
                   fidelity=Fidelity(5, 45, 3), control=control)


def _halving_strategy() -> SerialSearch:
    return SerialSearch(["11-21"], SerialSearchConfig(max_sample=9, max_stages=4), seed=3)


@flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
def halving_flow(work_dir: str, run_id: str, tag: str) -> dict:
    from tasks.orchestration.search import choose, finalize, run_control

    strategy, spec = _halving_strategy(), _halving_spec(tag)
    ctx = StageContext("serial", work_dir, run_id, Runtime())
    outcome = run_search(strategy, spec, ctx, run_id, refresh=False)
    run_control(strategy, spec, outcome, ctx, run_id, False, None)
    best = choose(strategy, {}, "serial")
    rows = finalize(strategy, spec, outcome, work_dir, best.id, "all", set())
    history = {cid: [(e["rung"], e["steps"], e["mAP"]) for e in r["rungs"]] for cid, r in outcome.results.items()}
    return {"rows": rows, "history": history, "chosen": best.id, "train_steps": outcome.train_steps,
            "screened": outcome.screened, "control_steps": outcome.control.train_steps}


def _plain_halving_order(tmp: Path) -> list[list[tuple[int, int]]]:
    """The evaluation batches of the same search run by `drive` with plain calls (no Prefect)."""
    from tasks.orchestration.search import drive

    tmp.mkdir()
    batches: list[list[tuple[int, int]]] = []

    def evaluate(inputs: list[dict]) -> list[dict]:
        batches.append([(i["id"], i["rung"]) for i in inputs])
        return [_halving_out(i, tmp) for i in inputs]

    for _ in drive(_halving_strategy(), _halving_spec("plain"), {}, evaluate):
        pass
    return batches


def test_fidelity_search_resumes_mid_rung_and_never_chooses_the_control(prefect_api, tmp_path: Path) -> None:
    from tasks.orchestration.tables import read_table
    from tracking import tracker

    run_id = tracker.start_run(tracker.ensure_experiment("driver-test"), "halving")
    order = _plain_halving_order(tmp_path / "plain")
    # die in the first promotion batch of two or more, after its first member finished
    kill_batch = next(n for n, b in enumerate(order) if b[0][1] > 0 and len(b) > 1)
    HALVING_KILL["at"] = order[kill_batch][-1]
    HALVING_CALLS.clear()
    killed = tmp_path / "killed"
    killed.mkdir()
    with pytest.raises(BaseException):
        halving_flow(str(killed), run_id, "k")
    done_before = [(cid, r) for b in order[:kill_batch] for cid, r in b] + order[kill_batch][:-1]
    assert HALVING_CALLS == [("search", cid, r) for cid, r in done_before]
    saved = json.loads((killed / "search_state.json").read_text())
    first, rung = order[kill_batch][0]  # finished before the kill, but its batch was never saved
    assert len(saved["results"][str(first)]["rungs"]) == rung

    HALVING_KILL["at"] = None
    out = halving_flow(str(killed), run_id, "k")
    search_calls = [(cid, r) for origin, cid, r in HALVING_CALLS if origin == "search"]
    # every evaluation ran once, in the plain driver's order: the promotion that finished before
    # the kill came back from the cache, nothing already told was evaluated again
    assert search_calls == [(cid, r) for b in order for cid, r in b]

    HALVING_CALLS.clear()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    whole = halving_flow(str(fresh), run_id, "u")  # uninterrupted, its own cache entries
    assert [(cid, r) for origin, cid, r in HALVING_CALLS if origin == "search"] == search_calls
    assert json.loads(json.dumps(whole["history"])) == json.loads(json.dumps(out["history"]))
    assert whole["chosen"] == out["chosen"] and whole["train_steps"] == out["train_steps"]

    rows = out["rows"]
    search, control = [r for r in rows if r["origin"] == "search"], [r for r in rows if r["origin"] == "control"]
    assert len(search) == len(control) == 9 and sum(r["chosen"] for r in rows) == 1
    assert not any(r["chosen"] for r in control)
    top = max(r["rung"] for r in search)
    assert top >= 1 and [r for r in search if r["chosen"]][0]["rung"] == top
    assert all(r["train_steps"] == (5, 15, 45)[r["rung"]] for r in rows)
    assert any(r["rung"] for r in control)  # the control is screened the same way
    assert out["screened"] == 9 and out["train_steps"] < 9 * 45 and out["control_steps"] < 9 * 45
    table = read_table(killed / "output.csv")
    assert {"rung", "train_steps", "rungs"} <= set(table.columns)
    assert list(table["rung"]) == [r["rung"] for r in rows]


def test_rung_checkpoints_are_dropped_when_the_search_is_over(tmp_path: Path) -> None:
    from tasks.orchestration.search import SearchOutcome, drop_checkpoints

    results = {}
    for cid in range(3):
        ckpts = [tmp_path / f"ckpt_{cid}_r{r}.pth" for r in range(cid + 1)]
        for c in ckpts:
            c.write_text("c")
        weights = tmp_path / f"model_{cid}.pth"
        weights.write_text("w")
        results[cid] = {"model_path": str(weights), "checkpoint": str(ckpts[-1]),
                        "files": [str(weights), *map(str, ckpts)],
                        "rungs": [{"rung": r, "steps": 10 * 3 ** r, "acc": 0.5, "checkpoint": str(c)}
                                  for r, c in enumerate(ckpts)]}
    control = SearchOutcome({0: {"model_path": None, "files": []}}, front=[], resumed_from=0)  # no fidelity rows
    outcome = SearchOutcome(results, front=[0], resumed_from=0, control=control)
    assert drop_checkpoints(outcome) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_0.pth", "model_1.pth", "model_2.pth"]
    assert all(r["files"] == [r["model_path"]] and "checkpoint" not in r for r in results.values())
    assert drop_checkpoints(outcome) == 0  # a second call (a resumed finalize) finds nothing to do
