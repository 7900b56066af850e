"""Stage `export` of spnas/full: the fully trained detector as an inference-model folder (ONNX +
torch.export program + model.yml), checked against eager torch on real held-out images, then run
through the ONNX Runtime Predictor, which draws its boxes on a few images."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from data.coco import CocoDetection, load_coco
from deploy.detector_export import export_detector, parity_check
from deploy.detector_predictor import DetectorPredictor
from engine.runtime import configure_torch
from params.models import DetectorExportParams, Runtime
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import write_json
from tasks.orchestration.handoff import StageResult
from tasks.spnas.detectors import load_detector
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


def export_stage(final: Trained, data: Split, cfg: DetectorExportParams, seed: int, runtime: Runtime,
                 out_dir: Path) -> Exported:
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
    report_path = write_json(out_dir / "export_report.json", report)
    predictions = write_json(out_dir / "predictions.json",
                             [{"image": str(pth), "detections": d} for pth, d in zip(paths, detections)])
    model_files = [files[k] for k in ("onnx", "program", "model_yml") if files.get(k)]
    return Exported(model_dir=files["model_dir"], onnx=files.get("onnx"), program=files.get("program"),
                    model_yml=files["model_yml"], report=report, time_info=predictor.time_info.report(),
                    drawn=tuple(drawn), files=(*model_files, str(report_path), str(predictions), *drawn))


@task(name="export", persist_result=True, cache_policy=STAGE_CACHE)
def export_detector_task(final: Trained, data: Split, export: DetectorExportParams, seed: int,
                         ctx: StageContext) -> Exported:
    with tracker.child_run(ctx.parent_run_id, "export") as run_id:
        out = export_stage(final, data, export, seed, ctx.runtime, ctx.work)
        tracker.log_metrics(run_id, {k: v for k, v in out.report.items() if not isinstance(v, dict)}
                            | {f"predict_{k}": v for k, v in out.report["timing"].items()})
        tracker.log_files(run_id, [out.model_dir], "inference_model")
        tracker.log_files(run_id, out.drawn, "predictions")
    get_run_logger().info("exported to %s; parity %s\n%s", out.model_dir,
                          {k: v for k, v in out.report.items() if k != "timing"}, out.time_info)
    return out
