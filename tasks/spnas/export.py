"""Stage `export` of spnas/full: the fully trained detector as an inference-model folder (ONNX +
torch.export program + model.yml), checked against eager torch on real held-out images, then run
through the ONNX Runtime Predictor, which draws its boxes on a few images. With `export.quantize`, a
static int8 twin (inference_model_int8/, calibrated on training images) whose held-out mAP and
latency are reported beside the float ONNX model's; if ORT cannot quantize the graph, one log line
says why and only the float model is kept. With `search_latency_ms` (the parallel search ran under
`parallel.max_latency_ms`), the trained detector's timed part (backbone + FPN, as the search's gate
timed it) is measured again and set beside the search's figure, flagged beyond ±10 %."""
from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prefect import get_run_logger, task

from data.coco import CocoDetection, CocoSet, load_coco
from deploy.detector_export import (INT8_DIR, detector_int8_figures, export_detector, export_int8_detector,
                                    parity_check)
from deploy.detector_predictor import DetectorPredictor
from deploy.quantize import QuantizationError
from engine.runtime import configure_torch
from latency.check import LatencyCheck
from latency.measure import TimingConfig, interleaved_ms, measure_network_ms
from params.models import DetectorExportParams, Runtime
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import write_json
from tasks.orchestration.handoff import StageResult
from tasks.spnas.detectors import load_detector, timed_part
from tasks.spnas.fully_train import Trained
from tasks.spnas.split import Split
from tracking import tracker


@dataclass(frozen=True, kw_only=True)
class Exported(StageResult):
    """The inference-model folder, its parity and timing report, and the drawn predictions."""

    model_dir: str
    onnx: str | None
    program: str | None
    model_yml: str
    report: Mapping[str, Any]   # parity figures, "timing" and "threads" (export_report.json)
    time_info: str              # the Predictor's timing, as the log prints it
    drawn: tuple[str, ...]      # images with the predicted boxes drawn


def remeasured(model: Any, image_size: int, search_latency_ms: float) -> dict[str, Any]:
    """backbone_* fields: the trained detector's timed part measured again (one thread, the tables'
    fuller timing) beside the figure its search admitted it on; `latency_note` when they part ways."""
    example = torch.rand(1, 3, image_size, image_size)
    check = LatencyCheck(measure_network_ms(timed_part(model), example, "onnxruntime", 1), search_latency_ms)
    note = check.note("final detector backbone + FPN")
    return {**{f"backbone_{k}": v for k, v in check.fields().items()}, **({"latency_note": note} if note else {})}


def export_stage(final: Trained, data: Split, cfg: DetectorExportParams, seed: int, runtime: Runtime,
                 out_dir: Path, search_latency_ms: float | None = None) -> Exported:
    threads = configure_torch(runtime.num_threads, seed)
    model = load_detector(final.desc, final.model_path).eval()  # export and parity run on CPU
    files = export_detector(model, final.desc["image_size"], out_dir / "inference_model", list(data.labels))
    val = load_coco(Path(data.val_images), Path(data.val_json))
    dataset = CocoDetection(val, max_images=cfg.num_images)
    images = [dataset[i][0] for i in range(len(dataset))]
    checks = parity_check(model, Path(files["model_dir"]), images)
    predictor = DetectorPredictor(files["model_dir"], threads=threads)
    paths = [val.images_dir / info["file_name"] for info in dataset.images]
    detections = predictor.predict([str(pth) for pth in paths], warmup=2, repeats=3)
    drawn_dir = out_dir / "predictions"
    drawn_dir.mkdir(exist_ok=True)
    drawn = []
    for pth, dets in zip(paths, detections):
        target = drawn_dir / f"{pth.stem}_boxes.png"
        predictor.draw(str(pth), dets, target)
        drawn.append(str(target))
    report = {**checks, "timing": predictor.time_info.as_dict(), "threads": threads}
    if search_latency_ms is not None:
        report |= remeasured(model, final.desc["image_size"], search_latency_ms)
    int8_files: list[str] = []
    if cfg.quantize:
        report |= _int8(files["model_dir"], data, val, cfg, threads)
        if report.get("int8_model_dir"):
            int8_files = [str(Path(report["int8_model_dir"]) / n) for n in ("model.onnx", "model.yml")]
    else:  # no int8 folder of an earlier export in this work folder may pass for this model's
        shutil.rmtree(out_dir / INT8_DIR, ignore_errors=True)
    report_path = write_json(out_dir / "export_report.json", report)
    predictions = write_json(out_dir / "predictions.json",
                             [{"image": str(pth), "detections": d} for pth, d in zip(paths, detections)])
    model_files = [files[k] for k in ("onnx", "program", "model_yml") if files.get(k)]
    return Exported(model_dir=files["model_dir"], onnx=files.get("onnx"), program=files.get("program"),
                    model_yml=files["model_yml"], report=report, time_info=predictor.time_info.report(),
                    drawn=tuple(drawn), files=(*model_files, *int8_files, str(report_path), str(predictions), *drawn))


def _int8(model_dir: str, data: Split, val: CocoSet, cfg: DetectorExportParams, threads: int) -> dict[str, Any]:
    """The int8 twin's figures, or {"int8_error": why} (the float folder stays the one to deploy)."""
    train = CocoDetection(load_coco(Path(data.train_images), Path(data.train_json)), max_images=cfg.calibration_images)
    try:
        q = export_int8_detector(Path(model_dir), [train[i][0] for i in range(len(train))],
                                 max_images=cfg.calibration_images)
    except QuantizationError as exc:
        return {"int8_error": exc.reason}
    # A Faster R-CNN call takes tens of ms: fewer timed calls than the ms-scale default.
    timing = TimingConfig(warmup=2, rounds=3, number=3, passes=2)
    figures = detector_int8_figures(Path(model_dir) / "model.onnx", Path(q.path), val, cfg.int8_eval_images, threads,
                                    lambda fns: interleaved_ms(fns, timing))
    return {**figures, "int8_model_dir": str(Path(q.path).parent), "int8_quantize_s": q.seconds,
            "int8_calibration_images": q.calibration_images, "int8_qdq_nodes": q.qdq_nodes}


@task(name="export", persist_result=True, cache_policy=STAGE_CACHE)
def export_detector_task(final: Trained, data: Split, export: DetectorExportParams, seed: int,
                         ctx: StageContext, search_latency_ms: float | None = None) -> Exported:
    with tracker.child_run(ctx.parent_run_id, "export") as run_id:
        out = export_stage(final, data, export, seed, ctx.runtime, ctx.work, search_latency_ms)
        tracker.log_metrics(run_id, {k: v for k, v in out.report.items() if not isinstance(v, (dict, str))}
                            | {f"predict_{k}": v for k, v in out.report["timing"].items()})
        tracker.log_files(run_id, [out.model_dir], "inference_model")
        tracker.log_files(run_id, out.drawn, "predictions")
        if out.report.get("int8_model_dir"):
            tracker.log_files(run_id, [out.report["int8_model_dir"]], "inference_model_int8")
        if out.report.get("int8_error"):
            tracker.set_tags(run_id, {"int8_error": out.report["int8_error"][:250]})
    logger = get_run_logger()
    logger.info("exported to %s; parity %s\n%s", out.model_dir,
                {k: v for k, v in out.report.items() if k != "timing" and not k.startswith("int8")}, out.time_info)
    r = out.report
    if r.get("int8_error"):
        logger.warning("no int8 detector, keeping the float one: %s", r["int8_error"])
    elif "int8_map" in r:
        logger.info("int8 detector: mAP %.4f (%+.2f points vs float ONNX on %d held-out images), %.1f ms per image "
                    "= %.2fx float", r["int8_map"], r["int8_map_delta"], r["int8_eval_images"], r["int8_ms_per_image"],
                    r["int8_latency_ratio"])
    if "backbone_measured_ms" in r:
        logger.info("backbone + FPN latency: %.3f ms measured now, %.3f ms when the search admitted it",
                    r["backbone_measured_ms"], r["backbone_predicted_ms"])
    if r.get("latency_note"):
        logger.warning("latency re-measured after training differs from the search's: %s", r["latency_note"])
    return out
