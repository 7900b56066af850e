"""Stage `data` of lcnet/full: the user's ImageNet-format dataset_dir, or the embedded digits."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from prefect import get_run_logger, task

from data.digits import default_digits_folder
from params.models import LcnetData
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.context import StageContext
from tasks.orchestration.handoff import StageResult
from tasks.orchestration.sources import record_sources


@dataclass(frozen=True, kw_only=True)
class Sources(StageResult):
    """The image folder the split reads; `files`: sources.json."""

    dataset_dir: str
    source: str  # in words, for the log and MLflow

    def record(self) -> dict[str, Any]:
        """The choice as sources.json holds it."""
        return {"dataset_dir": self.dataset_dir, "source": self.source}


def classification_sources(data: LcnetData) -> Sources:
    if data.dataset_dir:
        return Sources(dataset_dir=data.dataset_dir, source=f"your dataset_dir {data.dataset_dir}")
    return Sources(dataset_dir=str(default_digits_folder()),
                   source="embedded digits (1,797 real 8x8 scikit-learn digits, 32 px)")


@task(name="data", persist_result=True, cache_policy=STAGE_CACHE)
def classification_data_task(data: LcnetData, ctx: StageContext) -> Sources:
    sources = classification_sources(data)
    out = replace(sources, files=tuple(record_sources(sources.record(), ctx)["files"]))
    get_run_logger().info("data: %s", out.source)
    return out
