"""Stage `evaluate` of lcnet/full: top-1/top-k of the trained model on the val and test lists,
with the same preprocessing the exported Predictor uses."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task

from engine.classification import evaluate
from engine.runtime import configure_torch, resolve_device
from params.models import LcnetModel, Runtime
from tasks.lcnet.classifiers import load_trained, loaders
from tasks.lcnet.split import Split
from tasks.lcnet.train import Trained
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import write_json
from tasks.orchestration.handoff import StageResult
from tracking import tracker


@dataclass(frozen=True, kw_only=True)
class Evaluated(StageResult):
    """Accuracy per subset, as performance.json holds it ({"val": {"top1", "top<k>", "loss",
    "count"}, "test": ...}; no "test" when the split has no test share)."""

    metrics: Mapping[str, Mapping[str, float]]

    @property
    def val_top1(self) -> float:
        return self.metrics["val"]["top1"]

    @property
    def test_top1(self) -> float | None:
        test = self.metrics.get("test")
        return None if test is None else test.get("top1")


def evaluate_classifier(split: Split, trained: Trained, model: LcnetModel, topk: int, seed: int,
                        runtime: Runtime, out_dir: Path) -> Evaluated:
    configure_torch(runtime.num_threads, seed)
    device = resolve_device(runtime.device)
    _, val_loader, test_loader = loaders(split, model, 1, seed)
    net = load_trained(trained.desc, trained.model_path)
    results = {"val": evaluate(net, val_loader, topk, device=device)}
    if test_loader is not None:
        results["test"] = evaluate(net, test_loader, topk, device=device)
    path = write_json(out_dir / "performance.json", results)
    return Evaluated(metrics=results, files=(str(path),))


@task(name="evaluate", persist_result=True, cache_policy=STAGE_CACHE)
def evaluate_classifier_task(split: Split, trained: Trained, model: LcnetModel, topk: int, seed: int,
                             ctx: StageContext) -> Evaluated:
    with tracker.child_run(ctx.parent_run_id, "evaluate", {"topk": topk}) as run_id:
        out = evaluate_classifier(split, trained, model, topk, seed, ctx.runtime, ctx.work)
        flat = {f"{subset}_{k}": v for subset, m in out.metrics.items() for k, v in m.items()}
        tracker.log_metrics(run_id, flat)
        tracker.log_files(run_id, out.files, "evaluate")
    get_run_logger().info("evaluation: %s", flat)
    tracker.publish_table("evaluation", [{"subset": s, **m} for s, m in out.metrics.items()],
                          "accuracy of the trained model (same preprocessing as the exported Predictor)")
    return out
