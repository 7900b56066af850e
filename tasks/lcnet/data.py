"""Stage `data` of lcnet/full: the user's ImageNet-format dataset_dir, or the embedded digits."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from data.digits import default_digits_folder
from params.models import LcnetData, Runtime
from tasks.orchestration.caching import STAGE_CACHE
from tasks.orchestration.sources import record_sources


def classification_sources(data: LcnetData) -> dict[str, Any]:
    if data.dataset_dir:
        return {"dataset_dir": data.dataset_dir, "source": f"your dataset_dir {data.dataset_dir}"}
    return {"dataset_dir": str(default_digits_folder()),
            "source": "embedded digits (1,797 real 8x8 scikit-learn digits, 32 px)"}


@task(name="data", persist_result=True, cache_policy=STAGE_CACHE)
def classification_data_task(data: LcnetData, work_dir: str, parent_run_id: str, runtime: Runtime) -> dict[str, Any]:
    out = record_sources(classification_sources(data), work_dir, parent_run_id)
    get_run_logger().info("data: %s", out["source"])
    return out
