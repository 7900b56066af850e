"""Stage `fully_train` of spnas/full: the searched detector trained longer on all training
images — and, with the same budget on the same data, the starting architecture from its
fine_tune weights — both scored on the held-out val set. The comparison table answers the
user's question: did the search beat the hand-designed backbone?"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.runtime import task_run

from data.coco import load_coco
from engine.detector_fit import fit_steps, latency_ms, score, train_loader
from engine.runtime import configure_torch
from tasks.common import STAGE_CACHE, stage_dir, write_csv
from tasks.train_candidate import load_detector, measure, optim_from, save_model
from tracking import tracker

STEP = "fully_train"


def fully_train(candidate: dict[str, Any], data: dict[str, Any], p: dict[str, Any], out_dir: Path,
                on_step=None) -> dict[str, Any]:
    """candidate: {"role": "final"|"baseline", "code", "neck_code", "desc", "model_path"}."""
    configure_torch(p.get("num_threads"), p["seed"])
    model = load_detector(candidate["desc"], candidate["model_path"])
    train = load_coco(Path(data["train_images"]), Path(data["train_json"]))
    loader = train_loader(train, p["optimizer"]["batch_size"], p["seed"])
    steps = p["fully_train_epochs"] * len(loader)
    losses = fit_steps(model, loader, steps, optim_from(p, "cosine"), on_step)
    metrics = score(model, load_coco(Path(data["val_images"]), Path(data["val_json"])))
    performance = {**metrics, **measure(model, p["image_size"]), "latency_ms": latency_ms(model, p["image_size"]),
                   "train_steps": steps, "final_loss": losses.get("loss")}
    files = save_model(out_dir, candidate["role"], candidate["desc"], model, performance)
    return {**{k: v for k, v in candidate.items() if k != "model_path"}, "model_path": files[1],
            "performance": performance, "files": files}


def comparison_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": r["role"], "code": r["code"], "neck_code": str(r.get("neck_code")),
             **{k: r["performance"][k] for k in ("mAP", "mAP50", "params", "macs", "latency_ms", "train_steps")}}
            for r in results]


def _run_name() -> str:
    cand = (task_run.parameters or {}).get("candidate", {})
    return f"fully_train-{cand.get('role', '?')}"


@task(name="fully_train", task_run_name=_run_name, persist_result=True, cache_policy=STAGE_CACHE)
def fully_train_task(candidate: dict[str, Any], data: dict[str, Any], p: dict[str, Any], run_dir: str,
                     parent_run_id: str) -> dict[str, Any]:
    logger = get_run_logger()
    role = candidate["role"]
    with tracker.child_run(parent_run_id, f"fully_train-{role}", {"role": role, "code": candidate["code"],
                                                                  "neck_code": candidate.get("neck_code"),
                                                                  "epochs": p["fully_train_epochs"]}) as run_id:
        progress = tracker.Progress(f"fully-train-{role}-progress", f"fully train ({role})")
        history: list[dict[str, float]] = []
        total = max(1, p["fully_train_epochs"] * -(-(data["counts"]["train"] + data["counts"]["search_val"])
                                                  // p["optimizer"]["batch_size"]))

        def on_step(i: int, losses: dict[str, float]) -> None:
            if i % 20 == 0:
                tracker.log_metrics(run_id, {f"train_{k}": v for k, v in losses.items()}, step=i)
                history.append({"epoch": i, **losses})
                progress.update((i + 1) / total, f"step {i + 1}/{total}")
                logger.info("fully_train %s step %d/%d loss %.4f", role, i + 1, total, losses["loss"])

        out = fully_train(candidate, data, p, stage_dir(run_dir, STEP), on_step)
        progress.update(1.0, "done")
        tracker.log_metrics(run_id, out["performance"])
        tracker.log_files(run_id, out["files"], STEP)
        tracker.log_curve(run_id, history, ["loss"], f"{STEP}/{role}_loss.png", f"fully train {role} (x = step)")
    perf = out["performance"]
    logger.info("fully_train %s %s %s: held-out mAP %.4f  mAP@.5 %.4f", role, candidate["code"],
                candidate.get("neck_code"), perf["mAP"], perf["mAP50"])
    return out


@task(name="compare", persist_result=True, cache_policy=STAGE_CACHE)
def compare_task(results: list[dict[str, Any]], run_dir: str, parent_run_id: str) -> dict[str, Any]:
    """fully_train/output.csv and a Prefect table: searched vs starting architecture."""
    rows = comparison_rows(results)
    path = write_csv(stage_dir(run_dir, STEP) / "output.csv", rows)
    tracker.log_files(parent_run_id, [path], STEP)
    tracker.publish_table("searched-vs-baseline", rows,
                          "held-out val: the searched detector vs the starting architecture, same training budget")
    return {"rows": rows, "files": [str(path)]}
