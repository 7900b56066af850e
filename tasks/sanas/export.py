"""Stage `export` of sanas/full: the found and the initial BlazeFace as inference folders, their
real latency measured and compared with the prediction, and the comparison table.

What is exported is the network SANAS's costs cover (`latency.measure.ssd_core`: backbone, SSD
heads, class softmax on a resized, normalized [N, 3, S, S] batch): model.onnx and model.pt2
(torch.export) with outputs `bbox_regression` [N, A, 4] (box deltas, torchvision's SSD coder,
weights 10, 10, 5, 5) and `scores` [N, A, classes], anchors.npy [A, 4] (x1, y1, x2, y2 in
input pixels) to decode them, and model.yml (input size and normalization, outputs, files).
torchvision's postprocess (decode + NMS) stays in torch; its program export is FasterRCNN-only
here. Both files are parity-checked against eager torch on held-out images.

With `export.quantize`, each network also gets a static int8 twin of its SSD core
(<name>/inference_model_int8: ONNX Runtime QDQ, calibrated on training images, the softmax kept
float) scored on every held-out image — the ORT outputs decoded by the detector's own
postprocess, COCO AP as training scores it — beside the float ONNX model, and timed interleaved
with it (batch 1). A graph ORT cannot quantize keeps the float model only, with one log line."""
from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from prefect import get_run_logger, task

from data.coco import CocoDetection, CocoSet, load_coco
from data.coco_eval import coco_map, to_coco_detections
from deploy.quantize import QuantizationError, quantization_block, quantize_onnx
from deploy.onnx_export import (export_program, load_program, make_session, max_abs_diff_vs_torch,
                                program_to_onnx, save_program, write_model_yml)
from latency.check import LatencyCheck
from latency.measure import interleaved_ms, measure_networks_ms, ssd_core
from params.models import FaceExportParams
from nas_models.registry import build_from_desc
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import write_json
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.tables import write_table
from tasks.sanas.data import Faces
from tasks.sanas.latency_table import Latency
from tasks.sanas.train import Trained
from tracking import tracker

PARITY_IMAGES = 8


@dataclass(frozen=True, kw_only=True)
class Exported(StageResult):
    """The comparison table (comparison.csv's rows, the found network first): tokens, AP50, AP,
    macs, params, predicted_ms, measured_ms, prediction_error_pct, prediction_flag (beyond ±10 %)
    and parity per network; `latency_notes`: one line per flagged network."""

    rows: tuple[Mapping[str, Any], ...]
    latency_notes: tuple[str, ...] = ()


def _anchors(model: torch.nn.Module, image_size: int) -> np.ndarray:
    """The detector's anchors for one image_size x image_size input (its own anchor generator)."""
    with torch.no_grad():
        images, _ = model.transform([torch.zeros(3, image_size, image_size)])
        features = list(model.backbone(images.tensors).values())
        return model.anchor_generator(images, features)[0].numpy()


def export_face_model(entry: Trained, image_size: int, images: torch.Tensor, out_dir: Path) -> dict[str, Any]:
    model = build_from_desc(dict(entry.desc))
    model.load_state_dict(torch.load(entry.model_path, map_location="cpu", weights_only=True))
    model.eval()
    core = ssd_core(model)
    program = export_program(core, images[:1])
    onnx_path = program_to_onnx(program, out_dir / "model.onnx", output_name=["bbox_regression", "scores"])
    program_path = save_program(program, out_dir / "model.pt2")
    np.save(out_dir / "anchors.npy", _anchors(model, image_size))
    meta = {"model": dict(entry.desc), "task": "face detection (SSD core)", "labels": ["__background__", "face"],
            "input": {"name": "image", "layout": "NCHW", "channel_order": "RGB", "size": image_size,
                      "range": [0.0, 1.0], "normalize": {"mean": [float(v) for v in model.transform.image_mean],
                                                         "std": [float(v) for v in model.transform.image_std]}},
            "outputs": {"bbox_regression": "box deltas per anchor (torchvision SSD coder, weights 10, 10, 5, 5)",
                        "scores": "softmax class probabilities per anchor"},
            "files": {"onnx": "model.onnx", "program": "model.pt2", "anchors": "anchors.npy"}}
    write_model_yml(out_dir / "model.yml", meta)
    session = make_session(onnx_path, 1)
    with torch.no_grad():
        reloaded = load_program(program_path).module()(images)
        expected = core(images)
    pt2_diff = max(float((a - b).abs().max()) for a, b in zip(reloaded, expected))
    return {"onnx": str(onnx_path), "program": str(program_path), "model_yml": str(out_dir / "model.yml"),
            "anchors": str(out_dir / "anchors.npy"), "core": core,
            "onnx_max_abs_diff": max_abs_diff_vs_torch(core, session, images), "pt2_max_abs_diff": pt2_diff}


INT8_COLUMNS = ("int8_AP50", "int8_AP", "int8_ap50_delta", "int8_ms_batch1", "int8_latency_ratio")


def _onnx_ap(session: Any, model: torch.nn.Module, val: CocoSet, anchors: torch.Tensor) -> dict[str, float]:
    """COCO AP of an exported SSD core run by ORT on every image of `val`, decoded by the
    detector's own postprocess (as its eager forward does)."""
    dataset = CocoDetection(val)
    outputs = []
    with torch.no_grad():
        for i in range(len(dataset)):
            raw = dataset[i][0]
            images, _ = model.transform([raw])
            reg, scores = session.run(None, {"image": images.tensors.numpy()})
            # postprocess_detections applies softmax to cls_logits; log-probabilities give the
            # exported softmax back unchanged.
            heads = {"bbox_regression": torch.from_numpy(reg),
                     "cls_logits": torch.from_numpy(scores).clamp_min(1e-30).log()}
            dets = model.postprocess_detections(heads, [anchors], images.image_sizes)
            outputs.append(model.transform.postprocess(dets, images.image_sizes, [tuple(raw.shape[-2:])])[0])
    ids = list(dataset.image_ids)
    scores = coco_map(val, to_coco_detections(ids, outputs, val), image_ids=ids)
    return {"AP50": scores["mAP50"], "AP": scores["mAP"]}


def _int8_face(entry: Trained, model_dir: Path, calibration: torch.Tensor, val: CocoSet, threads: int,
               cfg: FaceExportParams) -> dict[str, Any]:
    """Quantize `model_dir`'s SSD core into <name>/inference_model_int8 and score both ONNX models;
    {"int8_error": why} when ORT cannot quantize it."""
    int8_dir = model_dir.parent / "inference_model_int8"
    try:
        q = quantize_onnx(model_dir / "model.onnx", int8_dir / "model.onnx", calibration,
                          max_images=cfg.calibration_images)
    except QuantizationError as exc:
        shutil.rmtree(int8_dir, ignore_errors=True)
        return {"int8_error": exc.reason}
    meta = yaml.safe_load((model_dir / "model.yml").read_text())
    meta["files"] = {"onnx": "model.onnx", "anchors": "anchors.npy"}
    meta["quantization"] = quantization_block(q)
    np.save(int8_dir / "anchors.npy", np.load(model_dir / "anchors.npy"))
    write_model_yml(int8_dir / "model.yml", meta)
    model = build_from_desc(dict(entry.desc))
    model.load_state_dict(torch.load(entry.model_path, map_location="cpu", weights_only=True))
    model.eval()
    anchors = torch.from_numpy(np.load(model_dir / "anchors.npy"))
    sessions = {"float": make_session(model_dir / "model.onnx", threads), "int8": make_session(Path(q.path), threads)}
    ap = {k: _onnx_ap(s, model, val, anchors) for k, s in sessions.items()}
    one = {"image": calibration[:1].numpy()}
    ms = interleaved_ms({k: (lambda s=s: s.run(None, one)) for k, s in sessions.items()})
    return {"float_ort_AP50": ap["float"]["AP50"], "int8_AP50": ap["int8"]["AP50"], "int8_AP": ap["int8"]["AP"],
            "int8_ap50_delta": 100 * (ap["int8"]["AP50"] - ap["float"]["AP50"]), "int8_eval_images": len(val.images),
            "int8_ms_batch1": ms["int8"], "int8_latency_ratio": ms["int8"] / ms["float"] if ms["float"] else None,
            "int8_dir": str(int8_dir)}


def export_faces(models: Sequence[Trained], data: Faces, latency: Latency, image_size: int,
                 threads: int, out_dir: Path, cfg: FaceExportParams = FaceExportParams()) -> Exported:
    """`models`: the train stage's results, the found one first."""
    val_set = load_coco(Path(data.val_images), Path(data.val_json))
    val = CocoDetection(val_set)
    raw = torch.stack([val[i][0] for i in range(min(PARITY_IMAGES, len(val)))])
    probe = build_from_desc(dict(models[0].desc)).eval()
    with torch.no_grad():  # the detector's own resize + normalization, as the exported core expects
        images = probe.transform(list(raw))[0].tensors
    calibration = None
    if cfg.quantize:  # training images through the detector's resize + normalization, as the core takes them
        train = CocoDetection(load_coco(Path(data.train_images), Path(data.train_json)),
                              max_images=cfg.calibration_images)
        with torch.no_grad():
            calibration = probe.transform([train[i][0] for i in range(len(train))])[0].tensors
    rows, files, cores = [], [], {}
    for entry in models:
        exported = export_face_model(entry, image_size, images, out_dir / entry.name / "inference_model")
        cores[entry.name] = (exported.pop("core"), images[:1])
        perf = entry.performance or {}
        rows.append({"model": entry.name, "tokens": "".join(map(str, entry.tokens)), "AP50": perf["AP50"],
                     "AP": perf["AP"], "macs": perf["macs"], "params": perf["params"],
                     "predicted_ms": perf["predicted_ms"], "onnx_max_abs_diff": exported["onnx_max_abs_diff"],
                     "pt2_max_abs_diff": exported["pt2_max_abs_diff"]})
        files += [exported[k] for k in ("onnx", "program", "model_yml", "anchors")]
        if calibration is not None:
            int8 = _int8_face(entry, Path(exported["onnx"]).parent, calibration, val_set, threads, cfg)
            int8_dir = int8.pop("int8_dir", None)
            rows[-1] |= int8
            if int8_dir:
                files += [str(Path(int8_dir) / n) for n in ("model.onnx", "model.yml", "anchors.npy")]
        else:  # no int8 folder of an earlier export in this work folder may pass for this model's
            shutil.rmtree(out_dir / entry.name / "inference_model_int8", ignore_errors=True)
    measured = measure_networks_ms(cores, "onnxruntime", threads)  # interleaved: load hits both alike
    notes = []
    for row in rows:
        check = LatencyCheck(measured[row["model"]], row["predicted_ms"])
        row |= check.fields()
        notes += [n for n in [check.note(row["model"])] if n]
    files += [str(p) for p in write_table(rows, out_dir / "comparison.csv")]
    files.append(str(write_json(out_dir / "export_report.json", {"rows": rows, "threads": threads,
                                                                 "latency_table": latency.table_file})))
    return Exported(rows=tuple(rows), latency_notes=tuple(notes), files=tuple(files))


@task(name="export", persist_result=True, cache_policy=STAGE_CACHE)
def export_faces_task(models: list[Trained], data: Faces, latency: Latency, image_size: int,
                      threads: int, ctx: StageContext, export: FaceExportParams = FaceExportParams()) -> Exported:
    logger = get_run_logger()
    with tracker.child_run(ctx.parent_run_id, "export") as run_id:
        out = export_faces(models, data, latency, image_size, threads, ctx.work, export)
        for row in out.rows:
            tracker.log_metrics(run_id, {f"{row['model']}_{k}": v for k, v in row.items()
                                         if k not in ("model", "tokens")})
            if row.get("int8_error"):
                tracker.set_tags(run_id, {f"{row['model']}_int8_error": row["int8_error"][:250]})
        tracker.log_files(run_id, out.files, "export")
    tracker.publish_table("sanas-comparison", list(out.rows),
                          "found vs initial-token BlazeFace, same training budget: AP@0.5 on held-out images, "
                          "MACs, params, predicted vs measured latency (ONNX Runtime, batch 1)")
    for r in out.rows:
        logger.info("%-8s tokens %s  AP@0.5 %.4f  MACs %.2fM  params %d  latency predicted %.3f ms / measured %.3f ms "
                    "(%+.1f %%)  ONNX |diff| %.1e", r["model"], r["tokens"], r["AP50"], r["macs"] / 1e6, r["params"],
                    r["predicted_ms"], r["measured_ms"], r["prediction_error_pct"], r["onnx_max_abs_diff"])
        if r.get("int8_error"):
            logger.warning("%s: no int8 model, keeping the float one: %s", r["model"], r["int8_error"])
        elif "int8_AP50" in r:
            logger.info("%-8s int8: AP@0.5 %.4f (%+.2f points vs float ONNX on %d held-out images), batch-1 %.3f ms "
                        "= %.2fx float", r["model"], r["int8_AP50"], r["int8_ap50_delta"], r["int8_eval_images"],
                        r["int8_ms_batch1"], r["int8_latency_ratio"])
    for note in out.latency_notes:
        logger.warning("latency prediction missed: %s", note)
    return out
