"""Stage `serial_search` of spnas/full (Vega SpNasS): swap / expand / add-stage mutations of
the backbone code, parents from the [mAP, params] Pareto front, every child inheriting its
parent's tensors by name and shape.

A stage that loops ask → evaluate → tell is a subflow, not a task: the candidates are tasks
mapped over a task runner, and a task must never block on other tasks' futures.
"""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from strategies.serial import SerialSearch, SerialSearchConfig
from tasks.common import stage_dir, write_csv, write_json
from tasks.fine_tune import detector_for
from tasks.pipeline import map_candidates
from tasks.train_candidate import detector_desc, train_candidate_task
from tracking import tracker

STEP = "serial"


def search_config(sp: dict[str, Any]) -> SerialSearchConfig:
    return SerialSearchConfig(max_sample=sp["max_sample"], max_optimal=sp["max_optimal"], num_mutate=sp["num_mutate"],
                              add_stage_ratio=sp["add_stage_ratio"], expend_ratio=sp["expend_ratio"],
                              max_stages=sp["max_stages"], objective_keys=("mAP", "params"), maximize=(True, False))


def candidate_rows(results: dict[int, dict[str, Any]], front: list[int], best_id: int) -> list[dict[str, Any]]:
    rows = []
    for cid in sorted(results):
        r = results[cid]
        perf = r["performance"] if r.get("performance") else {}
        rows.append({"id": cid, "code": r["code"], "parent_id": r.get("parent_id"), "mutations": r.get("mutations", ""),
                     "mAP": perf.get("mAP"), "mAP50": perf.get("mAP50"), "params": perf.get("params"),
                     "macs": perf.get("macs"), "inherited_ratio": perf.get("inherited_ratio"),
                     "train_seconds": perf.get("train_seconds"), "pareto": cid in front, "chosen": cid == best_id,
                     "status": "ok" if perf else "failed"})
    return rows


@flow(name="serial-search")
def serial_search(data: dict[str, Any], p: dict[str, Any], start: dict[str, Any], run_dir: str,
                  parent_run_id: str) -> dict[str, Any]:
    logger = get_run_logger()
    sp = p["serial"]
    out_dir = stage_dir(run_dir, STEP)
    search = SerialSearch([p["backbone_code"]], search_config(sp), seed=p["seed"])
    model_of: dict[int | None, str] = {None: start["model_path"]}  # the start net inherits fine_tune's weights
    results: dict[int, dict[str, Any]] = {}
    with tracker.child_run(parent_run_id, "serial_search", sp) as run_id:
        progress = tracker.Progress("serial-search-progress", "SpNasS candidates evaluated")
        while not search.done:
            batch = search.ask(sp["batch"])
            if not batch:
                break
            candidates = [{"id": c.id, "code": c.code, "parent_id": c.parent_id, "mutations": "+".join(c.mutations),
                           "desc": detector_desc(detector_for(p, data, c.code)),
                           "parent_model": model_of[c.parent_id],
                           "freeze": bool(sp["freeze_inherited"] and c.parent_id is not None)} for c in batch]
            for cand, res in zip(candidates, map_candidates(train_candidate_task, candidates, data=data, p=p,
                                                            steps=sp["candidate_steps"], step=STEP,
                                                            run_dir=run_dir, parent_run_id=run_id)):
                perf = res["performance"] if res else None
                search.tell(cand["id"], {"mAP": perf["mAP"], "params": perf["params"]} if perf else None)
                results[cand["id"]] = res or {k: v for k, v in cand.items() if k != "desc"}
                if res:
                    model_of[cand["id"]] = res["model_path"]
            done = len(search.history)
            progress.update(done / sp["max_sample"], f"{done}/{sp['max_sample']} candidates")
            logger.info("serial search: %d/%d candidates evaluated", done, sp["max_sample"])
        best = search.best()
        rows = candidate_rows(results, search.pareto_ids(), best.id)
        files = [str(write_csv(out_dir / "output.csv", rows)),
                 str(write_json(out_dir / "search_state.json", search.state_dict()))]
        tracker.log_files(run_id, files, "serial")
        tracker.log_pareto_plot(run_id, [r for r in rows if r["status"] == "ok"], "params", "mAP", "pareto",
                                "serial/pareto.png", "serial search: mAP vs params")
        kinds = sorted({k for r in rows for k in str(r["mutations"]).split("+") if k})
        tracker.log_metrics(run_id, {"candidates": len(rows), "best_mAP": results[best.id]["performance"]["mAP"]})
        tracker.set_tags(run_id, {"best_code": best.code, "mutation_kinds": ",".join(kinds)})
    tracker.publish_table("serial-search-candidates", rows, "SpNasS candidates (pareto = on the [mAP, params] front)")
    logger.info("serial search chose %s (mAP %.4f); mutation kinds seen: %s", best.code,
                results[best.id]["performance"]["mAP"], kinds)
    return {"best": results[best.id], "rows": rows, "mutation_kinds": kinds,
            "files": files + [f for r in results.values() for f in r.get("files", [])]}
