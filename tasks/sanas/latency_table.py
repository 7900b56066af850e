"""Stage `latency_table` of sanas/full: the latency table SANAS's latency constraint reads, and
how accurate predictions from it are on this machine.

With no `latency.table_file`, every distinct op the BlazeFace space can run is timed here (ONNX
Runtime, pinned threads; cached per space/backend/threads/machine, so a second run reuses it),
random architectures are measured end to end, a correction is fitted on some and its accuracy
reported on >= 100 others (share within ±10 %, RMSE). A given table (PaddleSlim format, e.g.
measured on a phone) is used as is: its predictions are the plain op sum, unless a predictor
file fitted for it lies beside it. Nothing here depends on the constraint (the flow resolves the
window from this stage's output, tasks.sanas.shared.constraint_window), so switching between
FLOPs and latency or moving the window reuses the measured table and predictor."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from core.paths import state_dir
from latency.predictor import LatencyPredictor, fit_predictor, predictor_path
from latency.table import LatencyTable
from nas_models.blazeface import INIT_TOKENS
from params.models import LatencyParams
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.files import write_json
from tasks.orchestration.handoff import StageResult
from tasks.sanas.shared import cost
from tracking import tracker

TABLE_FILE = "latency_table.txt"
PREDICTOR_FILE = "latency_table.predictor.json"


@dataclass(frozen=True, kw_only=True)
class Latency(StageResult):
    """The latency table (and its fitted predictor, where there is one) every cost is predicted
    from, with the predictor's held-out accuracy; latency_report.json holds the same fields."""

    table_file: str
    predictor_file: str | None  # None: predictions are the plain op sum
    origin: str                 # in words: measured here, or the user's table
    ops: int                    # entries in the table
    accuracy: Mapping[str, Any] | None  # within_10pct, rmse_ms, n_holdout, n_fit, ...; None unmeasured
    initial: Mapping[str, Any] | None = None  # tokens, macs, params, predicted_ms of INIT_TOKENS

    @property
    def within_10pct(self) -> float | None:
        return (self.accuracy or {}).get("within_10pct")

    @property
    def rmse_ms(self) -> float | None:
        return (self.accuracy or {}).get("rmse_ms")

    def report(self) -> dict[str, Any]:
        """latency_report.json's content."""
        return {"table_file": self.table_file, "predictor_file": self.predictor_file, "origin": self.origin,
                "ops": self.ops, "accuracy": self.accuracy, "initial": self.initial}


def build(latency: LatencyParams, image_size: int, seed: int, out_dir: Path) -> Latency:
    if latency.table_file:
        table = LatencyTable.read(latency.table_file)
        beside = predictor_path(Path(latency.table_file))
        predictor = LatencyPredictor.load(beside, table) if beside.exists() else None
        origin = f"your table {latency.table_file}" + (f" with its predictor {beside}" if predictor else
                                                         " (predictions = the plain op sum)")
    else:
        predictor = fit_predictor(state_dir() / "latency", n_fit=latency.fit_architectures,
                                  n_holdout=latency.holdout_architectures, seed=seed, image_size=image_size,
                                  threads=latency.threads, progress=False)
        table = predictor.table
        origin = f"measured on this machine (ONNX Runtime, {latency.threads} thread(s)), cached in {table.path}"
    table_file = table.save(out_dir / TABLE_FILE)
    files = [str(table_file)]
    predictor_file, accuracy = None, None
    if predictor is not None:
        predictor.table = table  # now saved in the work folder: the copy names its table beside it
        predictor_file = str(predictor.save(out_dir / PREDICTOR_FILE))
        accuracy = predictor.accuracy
        files.append(predictor_file)
    out = Latency(table_file=str(table_file), predictor_file=predictor_file, origin=origin, ops=len(table.entries),
                  accuracy=accuracy)
    initial = list(INIT_TOKENS)
    out = replace(out, initial={"tokens": initial, **cost(initial, out, image_size)})  # costs read the saved files
    files.append(str(write_json(out_dir / "latency_report.json", out.report())))
    return replace(out, files=tuple(files))


@task(name="latency_table", persist_result=True, cache_policy=STAGE_CACHE)
def latency_table_task(latency: LatencyParams, image_size: int, seed: int, ctx: StageContext) -> Latency:
    logger = get_run_logger()
    with tracker.child_run(ctx.parent_run_id, "latency_table", {**latency.model_dump(), "image_size": image_size}) as run_id:
        out = build(latency, image_size, seed, ctx.work)
        acc = out.accuracy or {}
        tracker.log_metrics(run_id, {"table_ops": out.ops, **{f"predictor_{k}": acc[k] for k in
                                                                  ("within_10pct", "rmse_ms") if k in acc}})
        tracker.log_files(run_id, out.files, "latency_table")
    if acc:
        raw = acc.get("raw_table_sum", {})
        tracker.publish_table("sanas-latency-predictor", [
            {"prediction": "fitted predictor", "within_10pct": acc["within_10pct"], "rmse_ms": acc["rmse_ms"],
             "held_out_architectures": acc["n_holdout"], "fit_architectures": acc["n_fit"]},
            {"prediction": "plain table sum", "within_10pct": raw.get("within_10pct"), "rmse_ms": raw.get("rmse_ms"),
             "held_out_architectures": acc["n_holdout"], "fit_architectures": 0}],
            "latency prediction vs measurement on held-out random architectures (nn-Meter: 99.0 % within ±10 %)")
        logger.info("latency table: %d ops, %s; predictor on %d held-out architectures: %.1f %% within ±10 %%, "
                    "RMSE %.4f ms (plain table sum: %.1f %%)", out.ops, out.origin, acc["n_holdout"],
                    100 * acc["within_10pct"], acc["rmse_ms"], 100 * raw.get("within_10pct", float("nan")))
    else:
        logger.info("latency table: %d ops, %s; no predictor accuracy (no measurements on this machine)",
                    out.ops, out.origin)
    initial = out.initial or {}
    logger.info("initial tokens: %s MACs, %.4f ms predicted", initial["macs"], initial["predicted_ms"])
    return out
