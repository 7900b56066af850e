"""spnas/full — Vega SP-NAS for object detection:
data → split → fine_tune → serial search → reignite → parallel search → fully train (+ baseline) → export."""
from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from params.loader import load_params
from params.models import SpnasParams
from params.registry import SPNAS
from tasks.orchestration.pipeline import close_tracking_on_crash, finish, pipeline
from tasks.orchestration.search import control_fields, own_rows
from tasks.spnas.data import Sources, detection_data_task
from tasks.spnas.export import Exported, export_detector_task
from tasks.spnas.fine_tune import FineTuned, fine_tune_task
from tasks.spnas.fully_train import Compared, Trained, compare_task, fully_train_task
from tasks.spnas.parallel import ParallelSearched, parallel_search
from tasks.spnas.preflight import preflight
from tasks.spnas.reignite import Reignited, reignite_task
from tasks.spnas.serial import SerialSearched, serial_search
from tasks.spnas.split import Split, split_detection_task


# One stage at a time with every core: the final and baseline trainings would only fight.
@flow(name="spnas", task_runner=ThreadPoolTaskRunner(max_workers=1),
      on_crashed=[close_tracking_on_crash], on_cancellation=[close_tracking_on_crash])
def spnas(params_file: str = SPNAS.params_file, overrides: dict[str, Any] | None = None,
          refresh_from: str | None = None) -> dict[str, Any]:
    """`refresh_from`: "all" recomputes every stage, a stage name recomputes it and what follows."""
    p = load_params(SpnasParams, params_file, overrides)  # bad input fails here, before any work
    preflight(p)  # files, weights, tables and device, also before any work
    with pipeline(SPNAS.name, p, SPNAS.stages, refresh_from) as pipe:
        sources: Sources = pipe.run("data", detection_data_task, data=p.data, image_size=p.model.image_size,
                                    seed=p.seed)
        data: Split = pipe.run("split", split_detection_task, sources=sources, data=p.data, seed=p.seed)
        train = {"optimizer": p.optimizer, "seed": p.seed}
        start: FineTuned = pipe.run("fine_tune", fine_tune_task, data=data, model=p.model, fine_tune=p.fine_tune,
                                    **train)
        # Search candidates go where candidate_workers / dask_address say (Pipeline.search).
        serial: SerialSearched = pipe.search("serial", serial_search, data=data, start=start, model=p.model,
                                             serial=p.serial, **train)
        reignited: Reignited = pipe.run("reignite", reignite_task, data=data, chosen=serial.best, model=p.model,
                                        reignite=p.reignite, **train)
        parallel: ParallelSearched = pipe.search("parallel", parallel_search, data=data, base=reignited, start=start,
                                                 model=p.model, parallel=p.parallel, **train)
        candidates = to_fully_train(parallel, start, p.fully_train.baseline)
        trained: list[Trained] = pipe.map("fully_train", fully_train_task, candidates, data=data,
                                          fully_train=p.fully_train, **train)
        if any(t is None for t in trained):
            raise RuntimeError("fully_train failed; see the task's log")
        compared: Compared = pipe.run("fully_train", compare_task, results=trained, limits=parallel.limits)
        exported: Exported = pipe.run("export", export_detector_task, final=trained[0], data=data, export=p.export,
                                      seed=p.seed, search_latency_ms=parallel.best.get("latency_ms"))
        return finish(pipe, summarize(trained, compared, serial, parallel, exported))


def to_fully_train(parallel: ParallelSearched, start: FineTuned, baseline: bool) -> list[dict[str, Any]]:
    """fully_train's mapped candidates: the parallel winner (its candidate result) and, with
    `baseline`, the starting detector from its fine_tune weights."""
    final = {**parallel.best, "role": "final"}
    if not baseline:
        return [final]
    return [final, {"role": "baseline", "code": start.code, "neck_code": None, "desc": start.desc,
                    "model_path": start.model_path}]


def summarize(trained: list[Trained], compared: Compared, serial: SerialSearched, parallel: ParallelSearched,
              exported: Exported) -> dict[str, Any]:
    final, best = trained[0], trained[0].performance or {}
    summary = {"final_code": final.code, "final_neck_code": final.neck_text,
               "final_mAP": best["mAP"], "final_mAP50": best["mAP50"], "final_params": best["params"],
               "final_macs": best["macs"], "final_within_limit": compared.rows[0]["within_limit"],
               "serial_candidates": len(own_rows(serial.rows)), "mutation_kinds": ",".join(serial.mutation_kinds),
               "parallel_candidates": len(own_rows(parallel.rows)),
               **{f"{name}_{k}": v for name, stage in (("serial", serial), ("parallel", parallel))
                  for k, v in control_fields(stage.control).items()}}
    if len(trained) > 1:
        base = trained[1].performance or {}
        summary |= {"baseline_mAP": base["mAP"], "baseline_mAP50": base["mAP50"], "baseline_params": base["params"],
                    "baseline_macs": base["macs"]}
    summary["onnx_max_box_diff"] = exported.report.get("onnx_max_box_diff")
    summary |= {k: exported.report[k] for k in ("int8_map", "int8_map_delta", "int8_ms_per_image",
                                                 "int8_latency_ratio", "int8_error") if k in exported.report}
    summary |= {k: exported.report[k] for k in ("backbone_measured_ms", "backbone_predicted_ms",
                                                 "backbone_prediction_error_pct") if k in exported.report}
    summary["latency_flags"] = int(bool(exported.report.get("latency_note")))  # search-time latency missed by > ±10 %
    return summary


if __name__ == "__main__":
    spnas()
