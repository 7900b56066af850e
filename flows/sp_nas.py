"""spnas/full — Vega SP-NAS for object detection:
split → fine_tune → serial search → reignite → parallel search → fully train (+ baseline) → export."""
from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from params.loader import load_params
from params.models import SpnasParams
from tasks.common import fingerprint_tree
from tasks.export_detector import export_detector_task
from tasks.fine_tune import fine_tune_task
from tasks.fully_train import compare_task, fully_train_task
from tasks.parallel_search import parallel_search
from tasks.pipeline import close_tracking_on_crash, candidate_runner, finish, map_candidates, pipeline, run_stage
from tasks.reignite import reignite_task
from tasks.serial_search import serial_search
from tasks.split import resolve_dataset_dir
from tasks.split_detection import resolve_coco, split_detection_task


def _data_fingerprint(values: dict[str, Any]) -> str:
    coco = resolve_coco(values)
    return "-".join(fingerprint_tree(coco[k]) for k in ("train_images", "val_images")) + "-" + \
        fingerprint_tree(resolve_dataset_dir(values.get("classification_dir")))


# One stage at a time with every core: the final and baseline trainings would only fight.
@flow(name="spnas", task_runner=ThreadPoolTaskRunner(max_workers=1),
      on_crashed=[close_tracking_on_crash], on_cancellation=[close_tracking_on_crash])
def spnas(params_file: str = "params/spnas.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    p = load_params(SpnasParams, params_file, overrides)  # bad input fails here, before any work
    v = p.model_dump(mode="json")
    with pipeline("spnas", p) as pipe:
        run = {"run_dir": str(pipe.run_dir), "parent_run_id": pipe.parent_run_id}
        data = run_stage(split_detection_task, p=v, data_fingerprint=_data_fingerprint(v), **run)
        start = run_stage(fine_tune_task, data=data, p=v, **run)
        runner, search_v = candidate_runner(v)
        serial = serial_search.with_options(task_runner=runner)(data=data, p=search_v, start=start, **run)
        reignited = run_stage(reignite_task, data=data, chosen=serial["best"], p=v, **run)
        parallel = parallel_search.with_options(task_runner=runner)(data=data, p=search_v, base=reignited, **run)
        final = {**parallel["best"], "role": "final"}
        to_train = [final] + ([{**start, "neck_code": None, "role": "baseline"}] if p.baseline else [])
        trained = map_candidates(fully_train_task, to_train, data=data, p=v, **run)
        if any(t is None for t in trained):
            raise RuntimeError("fully_train failed; see the task's log")
        compare_task(results=trained, **run)
        exported = run_stage(export_detector_task, final=trained[0], data=data, p=v, **run)
        best, base = trained[0]["performance"], trained[-1]["performance"]
        summary = {"final_code": final["code"], "final_neck_code": str(final.get("neck_code")),
                   "final_mAP": best["mAP"], "final_mAP50": best["mAP50"], "final_params": best["params"],
                   "final_macs": best["macs"], "serial_candidates": len(serial["rows"]),
                   "mutation_kinds": ",".join(serial["mutation_kinds"]), "parallel_candidates": len(parallel["rows"])}
        if p.baseline:
            summary |= {"baseline_mAP": base["mAP"], "baseline_mAP50": base["mAP50"], "baseline_params": base["params"],
                        "baseline_macs": base["macs"]}
        summary["onnx_max_box_diff"] = exported["report"].get("onnx_max_box_diff")
        return finish(pipe, summary)


if __name__ == "__main__":
    spnas()
