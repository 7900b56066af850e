"""prune-ea/full — Vega PruneEA: NSGA-III channel pruning of a CIFAR ResNet-20/32/56:
data → train_base → prune_search → retrain (front members, from their pruned weights by default)
→ export (+ comparison)."""
from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from params.loader import load_params
from params.models import PruneEaParams
from params.registry import PRUNE_EA
from tasks.orchestration.pipeline import close_tracking_on_crash, finish, pipeline
from tasks.orchestration.search import control_fields, cost_column, own_rows
from tasks.prune_ea.data import CifarSplit, data_task
from tasks.prune_ea.export import INT8_COLUMNS, Exported, export_task
from tasks.prune_ea.preflight import preflight
from tasks.prune_ea.prune_search import PruneSearched, prune_search, spread
from tasks.prune_ea.retrain import RetrainedMember, retrain_task
from tasks.prune_ea.train_base import TrainedBase, train_base_task


# One training at a time with every core (2 cores: parallel trainings only fight).
@flow(name="prune-ea", task_runner=ThreadPoolTaskRunner(max_workers=1),
      on_crashed=[close_tracking_on_crash], on_cancellation=[close_tracking_on_crash])
def prune_ea(params_file: str = PRUNE_EA.params_file, overrides: dict[str, Any] | None = None,
             refresh_from: str | None = None) -> dict[str, Any]:
    """`refresh_from`: "all" recomputes every stage, a stage name recomputes it and what follows."""
    p = load_params(PruneEaParams, params_file, overrides)  # bad input fails here, before any work
    preflight(p)  # files, weights, tables and device, also before any work
    with pipeline(PRUNE_EA.name, p, PRUNE_EA.stages, refresh_from) as pipe:
        data: CifarSplit = pipe.run("data", data_task, data=p.data, seed=p.seed)
        base: TrainedBase = pipe.run("train_base", train_base_task, data=data, depth=p.depth, base=p.base,
                                     seed=p.seed)
        # Candidates go where candidate_workers / dask_address say (Pipeline.search).
        searched: PruneSearched = pipe.search("prune_search", prune_search, data=data, base=base, depth=p.depth,
                                              search=p.search, batch_size=p.base.batch_size, seed=p.seed)
        chosen = spread(searched.front, p.retrain.count, data.num_classes, along=cost_column(p.search.objective),
                        min_share=p.retrain.min_share)
        retrained: list[RetrainedMember | None] = pipe.map("retrain", retrain_task, chosen, base=base, data=data,
                                                           depth=p.depth, retrain_cfg=p.retrain, seed=p.seed)
        if any(r is None for r in retrained):
            raise RuntimeError("retraining a front member failed; see the task's log")
        exported: Exported = pipe.run("export", export_task, models=[base, *retrained], data=data, seed=p.seed,
                                      export=p.export, table_key="prune-ea-comparison",
                                      title="baseline vs retrained front members (test accuracy; r_c = MACs / baseline MACs)")
        rows = exported.rows
        summary = {"depth": p.depth, "candidates": len(own_rows(searched.rows)), "front_size": len(searched.front),
                   **control_fields(searched.control),
                   "baseline_acc": rows[0]["acc"], "baseline_macs": rows[0]["macs"],
                   **{f"{r['model']}_{k}": r[k] for r in rows[1:] for k in ("acc", "macs", "r_c")},
                   **{f"{r['model']}_{k}": r[k] for r in rows for k in (*INT8_COLUMNS, "int8_error") if k in r}}
        summary["latency_flags"] = len(exported.latency_notes)  # winners whose search-time latency missed by > ±10 %
        return finish(pipe, summary, table=list(rows))


if __name__ == "__main__":
    prune_ea()
