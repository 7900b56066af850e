"""Stage `predict` of lcnet/full: run the exported model on test images through the Predictor
and report PaddleX-style timing (after warm-up)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from data.imagefolder import read_list
from deploy.predictor import ClassifierPredictor
from params.models import LcnetPredict, Runtime
from tasks.lcnet.export import Exported
from tasks.lcnet.split import Split
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import write_json
from tasks.orchestration.handoff import StageResult
from tracking import tracker


@dataclass(frozen=True, kw_only=True)
class Predicted(StageResult):
    """Top-1 per image (table rows), the Predictor's timing (timing.json) and its printout."""

    rows: tuple[Mapping[str, Any], ...]  # image, true_label, category, score, ...
    timing: Mapping[str, float]
    report: str
    accuracy: float  # share of rows whose top-1 is the true label

    @property
    def average_latency_ms(self) -> float:
        return self.timing["average_latency_ms"]


def predict_stage(split: Split, exported: Exported, cfg: LcnetPredict, runtime: Runtime,
                  out_dir: Path) -> Predicted:
    source = split.test_list or split.val_list
    items = read_list(Path(source), len(split.labels))[: cfg.count]
    paths = [Path(split.dataset_dir) / rel for rel, _ in items]
    predictor = ClassifierPredictor(exported.model_dir, threads=runtime.num_threads or 2)
    results = predictor.predict([str(p) for p in paths], topk=min(cfg.topk, len(split.labels)),
                                warmup=cfg.warmup, repeats=cfg.repeats)
    rows = [{"image": str(p), "true_label": split.labels[label], **r[0]}
            for p, (_, label), r in zip(paths, items, results)]
    timing = predictor.time_info.as_dict()
    files = [write_json(out_dir / "predictions.json", {"predictions": [{"image": str(p), "topk": r}
                                                                       for p, r in zip(paths, results)]}),
             write_json(out_dir / "timing.json", timing)]
    (out_dir / "time_info.txt").write_text(predictor.time_info.report() + "\n")
    files.append(out_dir / "time_info.txt")
    correct = sum(r["category"] == r["true_label"] for r in rows)
    return Predicted(rows=tuple(rows), timing=timing, report=predictor.time_info.report(),
                     accuracy=correct / len(rows), files=tuple(str(f) for f in files))


@task(name="predict", persist_result=True, cache_policy=STAGE_CACHE)
def predict_task(split: Split, exported: Exported, predict: LcnetPredict, ctx: StageContext) -> Predicted:
    with tracker.child_run(ctx.parent_run_id, "predict", predict.model_dump()) as run_id:
        out = predict_stage(split, exported, predict, ctx.runtime, ctx.work)
        tracker.log_metrics(run_id, dict(out.timing) | {"sample_accuracy": out.accuracy})
        tracker.log_files(run_id, out.files, "predict")
    get_run_logger().info("predictions on %d images (%.0f%% correct)\n%s", len(out.rows),
                          100 * out.accuracy, out.report)
    tracker.publish_table("predictions", list(out.rows), "top-1 of the exported model on held-out images")
    return out
