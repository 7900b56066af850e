"""spos/full — Single Path One-Shot on a ShuffleNetV2 choice space:
data → supernet → search (evolution under a MACs limit, BN recalibrated) → rank_check (does the
supernet rank anything? Kendall tau) → retrain (winner + baselines from scratch) → export."""
from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from params.loader import load_params
from params.models import SposParams
from params.registry import SPOS
from tasks.orchestration.pipeline import close_tracking_on_crash, finish, pipeline
from tasks.orchestration.search import control_fields
from tasks.spos.data import CifarSplit, data_task
from tasks.spos.export import INT8_COLUMNS, Exported, export_task
from tasks.spos.preflight import preflight
from tasks.spos.rank_check import RankChecked, rank_check_task
from tasks.spos.retrain import RetrainedPath, retrain_candidates, spos_retrain_task
from tasks.spos.search import SposSearched, spos_search
from tasks.spos.supernet import TrainedSupernet, train_supernet_task


# One training at a time with every core (2 cores: parallel trainings only fight).
@flow(name="spos", task_runner=ThreadPoolTaskRunner(max_workers=1),
      on_crashed=[close_tracking_on_crash], on_cancellation=[close_tracking_on_crash])
def spos(params_file: str = SPOS.params_file, overrides: dict[str, Any] | None = None,
         refresh_from: str | None = None) -> dict[str, Any]:
    """`refresh_from`: "all" recomputes every stage, a stage name recomputes it and what follows."""
    p = load_params(SposParams, params_file, overrides)  # bad input fails here, before any work
    preflight(p)  # files, weights, tables and device, also before any work
    convention = p.model.input_convention
    with pipeline(SPOS.name, p, SPOS.stages, refresh_from) as pipe:
        data: CifarSplit = pipe.run("data", data_task, data=p.data, seed=p.seed)
        supernet: TrainedSupernet = pipe.run("supernet", train_supernet_task, data=data, model=p.model,
                                             supernet=p.supernet, seed=p.seed)
        # Candidates go where candidate_workers / dask_address say (Pipeline.search).
        searched: SposSearched = pipe.search("search", spos_search, supernet=supernet, data=data, search=p.search,
                                             convention=convention, seed=p.seed)
        ranked: RankChecked = pipe.run("rank_check", rank_check_task, supernet=supernet, data=data,
                                       rank=p.rank_check, recalib_batches=p.search.recalib_batches,
                                       eval_batch=p.search.batch_size, convention=convention, seed=p.seed)
        chosen = retrain_candidates(supernet, searched.final, p.seed, p.retrain.baselines)
        retrained: list[RetrainedPath | None] = pipe.map("retrain", spos_retrain_task, chosen, supernet=supernet,
                                                         data=data, retrain_cfg=p.retrain, convention=convention,
                                                         seed=p.seed)
        if any(r is None for r in retrained):
            raise RuntimeError("retraining a model failed; see the task's log")
        exported: Exported = pipe.run("export", export_task, models=retrained, data=data, seed=p.seed,
                                      export=p.export, table_key="spos-comparison", convention=convention,
                                      predict_with="winner",
                                      title="searched path vs baselines trained from scratch with the same budget "
                                            "(test accuracy; r_c = MACs / winner's MACs)")
        rows = {r["model"]: r for r in exported.rows}
        final = searched.final
        rank = {f"kendall_{k}_{name}": getattr(a, k) for name, a in (("recalib", ranked.recalib),
                                                                    ("no_recalib", ranked.no_recalib)) if a
                for k in ("tau", "p_value", "ci_low", "ci_high", "verdict")}
        summary = {"winner_choices": "".join(map(str, final.choices)), "macs_limit": final.macs_limit,
                   "winner_supernet_acc": final.supernet_acc,
                   "supernet_final_loss": supernet.loss, "supernet_warm_start": p.supernet.warm_start is not None,
                   # Random paths spread over MACs: with the supernet's weights vs a short stand-alone training.
                   "supernet_path_acc_mean": ranked.supernet_acc_mean,
                   "standalone_path_acc_mean": ranked.standalone_acc_mean, **rank, **control_fields(searched.control),
                   **{f"{name}_{k}": r[k] for name, r in rows.items() for k in ("acc", "macs", "params", "ort_ms_batch1")},
                   **{f"{name}_{k}": r[k] for name, r in rows.items() for k in (*INT8_COLUMNS, "int8_error") if k in r}}
        summary["latency_flags"] = len(exported.latency_notes)  # winners whose search-time latency missed by > ±10 %
        return finish(pipe, summary, table=list(exported.rows))


if __name__ == "__main__":
    spos()
