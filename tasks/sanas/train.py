"""Stage `train` of sanas/full: the found BlazeFace and the initial-token BlazeFace trained from
scratch with the same budget (`train.steps`), scored AP@0.5 / AP on the held-out images. One
task per network; checkpoints in the work folder, so a killed training continues."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from params.models import FaceTrainParams, Runtime
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import save_handoff
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.pipeline import candidate_run_name
from tasks.sanas.data import Faces
from tasks.sanas.latency_table import Latency
from tasks.sanas.shared import cost, train_tokens
from tracking import tracker


@dataclass(frozen=True, kw_only=True)
class Trained(StageResult):
    """One compared network after its full training; `performance`: AP50, AP, final_loss, macs,
    params, predicted_ms, train_steps."""

    name: str                  # "found" or "initial"
    tokens: tuple[int, ...]
    desc: Mapping[str, Any]
    model_path: str


def train_face(candidate: dict[str, Any], data: Faces, latency: Latency, train: FaceTrainParams,
               image_size: int, seed: int, runtime: Runtime, out_dir: Path) -> Trained:
    """`candidate`: {"name", "tokens"} (the flow's mapped input)."""
    model, scores = train_tokens(candidate["tokens"], data, train, train.steps, image_size, seed, runtime,
                                 out_dir / f"checkpoint_{candidate['name']}.pth")
    performance = {**scores, **cost(candidate["tokens"], latency, image_size), "train_steps": train.steps}
    desc = {"type": "BlazeFace", **model.arch}
    files = save_handoff(out_dir, candidate["name"], desc, model, performance)
    return Trained(name=candidate["name"], tokens=tuple(candidate["tokens"]), desc=desc, model_path=files[1],
                       performance=performance, files=tuple(files))


@task(name="train", task_run_name=candidate_run_name(lambda c: f"train-{c.get('name', '?')}"),
      persist_result=True, cache_policy=STAGE_CACHE)
def sanas_train_task(candidate: dict[str, Any], data: Faces, latency: Latency, train: FaceTrainParams,
                     image_size: int, seed: int, ctx: StageContext) -> Trained:
    tokens = "".join(map(str, candidate["tokens"]))
    with tracker.child_run(ctx.parent_run_id, f"train-{candidate['name']}", {"tokens": tokens, **train.model_dump()}
                           ) as run_id:
        out = train_face(candidate, data, latency, train, image_size, seed, ctx.runtime, ctx.work)
        tracker.log_metrics(run_id, out.performance)
        tracker.log_files(run_id, out.files, "train")
    perf = out.performance or {}
    get_run_logger().info("trained %s (tokens %s) %d steps from scratch: AP@0.5 %.4f  AP %.4f  MACs %.2fM",
                          candidate["name"], tokens, train.steps, perf["AP50"], perf["AP"], perf["macs"] / 1e6)
    return out
