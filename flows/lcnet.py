"""lcnet/full — PP-LCNet (PaddleX recipe): split → train → evaluate → export → predict."""
from __future__ import annotations

from typing import Any

from prefect import flow

from params.loader import load_params
from params.models import LcnetParams
from tasks.common import fingerprint_tree
from tasks.evaluate_classifier import evaluate_classifier_task
from tasks.export_classifier import export_classifier_task
from tasks.pipeline import close_tracking_on_crash, finish, pipeline, run_stage
from tasks.predict import predict_task
from tasks.split import resolve_dataset_dir, split_task
from tasks.train_classifier import train_classifier_task


@flow(name="lcnet", on_crashed=[close_tracking_on_crash], on_cancellation=[close_tracking_on_crash])
def lcnet(params_file: str = "params/lcnet.yaml", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    p = load_params(LcnetParams, params_file, overrides)  # bad input fails here, before any work
    values = p.model_dump(mode="json")
    with pipeline("lcnet", p) as pipe:
        run = {"run_dir": str(pipe.run_dir), "parent_run_id": pipe.parent_run_id}
        split = run_stage(split_task, dataset_dir=p.dataset_dir, val_value=p.val_value, test_value=p.test_value,
                          seed=p.seed, data_fingerprint=fingerprint_tree(resolve_dataset_dir(p.dataset_dir)), **run)
        trained = run_stage(train_classifier_task, split=split, params=values, **run)
        evaluated = run_stage(evaluate_classifier_task, split=split, trained=trained, params=values, **run)
        exported = run_stage(export_classifier_task, split=split, trained=trained, params=values, **run)
        predicted = run_stage(predict_task, split=split, exported=exported, params=values, **run)
        metrics = evaluated["metrics"]
        summary = {"val_top1": metrics["val"]["top1"], "test_top1": metrics.get("test", {}).get("top1"),
                   "macs": trained["performance"]["macs"], "params": trained["performance"]["params"],
                   "onnx_max_abs_diff": exported["report"]["onnx_max_abs_diff"],
                   "predict_latency_ms": predicted["timing"]["average_latency_ms"]}
        return finish(pipe, summary)


if __name__ == "__main__":
    lcnet()
