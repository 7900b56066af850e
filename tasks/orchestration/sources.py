"""What every pipeline's `data` stage does after choosing its data: record the choice in the run
folder (`data/sources.json`) and in MLflow, so a run says which data it used."""
from __future__ import annotations

from typing import Any

from tasks.orchestration.context import StageContext
from tasks.orchestration.files import write_json
from tracking import tracker


def record_sources(out: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
    """sources.json in the work folder, logged with the `*source` fields on the stage's MLflow run."""
    path = write_json(ctx.work / "sources.json", out)
    with tracker.child_run(ctx.parent_run_id, "data", {k: v for k, v in out.items() if k.endswith("source")}) as run_id:
        tracker.log_files(run_id, [path], "data")
    return {**out, "files": [str(path)]}
