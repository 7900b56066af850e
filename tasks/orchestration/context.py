"""What a stage task or search subflow is told about the run it is part of, as one argument.

Pipeline builds one `StageContext` per stage (one per candidate in `Pipeline.map`): the stage's
work folder, the MLflow run it logs under and where it runs. None of it is part of a cache key
(`RUN_SPECIFIC` in tasks/orchestration/caching.py): the same inputs and code give the same key
whichever run, folder or device computes them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from params.models import Runtime


@dataclass(frozen=True)
class StageContext:
    stage: str          # the pipeline's stage name, e.g. "serial"
    work_dir: str       # the stage's (or candidate's) work folder; a str so Prefect can show it
    parent_run_id: str  # the MLflow run the stage's own run is a child of
    runtime: Runtime    # device and torch threads

    @property
    def work(self) -> Path:
        return Path(self.work_dir)

    def with_runtime(self, runtime: Runtime) -> StageContext:
        return replace(self, runtime=runtime)

    def under(self, run_id: str) -> StageContext:
        """The same stage logging under `run_id` (a search's candidates under the search's run)."""
        return replace(self, parent_run_id=run_id)
