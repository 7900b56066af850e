"""sanas/full — PaddleSlim SANAS on BlazeFace under a FLOPs or latency constraint:
data → latency_table (built on this machine, or yours; + the predictor's own accuracy) → search
(simulated annealing over 9 tokens) → train (found and initial tokens, same budget) → export
(+ measured vs predicted latency)."""
from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from nas_models.blazeface import INIT_TOKENS
from params.loader import load_params
from params.models import SanasParams
from params.registry import SANAS
from tasks.orchestration.pipeline import close_tracking_on_crash, finish, pipeline
from tasks.orchestration.search import control_fields
from tasks.sanas.data import Faces, face_data_task
from tasks.sanas.export import INT8_COLUMNS, Exported, export_faces_task
from tasks.sanas.latency_table import Latency, latency_table_task
from tasks.sanas.preflight import preflight
from tasks.sanas.search import Searched, sanas_search
from tasks.sanas.shared import constraint_window
from tasks.sanas.train import Trained, sanas_train_task


# One training at a time with every core (2 cores: parallel trainings only fight).
@flow(name="sanas", task_runner=ThreadPoolTaskRunner(max_workers=1),
      on_crashed=[close_tracking_on_crash], on_cancellation=[close_tracking_on_crash])
def sanas(params_file: str = SANAS.params_file, overrides: dict[str, Any] | None = None,
          refresh_from: str | None = None) -> dict[str, Any]:
    """`refresh_from`: "all" recomputes every stage, a stage name recomputes it and what follows."""
    p = load_params(SanasParams, params_file, overrides)  # bad input fails here, before any work
    preflight(p)  # files, weights, tables and device, also before any work
    with pipeline(SANAS.name, p, SANAS.stages, refresh_from) as pipe:
        data: Faces = pipe.run("data", face_data_task, data=p.data, image_size=p.image_size, seed=p.seed)
        latency: Latency = pipe.run("latency_table", latency_table_task, latency=p.latency, image_size=p.image_size,
                                    seed=p.seed)
        # The window is resolved outside the stage, so a new constraint reuses the measured table;
        # an infeasible latency window fails here, before the search.
        window = constraint_window(p.constraint, latency, p.image_size)
        # Candidates go where candidate_workers / dask_address say (Pipeline.search).
        searched: Searched = pipe.search("search", sanas_search, data=data, latency=latency, constraint=window,
                                         search=p.search, train=p.train, image_size=p.image_size, seed=p.seed)
        compared = [{"name": "found", "tokens": list(searched.best_tokens)},
                    {"name": "initial", "tokens": list(INIT_TOKENS)}]
        trained: list[Trained | None] = pipe.map("train", sanas_train_task, compared, data=data, latency=latency,
                                                 train=p.train, image_size=p.image_size, seed=p.seed)
        if any(t is None for t in trained):
            raise RuntimeError("training a compared network failed; see the task's log")
        exported: Exported = pipe.run("export", export_faces_task, models=trained, data=data, latency=latency,
                                      image_size=p.image_size, threads=p.latency.threads, export=p.export)
        rows = {r["model"]: r for r in exported.rows}  # table rows: "found" and "initial"
        summary = {"ctype": window.ctype, "constraint_max": window.max,
                   "found_tokens": rows["found"]["tokens"], "skipped_outside_constraint": searched.skipped,
                   "predictor_within_10pct": latency.within_10pct, "predictor_rmse_ms": latency.rmse_ms,
                   **control_fields(searched.control),
                   **{f"{name}_{k}": r[k] for name, r in rows.items()
                      for k in ("AP50", "macs", "params", "predicted_ms", "measured_ms")},
                   **{f"{name}_{k}": r[k] for name, r in rows.items() for k in (*INT8_COLUMNS, "int8_error") if k in r}}
        summary["latency_flags"] = len(exported.latency_notes)  # winners whose search-time latency missed by > ±10 %
        return finish(pipe, summary, table=[dict(r) for r in exported.rows])


if __name__ == "__main__":
    sanas()
