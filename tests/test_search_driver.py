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
