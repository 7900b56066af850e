"""Stage `export` of lcnet/full: inference-model folder (ONNX with softmax, torch.export program,
model.yml), checked against eager torch on real validation images; batch-1 latency of eager
torch vs ONNX Runtime, same threads."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from prefect import get_run_logger, task

from deploy.classifier_export import export_classifier, parity
from deploy.onnx_export import WithSoftmax, make_session
from engine.runtime import configure_torch
from latency.timing import min_latency_ms
from params.models import LcnetModel, Runtime
from tasks.lcnet.classifiers import load_trained, loaders, preprocess_for
from tasks.lcnet.split import Split
from tasks.lcnet.train import Trained
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import write_json
from tasks.orchestration.handoff import StageResult
from tracking import tracker


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


def export_stage(split: Split, trained: Trained, model: LcnetModel, seed: int, runtime: Runtime,
                 out_dir: Path) -> Exported:
    threads = configure_torch(runtime.num_threads, seed)
    net = load_trained(trained.desc, trained.model_path)  # export, parity and latency on CPU: what the Predictor runs
    files = export_classifier(net, dict(trained.desc), list(split.labels), preprocess_for(model),
                              out_dir / "inference_model")
    _, val_loader, _ = loaders(split, model, 1, seed)
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
    path = write_json(out_dir / "export_report.json", report)
    model_files = [files[k] for k in ("onnx", "program", "model_yml") if files.get(k)]
    return Exported(model_dir=files["model_dir"], onnx=files["onnx"], program=files["program"],
                    model_yml=files["model_yml"], report=report, files=(*model_files, str(path)))


@task(name="export", persist_result=True, cache_policy=STAGE_CACHE)
def export_classifier_task(split: Split, trained: Trained, model: LcnetModel, seed: int,
                           ctx: StageContext) -> Exported:
    with tracker.child_run(ctx.parent_run_id, "export") as run_id:
        out = export_stage(split, trained, model, seed, ctx.runtime, ctx.work)
        tracker.log_metrics(run_id, out.report)
        tracker.log_files(run_id, [out.model_dir], "inference_model")
    r = out.report
    get_run_logger().info("exported to %s; ONNX vs torch max |diff| %.2e; batch-1 latency torch %.2f ms, "
                          "ONNX Runtime %.2f ms", out.model_dir, r["onnx_max_abs_diff"], r["torch_ms_batch1"],
                          r["ort_ms_batch1"])
    return out
