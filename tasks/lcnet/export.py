"""Stage `export` of lcnet/full: inference-model folder (ONNX with softmax, torch.export program,
model.yml), checked against eager torch on real validation images; batch-1 latency of eager
torch vs ONNX Runtime, same threads. With `export.quantize`, a static int8 twin
(inference_model_int8/) calibrated on training images, scored on the images the evaluate stage
scores (test, else val) beside the float ONNX model and timed interleaved with it."""
from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import get_run_logger, task
from torch.utils.data import DataLoader

from data.imagefolder import ListDataset
from deploy.classifier_export import INT8_DIR, export_classifier, int8_twin, log_int8, parity
from deploy.onnx_export import WithSoftmax, make_session
from engine.runtime import configure_torch
from latency.measure import interleaved_ms
from latency.timing import min_latency_ms
from params.models import ClassifierExportParams, LcnetModel, Runtime
from tasks.lcnet.classifiers import load_trained, loaders, preprocess_for
from tasks.lcnet.split import Split
from tasks.lcnet.train import Trained
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import write_json
from tasks.orchestration.handoff import StageResult
from tracking import tracker


INT8_SUMMARY = ("int8_acc", "int8_acc_delta", "int8_ms_batch1", "int8_latency_ratio", "int8_error")


@dataclass(frozen=True, kw_only=True)
class Exported(StageResult):
    """The inference-model folder the Predictor loads, and export_report.json's figures (parity
    with eager torch, batch-1 latency of torch and ONNX Runtime)."""

    model_dir: str
    onnx: str
    program: str  # model.pt2
    model_yml: str
    report: Mapping[str, Any]

    @property
    def onnx_max_abs_diff(self) -> float:
        return self.report["onnx_max_abs_diff"]


def _stack(loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in loader])
    return np.concatenate(images), np.concatenate(labels)


def _calibration(split: Split, model: LcnetModel, count: int) -> torch.Tensor:
    """`count` training images spread over the train list (which may be ordered by class), with
    the evaluation preprocessing the exported model.yml names — no augmentation."""
    train = ListDataset(Path(split.dataset_dir), Path(split.train_list), Path(split.labels_file), preprocess_for(model))
    picks = np.unique(np.linspace(0, len(train) - 1, min(count, len(train))).astype(int))
    return torch.stack([train[int(i)][0] for i in picks])


def export_stage(split: Split, trained: Trained, model: LcnetModel, seed: int, runtime: Runtime,
                 out_dir: Path, export: ClassifierExportParams = ClassifierExportParams()) -> Exported:
    threads = configure_torch(runtime.num_threads, seed)
    net = load_trained(trained.desc, trained.model_path)  # export, parity and latency on CPU: what the Predictor runs
    files = export_classifier(net, dict(trained.desc), list(split.labels), preprocess_for(model),
                              out_dir / "inference_model")
    _, val_loader, test_loader = loaders(split, model, 1, seed)
    images, _ = next(iter(val_loader))
    checks = parity(net, Path(files["onnx"]), images, threads)
    one = images[:1]
    wrapped = WithSoftmax(net).eval()
    session = make_session(Path(files["onnx"]), threads)
    with torch.inference_mode():
        torch_ms = min_latency_ms(lambda: wrapped(one))
    ort_ms = min_latency_ms(lambda: session.run(None, {"image": one.numpy()}))
    report = {**checks, "parity_images": int(images.shape[0]), "torch_ms_batch1": torch_ms,
              "ort_ms_batch1": ort_ms, "ort_speedup": torch_ms / ort_ms if ort_ms else None, "threads": threads}
    model_files = [files[k] for k in ("onnx", "program", "model_yml") if files.get(k)]
    if export.quantize:
        held_out = test_loader if test_loader is not None else val_loader
        eval_images, eval_labels = _stack(held_out)
        report |= {"int8_eval_subset": "test" if test_loader is not None else "val",
                   **int8_twin(Path(files["model_dir"]), _calibration(split, model, export.calibration_images),
                               eval_images, eval_labels, threads, interleaved_ms, export.calibration_images)}
        if "int8_model_dir" in report:
            model_files += [str(Path(report["int8_model_dir"]) / n) for n in ("model.onnx", "model.yml")]
    else:  # no int8 folder of an earlier export in this work folder may pass for this model's
        shutil.rmtree(out_dir / INT8_DIR, ignore_errors=True)
    path = write_json(out_dir / "export_report.json", report)
    return Exported(model_dir=files["model_dir"], onnx=files["onnx"], program=files["program"],
                    model_yml=files["model_yml"], report=report, files=(*model_files, str(path)))


@task(name="export", persist_result=True, cache_policy=STAGE_CACHE)
def export_classifier_task(split: Split, trained: Trained, model: LcnetModel, seed: int,
                           ctx: StageContext, export: ClassifierExportParams = ClassifierExportParams()) -> Exported:
    with tracker.child_run(ctx.parent_run_id, "export") as run_id:
        out = export_stage(split, trained, model, seed, ctx.runtime, ctx.work, export)
        tracker.log_metrics(run_id, out.report)
        tracker.log_files(run_id, [out.model_dir], "inference_model")
        if out.report.get("int8_model_dir"):
            tracker.log_files(run_id, [out.report["int8_model_dir"]], "inference_model_int8")
        if out.report.get("int8_error"):
            tracker.set_tags(run_id, {"int8_error": out.report["int8_error"][:250]})
    r = out.report
    logger = get_run_logger()
    logger.info("exported to %s; ONNX vs torch max |diff| %.2e; batch-1 latency torch %.2f ms, "
                "ONNX Runtime %.2f ms", out.model_dir, r["onnx_max_abs_diff"], r["torch_ms_batch1"], r["ort_ms_batch1"])
    log_int8(logger, "model", r)
    return out

