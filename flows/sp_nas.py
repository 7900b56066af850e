"""spnas/full — Vega SP-NAS for object detection:
data → split → fine_tune → serial search → reignite → parallel search → fully train (+ baseline) → export."""
from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from params.loader import load_params
from params.models import SpnasParams
from params.registry import SPNAS
from tasks.spnas.export import export_detector_task
from tasks.spnas.fine_tune import fine_tune_task
from tasks.spnas.fully_train import compare_task, fully_train_task
from tasks.spnas.parallel import parallel_search
from tasks.orchestration.pipeline import close_tracking_on_crash, finish, pipeline
from tasks.spnas.preflight import preflight
from tasks.spnas.data import detection_data_task
from tasks.spnas.reignite import reignite_task
from tasks.spnas.serial import serial_search
from tasks.spnas.split import split_detection_task



# One stage at a time with every core: the final and baseline trainings would only fight.
@flow(name="spnas", task_runner=ThreadPoolTaskRunner(max_workers=1),
      on_crashed=[close_tracking_on_crash], on_cancellation=[close_tracking_on_crash])
def spnas(params_file: str = SPNAS.params_file, overrides: dict[str, Any] | None = None,
          refresh_from: str | None = None) -> dict[str, Any]:
    """`refresh_from`: "all" recomputes every stage, a stage name recomputes it and what follows."""
    p = load_params(SpnasParams, params_file, overrides)  # bad input fails here, before any work
    preflight(p)  # files, weights, tables and device, also before any work
    with pipeline(SPNAS.name, p, SPNAS.stages, refresh_from) as pipe:
        sources = pipe.run("data", detection_data_task, data=p.data, image_size=p.model.image_size, seed=p.seed)
        data = pipe.run("split", split_detection_task, sources=sources, data=p.data, seed=p.seed)
        train = {"optimizer": p.optimizer, "seed": p.seed}
        start = pipe.run("fine_tune", fine_tune_task, data=data, model=p.model, fine_tune=p.fine_tune, **train)
        # Search candidates go where candidate_workers / dask_address say (Pipeline.search).
        serial = pipe.search("serial", serial_search, data=data, start=start, model=p.model, serial=p.serial, **train)
        reignited = pipe.run("reignite", reignite_task, data=data, chosen=serial["best"], model=p.model,
                             reignite=p.reignite, **train)
        parallel = pipe.search("parallel", parallel_search, data=data, base=reignited, start=start, model=p.model,
                               parallel=p.parallel, **train)
        final = {**parallel["best"], "role": "final"}
        baseline = {**start, "neck_code": None, "role": "baseline"}
        trained = pipe.map("fully_train", fully_train_task, [final] + ([baseline] if p.fully_train.baseline else []),
                           data=data, fully_train=p.fully_train, **train)
        if any(t is None for t in trained):
            raise RuntimeError("fully_train failed; see the task's log")
        compared = pipe.run("fully_train", compare_task, results=trained, limits=parallel["limits"])
        exported = pipe.run("export", export_detector_task, final=trained[0], data=data, export=p.export, seed=p.seed)
        return finish(pipe, summarize(final, trained, compared, serial, parallel, exported))


def summarize(final: dict[str, Any], trained: list[dict[str, Any]], compared: dict[str, Any], serial: dict[str, Any],
              parallel: dict[str, Any], exported: dict[str, Any]) -> dict[str, Any]:
    best = trained[0]["performance"]
    summary = {"final_code": final["code"], "final_neck_code": str(final.get("neck_code")),
               "final_mAP": best["mAP"], "final_mAP50": best["mAP50"], "final_params": best["params"],
               "final_macs": best["macs"], "final_within_limit": compared["rows"][0]["within_limit"],
               "serial_candidates": len(serial["rows"]), "mutation_kinds": ",".join(serial["mutation_kinds"]),
               "parallel_candidates": len(parallel["rows"])}
    if len(trained) > 1:
        base = trained[1]["performance"]
        summary |= {"baseline_mAP": base["mAP"], "baseline_mAP50": base["mAP50"], "baseline_params": base["params"],
                    "baseline_macs": base["macs"]}
    summary["onnx_max_box_diff"] = exported["report"].get("onnx_max_box_diff")
    return summary


if __name__ == "__main__":
    spnas()
