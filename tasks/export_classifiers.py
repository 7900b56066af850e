"""Stage `export` of prune-ea/full: the baseline and every retrained front member as inference
folders (ONNX with softmax + torch.export program + model.yml), parity-checked against eager
torch on real test images and timed with ONNX Runtime (batch 1), then the seed's comparison
table for this run: baseline vs each member — MACs, params, accuracy, compression ratio
r_c = MACs / baseline MACs, ONNX Runtime latency."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from prefect import get_run_logger, task

from deploy.classifier_export import export_classifier, parity
from deploy.onnx_export import make_session
from deploy.predictor import ClassifierPredictor
from engine.runtime import configure_torch
from latency.timing import min_latency_ms
from nas_models.registry import build_from_desc
from params.models import Runtime
from tasks.caching import STAGE_CACHE
from tasks.cifar_training import load_data, loaders, preprocess
from tasks.common import write_json
from tasks.tables import write_table
from tracking import tracker

PREDICT_IMAGES = 8


def _load(entry: dict[str, Any]) -> torch.nn.Module:
    model = build_from_desc(entry["desc"])
    model.load_state_dict(torch.load(entry["model_path"], map_location="cpu", weights_only=True))
    return model.eval()


def export_models(models: list[dict[str, Any]], data: dict[str, Any], seed: int, runtime: Runtime,
                  out_dir: Path) -> dict[str, Any]:
    """models: [{"name", "desc", "model_path", "performance"}], the baseline first."""
    threads = configure_torch(runtime.num_threads, seed)
    _, _, test = loaders(data, 64, seed)
    images, _ = next(iter(test))
    rows, files = [], []
    base_macs = models[0]["performance"]["macs"]
    for entry in models:
        model = _load(entry)
        exported = export_classifier(model, entry["desc"], data["labels"], preprocess(),
                                     out_dir / entry["name"] / "inference_model")
        checks = parity(model, Path(exported["onnx"]), images[:16], threads)
        session = make_session(Path(exported["onnx"]), threads)
        one = images[:1].numpy()
        ort_ms = min_latency_ms(lambda: session.run(None, {"image": one}))
        perf = entry["performance"]
        rows.append({"model": entry["name"], "macs": perf["macs"], "params": perf["params"], "acc": perf["acc"],
                     "r_c": perf["macs"] / base_macs, "ort_ms_batch1": ort_ms, **checks})
        files += [exported[k] for k in ("onnx", "program", "model_yml")]
    # The Predictor on the last (smallest-front-end) exported model, as a user would call it.
    cifar, _, _ = load_data(data)
    predictor = ClassifierPredictor(str(out_dir / models[-1]["name"] / "inference_model"), threads=threads)
    sample = [cifar.test_images[i] for i in range(PREDICT_IMAGES)]
    predictions = predictor.predict(sample, topk=1, warmup=2, repeats=3)
    hits = sum(p[0]["category"] == cifar.label_names[int(cifar.test_labels[i])] for i, p in enumerate(predictions))
    files += [str(p) for p in write_table(rows, out_dir / "comparison.csv")]
    report = write_json(out_dir / "export_report.json", {
        "rows": rows, "threads": threads, "predictor_model": models[-1]["name"],
        "predictor_sample_accuracy": hits / len(sample), "predictor_timing": predictor.time_info.as_dict()})
    return {"rows": rows, "time_info": predictor.time_info.report(), "files": [*files, str(report)]}


@task(name="export", persist_result=True, cache_policy=STAGE_CACHE)
def export_pruned_task(models: list[dict[str, Any]], data: dict[str, Any], seed: int, work_dir: str,
                       parent_run_id: str, runtime: Runtime) -> dict[str, Any]:
    logger = get_run_logger()
    with tracker.child_run(parent_run_id, "export") as run_id:
        out = export_models(models, data, seed, runtime, Path(work_dir))
        for row in out["rows"]:
            tracker.log_metrics(run_id, {f"{row['model']}_{k}": v for k, v in row.items() if k != "model"})
        tracker.log_files(run_id, out["files"], "export")
    tracker.publish_table("prune-ea-comparison", out["rows"],
                          "baseline vs retrained front members (test accuracy; r_c = MACs / baseline MACs)")
    logger.info("Predictor on %s:\n%s", models[-1]["name"], out["time_info"])
    for r in out["rows"]:
        logger.info("%-14s MACs %6.2fM (r_c %.2f)  params %.3fM  acc %.4f  ORT %.3f ms  ONNX |diff| %.1e", r["model"],
                    r["macs"] / 1e6, r["r_c"], r["params"] / 1e6, r["acc"], r["ort_ms_batch1"], r["onnx_max_abs_diff"])
    return out
