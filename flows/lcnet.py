"""lcnet/full — PP-LCNet (PaddleX recipe): data → split → train → evaluate → export → predict."""
from __future__ import annotations

from typing import Any

from prefect import flow

from params.loader import load_params
from params.models import LcnetParams
from params.registry import LCNET
from tasks.lcnet.data import Sources, classification_data_task
from tasks.lcnet.evaluate import Evaluated, evaluate_classifier_task
from tasks.lcnet.export import INT8_SUMMARY, Exported, export_classifier_task
from tasks.lcnet.predict import Predicted, predict_task
from tasks.lcnet.preflight import preflight
from tasks.lcnet.split import Split, split_task
from tasks.lcnet.train import Trained, train_classifier_task
from tasks.orchestration.pipeline import close_tracking_on_crash, finish, pipeline


@flow(name="lcnet", on_crashed=[close_tracking_on_crash], on_cancellation=[close_tracking_on_crash])
def lcnet(params_file: str = LCNET.params_file, overrides: dict[str, Any] | None = None,
          refresh_from: str | None = None) -> dict[str, Any]:
    """`refresh_from`: "all" recomputes every stage, a stage name recomputes it and what follows."""
    p = load_params(LcnetParams, params_file, overrides)  # bad input fails here, before any work
    preflight(p)  # files, weights, tables and device, also before any work
    with pipeline(LCNET.name, p, LCNET.stages, refresh_from) as pipe:
        sources: Sources = pipe.run("data", classification_data_task, data=p.data)
        split: Split = pipe.run("split", split_task, sources=sources, data=p.data, seed=p.seed)
        trained: Trained = pipe.run("train", train_classifier_task, split=split, model=p.model, train=p.train,
                                    seed=p.seed)
        evaluated: Evaluated = pipe.run("evaluate", evaluate_classifier_task, split=split, trained=trained,
                                        model=p.model, topk=p.train.topk, seed=p.seed)
        exported: Exported = pipe.run("export", export_classifier_task, split=split, trained=trained, model=p.model,
                                      seed=p.seed, export=p.export)
        predicted: Predicted = pipe.run("predict", predict_task, split=split, exported=exported, predict=p.predict)
        summary = {"val_top1": evaluated.val_top1, "test_top1": evaluated.test_top1,
                   "macs": trained.macs, "params": trained.params,
                   "onnx_max_abs_diff": exported.onnx_max_abs_diff,
                   **{k: exported.report[k] for k in INT8_SUMMARY if k in exported.report},
                   "predict_latency_ms": predicted.average_latency_ms}
        return finish(pipe, summary)


if __name__ == "__main__":
    lcnet()
