"""Stage `export` of prune-ea/full and spos/full: each retrained classifier as an inference folder
(ONNX with softmax + torch.export program + model.yml in the model's input convention),
parity-checked against eager torch on real test images and timed with ONNX Runtime (batch 1),
then the comparison table for this run — prune-ea: baseline vs each front member (the seed's
table, r_c = MACs / baseline MACs); spos: the winner vs its baselines (r_c = MACs / winner's)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task

from deploy.classifier_export import log_int8
from params.models import ClassifierExportParams
from tasks.cifar.data import CifarSplit
from tasks.cifar.training import INT8_COLUMNS, TrainedClassifier, export_compared
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.handoff import StageResult
from tracking import tracker

__all__ = ["INT8_COLUMNS", "Exported", "export_classifiers_task"]


@dataclass(frozen=True, kw_only=True)
class Exported(StageResult):
    """The comparison table (one row per model, the reference first; also comparison.csv) and
    what the Predictor run said; `files`: each model's inference folder files, comparison.csv
    (+ .parquet) and export_report.json."""

    rows: tuple[dict[str, Any], ...]
    time_info: str
    predictor_model: str
    predictor_sample_accuracy: float
    latency_notes: tuple[str, ...] = ()  # models whose search-time latency missed the re-measured one by > ±10 %


@task(name="export", persist_result=True, cache_policy=STAGE_CACHE)
def export_classifiers_task(models: Sequence[TrainedClassifier], data: CifarSplit, seed: int, table_key: str,
                            title: str, ctx: StageContext,
                            convention: str = "rgb", predict_with: str | None = None,
                            export: ClassifierExportParams = ClassifierExportParams()) -> Exported:
    """`models`: the trained classifiers, the reference first (its MACs are r_c's denominator);
    the Predictor runs on `predict_with` (a name; default the last model)."""
    logger = get_run_logger()
    with tracker.child_run(ctx.parent_run_id, "export", {"input_convention": convention}) as run_id:
        compared = export_compared(models, data, seed, ctx.runtime, ctx.work, convention, predict_with,
                                   export.quantize, export.calibration_images)
        out = Exported(rows=tuple(compared["rows"]), time_info=compared["time_info"],
                       predictor_model=compared["predictor_model"],
                       predictor_sample_accuracy=compared["predictor_sample_accuracy"],
                       latency_notes=tuple(compared["latency_notes"]), files=tuple(compared["files"]))
        for row in out.rows:
            tracker.log_metrics(run_id, {f"{row['model']}_{k}": v for k, v in row.items() if k != "model"})
            if row.get("int8_error"):
                tracker.set_tags(run_id, {f"{row['model']}_int8_error": row["int8_error"][:250]})
        tracker.log_files(run_id, out.files, "export")
    tracker.publish_table(table_key, list(out.rows), title)
    logger.info("Predictor on %s:\n%s", out.predictor_model, out.time_info)
    for r in out.rows:
        logger.info("%-14s MACs %6.2fM (r_c %.2f)  params %.3fM  acc %.4f  ORT %.3f ms  ONNX |diff| %.1e", r["model"],
                    r["macs"] / 1e6, r["r_c"], r["params"] / 1e6, r["acc"], r["ort_ms_batch1"], r["onnx_max_abs_diff"])
        log_int8(logger, r["model"], r)
    for note in out.latency_notes:
        logger.warning("latency re-measured after export differs from the search's: %s", note)
    return out
