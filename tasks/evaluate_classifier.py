"""Stage `evaluate` of lcnet/full: top-1/top-k of the trained model on the val and test lists,
with the same preprocessing the exported Predictor uses."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from prefect import get_run_logger, task

from engine.classification import evaluate
from engine.runtime import configure_torch
from nas_models.registry import build_from_desc
from tasks.common import STAGE_CACHE, stage_dir, write_json
from tasks.train_classifier import loaders
from tracking import tracker


def load_trained(trained: dict[str, Any]) -> torch.nn.Module:
    model = build_from_desc(trained["desc"])
    model.load_state_dict(torch.load(trained["model_path"], map_location="cpu", weights_only=True))
    return model.eval()


def evaluate_classifier(split: dict[str, Any], trained: dict[str, Any], params: dict[str, Any],
                        out_dir: Path) -> dict[str, Any]:
    configure_torch(params.get("num_threads"), params["seed"])
    _, val_loader, test_loader = loaders(split, params)
    model = load_trained(trained)
    results = {"val": evaluate(model, val_loader, params["topk"])}
    if test_loader is not None:
        results["test"] = evaluate(model, test_loader, params["topk"])
    path = write_json(out_dir / "performance.json", results)
    return {"metrics": results, "files": [str(path)]}


@task(name="evaluate", persist_result=True, cache_policy=STAGE_CACHE)
def evaluate_classifier_task(split: dict[str, Any], trained: dict[str, Any], params: dict[str, Any],
                             run_dir: str, parent_run_id: str) -> dict[str, Any]:
    with tracker.child_run(parent_run_id, "evaluate", {"topk": params["topk"]}) as run_id:
        out = evaluate_classifier(split, trained, params, stage_dir(run_dir, "evaluate"))
        flat = {f"{subset}_{k}": v for subset, m in out["metrics"].items() for k, v in m.items()}
        tracker.log_metrics(run_id, flat)
        tracker.log_files(run_id, out["files"], "evaluate")
    get_run_logger().info("evaluation: %s", flat)
    tracker.publish_table("evaluation", [{"subset": s, **m} for s, m in out["metrics"].items()],
                          "accuracy of the trained model (same preprocessing as the exported Predictor)")
    return out
