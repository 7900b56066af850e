"""Stage `parallel_search` of spnas/full (Vega SpNasP): on the reignited serial net, how many
extra parallel sub-networks K each stage gets; a sub-network is added to a stage with
probability inversely proportional to the MACs it adds (measured, not assumed).

Candidate 0 is the reignited net itself (no extra sub-networks) trained with the same budget,
so every parallel candidate is compared with its plain-FPN twin."""
from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from nas_models.parallel_fpn import extra_macs_per_stage
from strategies.parallel import ParallelSearch
from tasks.common import stage_dir, write_csv, write_json
from tasks.fine_tune import detector_for
from tasks.pipeline import map_candidates
from tasks.train_candidate import detector_desc, train_candidate_task
from tracking import tracker

STEP = "parallel"


def _candidate(cid: int, neck: list[int], p: dict[str, Any], data: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    return {"id": cid, "code": base["code"], "neck_code": list(neck),
            "desc": detector_desc(detector_for(p, data, base["code"], neck)), "parent_model": base["model_path"]}


@flow(name="parallel-search")
def parallel_search(data: dict[str, Any], p: dict[str, Any], base: dict[str, Any], run_dir: str,
                    parent_run_id: str) -> dict[str, Any]:
    logger = get_run_logger()
    pp = p["parallel"]
    out_dir = stage_dir(run_dir, STEP)
    num_stages = len(base["code"].split("-"))
    cost = extra_macs_per_stage(base["code"], p["block"], p["image_size"])
    results: dict[int, dict[str, Any]] = {}
    common = dict(data=data, p=p, steps=pp["candidate_steps"], step=STEP, run_dir=run_dir)
    with tracker.child_run(parent_run_id, "parallel_search", {**pp, "extra_macs_per_stage": cost}) as run_id:
        progress = tracker.Progress("parallel-search-progress", "SpNasP candidates evaluated")
        plain = map_candidates(train_candidate_task, [_candidate(0, [0] * num_stages, p, data, base)],
                               parent_run_id=run_id, **common)[0]
        if plain is None:
            raise RuntimeError("the reignited net failed to train in the parallel stage; see the candidate's log")
        results[0] = plain
        total = pp["max_sample"] + 1
        if pp["max_sample"] > 0:
            search = ParallelSearch(num_stages, cost, pp["max_sample"], p["seed"], max_per_stage=pp["max_per_stage"],
                                    max_additions=min(pp["max_additions"], num_stages * pp["max_per_stage"]),
                                    objective_keys=("mAP", "macs"), maximize=(True, False))
            while not search.done:
                batch = search.ask(pp["batch"])
                if not batch:
                    break
                candidates = [_candidate(c.id + 1, c.code, p, data, base) for c in batch]
                for c, res in zip(batch, map_candidates(train_candidate_task, candidates, parent_run_id=run_id, **common)):
                    perf = res["performance"] if res else None
                    search.tell(c.id, {"mAP": perf["mAP"], "macs": perf["macs"]} if perf else None)
                    if res:
                        results[c.id + 1] = res
                progress.update((len(results)) / total, f"{len(results)}/{total} candidates")
            write_json(out_dir / "search_state.json", search.state_dict())
        from strategies.pareto import pareto_front

        ids = sorted(results)
        front = [ids[i] for i in pareto_front([[results[i]["performance"]["mAP"], results[i]["performance"]["macs"]]
                                               for i in ids], [True, False])]
        best_id = max(front, key=lambda i: (results[i]["performance"]["mAP"], -i))
        rows = [{"id": i, "code": results[i]["code"], "neck_code": str(results[i]["neck_code"]),
                 **{k: results[i]["performance"].get(k) for k in ("mAP", "mAP50", "params", "macs", "inherited_ratio",
                                                                  "train_seconds")},
                 "pareto": i in front, "chosen": i == best_id} for i in ids]
        files = [str(write_csv(out_dir / "output.csv", rows))]
        tracker.log_files(run_id, files, "parallel")
        tracker.log_pareto_plot(run_id, rows, "macs", "mAP", "pareto", "parallel/pareto.png",
                                "parallel search: mAP vs MACs")
        tracker.set_tags(run_id, {"best_neck_code": str(results[best_id]["neck_code"])})
    tracker.publish_table("parallel-search-candidates", rows, "SpNasP candidates (0 = no extra sub-networks)")
    logger.info("parallel search chose neck %s (mAP %.4f; plain FPN %.4f)", results[best_id]["neck_code"],
                results[best_id]["performance"]["mAP"], plain["performance"]["mAP"])
    return {"best": results[best_id], "rows": rows, "extra_macs_per_stage": cost,
            "files": files + [f for r in results.values() for f in r.get("files", [])]}
