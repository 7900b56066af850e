"""The one place that talks to MLflow and publishes Prefect artifacts.

Runs are always addressed by id through an `MlflowClient`: MLflow's "active run" is
thread-local, and Prefect tasks run in worker threads, so `mlflow.start_run()` would nest
runs wrongly. A parent run per flow run, a child per stage, a grandchild per candidate.

Prefect artifact helpers are no-ops outside a Prefect run, so the same stage functions can be
called plainly (tests, benchmarks).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any
from uuid import UUID

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from core.paths import state_dir

PARENT_TAG = "mlflow.parentRunId"
# Runs per search_runs request when listing runs (MLflow's own default page); tests shrink it.
SEARCH_PAGE_SIZE = 1000
_PARAM_VALUE_LIMIT = 6000


def tracking_uri() -> str:
    """The MLflow server started by `spnas up`, or a local SQLite store (a real store, no server)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{state_dir() / 'mlflow.db'}"


@lru_cache(maxsize=8)
def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def client() -> MlflowClient:
    return _client(tracking_uri())


# One try of a few seconds: MLflow's client otherwise retries an address nobody answers at for
# minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES, backoff 2 s doubling, each try up to
# MLFLOW_HTTP_REQUEST_TIMEOUT = 120 s).
PROBE_SECONDS = 4.0


def unreachable_reason(uri: str | None = None, timeout: float = PROBE_SECONDS) -> str | None:
    """Why nothing answers at an http(s) tracking URI (one GET of <uri>/health, no retries), or
    None when something does (any HTTP status: the real calls say what is wrong with it) or the
    URI is a local store. MLflow's own request code makes the call, so its credentials, TLS and
    proxy settings (MLFLOW_TRACKING_*, HTTPS_PROXY, NO_PROXY) apply as they will to the real calls."""
    import requests
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    uri = uri or tracking_uri()
    if not uri.lower().startswith(("http://", "https://")):
        return None
    try:
        http_request(get_default_host_creds(uri), "/health", "GET", max_retries=0, backoff_factor=0,
                     timeout=timeout, raise_on_status=False)
        return None
    except Exception as exc:  # MLflow wraps requests' errors (as its cause or context)
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, requests.RequestException):
            cause = cause.__cause__ or cause.__context__
        if cause is None and "Invalid url" not in str(exc):
            return None  # not the network (e.g. an auth plugin): the real calls say what it is
        if isinstance(cause, requests.exceptions.SSLError):
            return "its TLS handshake failed"
        text = str(exc)
        # With no retries left, urllib3 reports a read timeout as a failed connection.
        if isinstance(cause, requests.exceptions.Timeout) or "timed out" in text:
            return f"no answer within {timeout:g} s"
        if isinstance(cause, requests.exceptions.InvalidURL) or "Invalid url" in text:
            return "it is not a valid URL"
        for words, reason in (("Connection refused", "connection refused"),
                              ("Name or service not known", "unknown host"),
                              ("nodename nor servname", "unknown host"),
                              ("Temporary failure in name resolution", "unknown host"),
                              ("No route to host", "no route to host"),
                              ("Network is unreachable", "network unreachable"),
                              ("Connection reset", "connection reset")):
            if words in text:
                return reason
        return "the connection failed"


def _shown(uri: str) -> str:
    """The URI without a password in it (http://user:secret@host -> http://user:***@host)."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(uri)
        if parts.password is None:
            return uri
        return parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}").geturl()
    except ValueError:
        return uri.rpartition("@")[2]


def check_tracking_server(uri: str | None = None, timeout: float = PROBE_SECONDS) -> None:
    """InputError naming MLFLOW_TRACKING_URI unless a server answers at it within `timeout` s
    (local stores pass): an unreachable server is one line in seconds, not minutes of retries."""
    from core.errors import InputError
    from core.text import clean_line

    uri = uri or tracking_uri()
    reason = unreachable_reason(uri, timeout)
    if reason:
        raise InputError("MLFLOW_TRACKING_URI", f"no MLflow tracking server answers at {clean_line(_shown(uri), 200)} "
                                                f"({reason}); start the stack's with `spnas up` (and unset "
                                                "MLFLOW_TRACKING_URI), or point it at a server that runs")


def ensure_experiment(name: str) -> str:
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if not tracking_uri().startswith("http"):
        # Without a server, keep artifacts in the state folder rather than ./mlruns of the cwd.
        artifact_location = (state_dir() / "mlartifacts" / name).resolve().as_uri()
    try:
        return c.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created concurrently by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:_PARAM_VALUE_LIMIT]
    return flat


def start_run(
    experiment_id: str,
    name: str,
    parent_run_id: str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = client().create_run(experiment_id, tags=all_tags, run_name=name)
    if params:
        log_params(run.info.run_id, params)
    return run.info.run_id


def start_child_run(parent_run_id: str, name: str, params: Mapping[str, Any] | None = None,
                    tags: Mapping[str, str] | None = None) -> str:
    parent = client().get_run(parent_run_id)
    return start_run(parent.info.experiment_id, name, parent_run_id, params, tags)


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    flat = _flatten(params)
    if flat:
        client().log_batch(run_id, params=[Param(k, v) for k, v in flat.items()])


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_metrics(run_id: str, metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Log the finite numeric entries of `metrics` (others are ignored, not errors)."""
    now = int(time.time() * 1000)
    batch = [
        Metric(k, float(v), now, step or 0)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
    ]
    if batch:
        client().log_batch(run_id, metrics=batch)


def log_files(run_id: str, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
    for path in paths:
        path = Path(path)
        if path.is_dir():
            client().log_artifacts(run_id, str(path), artifact_path=artifact_path)
        elif path.exists():
            client().log_artifact(run_id, str(path), artifact_path=artifact_path)


def log_figure(run_id: str, figure: Any, artifact_file: str) -> None:
    client().log_figure(run_id, figure, artifact_file)


def log_curve(run_id: str, history: list[Mapping[str, Any]], keys: Iterable[str], artifact_file: str,
              title: str = "") -> None:
    """A training-curve PNG (x = epoch) of the given history keys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in h for h in history)]
    if not history or not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        xs = [h.get("epoch", i + 1) for i, h in enumerate(history) if key in h]
        ax.plot(xs, [h[key] for h in history if key in h], marker="o")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    log_figure(run_id, fig, artifact_file)
    plt.close(fig)


def _log_axes(run_id: str, fig: Any, ax: Any, x_key: str, y_key: str, title: str, artifact_file: str) -> None:
    """Label, log to MLflow and close a plot of y_key against x_key."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    log_figure(run_id, fig, artifact_file)
    plt.close(fig)


def log_pareto_plot(run_id: str, rows: list[Mapping[str, Any]], x_key: str, y_key: str, front_key: str,
                    artifact_file: str, title: str = "") -> None:
    """Scatter of every candidate (x_key vs y_key) with the Pareto front highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if isinstance(r.get(x_key), (int, float)) and isinstance(r.get(y_key), (int, float))]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    others = [r for r in rows if not r.get(front_key)]
    front = sorted((r for r in rows if r.get(front_key)), key=lambda r: r[x_key])
    ax.scatter([r[x_key] for r in others], [r[y_key] for r in others], c="grey", label="candidates")
    ax.plot([r[x_key] for r in front], [r[y_key] for r in front], "o-", c="tab:red", label="Pareto front")
    for r in rows:
        ax.annotate(str(r.get("id", "")), (r[x_key], r[y_key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    _log_axes(run_id, fig, ax, x_key, y_key, title, artifact_file)


def log_fronts_plot(run_id: str, fronts: Mapping[str, list[Mapping[str, Any]]], x_key: str, y_key: str,
                    artifact_file: str, title: str = "") -> None:
    """Several Pareto fronts on one plot (e.g. the first and the last generation's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in fronts.items():
        rows = sorted((r for r in rows if isinstance(r.get(x_key), (int, float))), key=lambda r: r[x_key])
        if rows:
            ax.plot([r[x_key] for r in rows], [r[y_key] for r in rows], "o-", label=label)
    _log_axes(run_id, fig, ax, x_key, y_key, title, artifact_file)


def finish_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status=status)


@contextlib.contextmanager
def child_run(parent_run_id: str, name: str, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """A child run that ends FINISHED, or FAILED if the body raises."""
    run_id = start_child_run(parent_run_id, name, params, tags)
    try:
        yield run_id
    except BaseException:
        finish_run(run_id, "FAILED")
        raise
    finish_run(run_id, "FINISHED")


def run_url(run_id: str) -> str | None:
    """Link to the run in the MLflow UI when a tracking server is used."""
    uri = tracking_uri()
    if not uri.startswith("http"):
        return None
    run = client().get_run(run_id)
    return f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


def experiment_runs_url(experiment_id: str) -> str | None:
    uri = tracking_uri()
    if not uri.startswith("http"):
        return None
    # MLflow 3's UI opens experiments on a GenAI overview; the runs table lives here.
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs"


def search_all_runs(experiment_ids: list[str], filter_string: str = "",
                    page_size: int | None = None) -> list[Any]:
    """Every run matching `filter_string`, fetched page by page.

    `MlflowClient.search_runs` returns at most `max_results` runs (1,000 by default) and a
    page token for the rest; a flow with many candidates easily has more. Runs are ordered
    by MLflow's default (newest first, then run id) and de-duplicated by id, in case a run
    created while paging shifts a page boundary.
    """
    size = SEARCH_PAGE_SIZE if page_size is None else page_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"page_size must be a positive integer, got {page_size!r}")
    c = client()
    runs: dict[str, Any] = {}
    token: str | None = None
    while True:
        page = c.search_runs(experiment_ids, filter_string=filter_string, max_results=size, page_token=token)
        for run in page:
            runs.setdefault(run.info.run_id, run)
        token = page.token
        if not token:
            return list(runs.values())


def _all_experiment_ids() -> list[str]:
    """Ids of every active experiment (search_experiments pages like search_runs)."""
    c = client()
    ids: list[str] = []
    token: str | None = None
    while True:
        page = c.search_experiments(max_results=SEARCH_PAGE_SIZE, page_token=token)
        ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            return ids


def child_runs(parent_run_id: str, page_size: int | None = None) -> list[Any]:
    """All direct children of a run (every page; `page_size` defaults to SEARCH_PAGE_SIZE)."""
    parent = client().get_run(parent_run_id)
    return search_all_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent_run_id}'", page_size)


def end_open_runs(flow_run_id: str, status: str = "KILLED", page_size: int | None = None) -> int:
    """End every still-RUNNING run of a Prefect flow run (its parent run and all descendants).

    For a flow process that died: its own context managers never ran, so the runs would stay
    RUNNING in the MLflow UI forever. Returns how many runs were ended. Every search pages
    through all results (`page_size` as in `child_runs`)."""
    c = client()
    experiment_ids = _all_experiment_ids()
    if not experiment_ids:
        return 0
    stack = search_all_runs(experiment_ids, f"tags.`prefect.flow_run_id` = '{flow_run_id}'", page_size)
    ended = 0
    while stack:
        run = stack.pop()
        if run.info.status == "RUNNING":
            c.set_terminated(run.info.run_id, status=status)
            ended += 1
        stack.extend(child_runs(run.info.run_id, page_size))
    return ended


def record_reused_stage(parent_run_id: str, stage: str, result: Any, work_dir: str) -> str:
    """A child run for a stage whose result came from the cache: the run tree of every flow run
    shows every stage, with the reused figures and where the files are, without re-logging them.
    `result`: the stage's result (its `performance` figures, attribute or key, are logged)."""
    performance = result.get("performance") if isinstance(result, Mapping) else getattr(result, "performance", None)
    with child_run(parent_run_id, stage, tags={"spnas.reused": "true", "spnas.work_dir": work_dir}) as run_id:
        if isinstance(performance, Mapping):
            log_metrics(run_id, performance)
    return run_id


# ---------------------------------------------------------------- reading runs back (spnas compare)


def find_run(run_id: str) -> Any | None:
    """The run with this id, or None when the store has no such run (any other failure, e.g. an
    unreachable server, still raises)."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def root_run(run: Any) -> Any:
    """The top of a run's tree (a stage or candidate run -> its flow run's parent run)."""
    seen = {run.info.run_id}
    while (parent_id := run.data.tags.get(PARENT_TAG)) and parent_id not in seen:
        parent = find_run(parent_id)
        if parent is None:
            break
        seen.add(parent_id)
        run = parent
    return run


def experiment_ids(names: Iterable[str]) -> dict[str, str]:
    """Experiment name -> id for those of `names` that exist (none are created)."""
    found = {}
    for name in names:
        exp = client().get_experiment_by_name(name)
        if exp is not None:
            found[name] = exp.experiment_id
    return found


def experiment_name(experiment_id: str) -> str:
    return client().get_experiment(experiment_id).name


def top_runs_tagged(experiment_ids_: list[str], tag: str, value: str) -> list[Any]:
    """Top-level runs (no parent) whose tag `tag` equals `value`, newest first."""
    if not experiment_ids_ or "'" in value or "`" in tag:  # a quote cannot be matched in a filter string
        return []
    runs = search_all_runs(experiment_ids_, f"tags.`{tag}` = '{value}'")
    top = [r for r in runs if PARENT_TAG not in r.data.tags]
    return sorted(top, key=lambda r: r.info.start_time or 0, reverse=True)


def download_artifact(run_id: str, artifact_path: str, dst_dir: str | Path) -> Path | None:
    """One artifact of a run copied into `dst_dir`, or None if the run has no such artifact."""
    from mlflow.exceptions import MlflowException

    folder, _, name = artifact_path.rpartition("/")
    try:
        if name not in {Path(f.path).name for f in client().list_artifacts(run_id, folder or None)}:
            return None
        return Path(client().download_artifacts(run_id, artifact_path, str(dst_dir)))
    except (MlflowException, OSError):
        return None


def log_comparison_run(experiment: str, name: str, files: Iterable[str | Path], tags: Mapping[str, str]) -> str:
    """A finished top-level run in `experiment` holding `files` (a comparison of earlier runs)."""
    run_id = start_run(ensure_experiment(experiment), name, tags=tags)
    try:
        log_files(run_id, files)
    except BaseException:
        finish_run(run_id, "FAILED")
        raise
    finish_run(run_id)
    return run_id


# ---------------------------------------------------------------- Prefect artifacts


def in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def artifact_key(text: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100] or "artifact"


def publish_table(key: str, rows: list[dict[str, Any]], description: str = "") -> None:
    if not in_prefect_run() or not rows:
        return
    from prefect.artifacts import create_table_artifact

    create_table_artifact(rows, key=artifact_key(key), description=description)


def publish_markdown(key: str, markdown: str, description: str = "") -> None:
    if not in_prefect_run():
        return
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown, key=artifact_key(key), description=description)


class Progress:
    """A Prefect progress artifact (0–100 %) that is silent outside a Prefect run.

    A search stage passes `done`/`total` (and the best candidate so far): the description then
    reads "3/8 candidates, best mAP 0.412 (#5)" in the Prefect UI, and the same figures travel as
    data in the artifact's metadata (`metadata`), which `spnas run`'s terminal view reads back with
    `fields` (spnas/watch.py) — the UI text is never parsed."""

    METADATA_KEY = "spnas.progress"  # Prefect metadata holds str -> str: one JSON object under this key
    _BEST_LIMIT = 200  # Prefect caps each metadata value at 500 characters

    def __init__(self, key: str, description: str = "") -> None:
        self._id: UUID | None = None
        if in_prefect_run():
            from prefect.artifacts import create_progress_artifact

            self._id = create_progress_artifact(0.0, key=artifact_key(key), description=description)

    def update(self, fraction: float, description: str | None = None, *, done: int | None = None,
               total: int | None = None, best: str | None = None) -> None:
        if self._id is None:
            return
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactUpdate

        # prefect.artifacts.update_progress_artifact cannot set metadata: the same PATCH, with it.
        update: dict[str, Any] = {"data": max(0.0, min(100.0, 100.0 * fraction))}
        if done is not None and total is not None:
            description = self.describe(done, total, best)
            update["metadata_"] = self.metadata(done, total, best)
        if description:
            update["description"] = description
        with get_client(sync_client=True) as prefect_client:
            prefect_client.update_artifact(self._id, ArtifactUpdate(**update))

    @staticmethod
    def describe(done: int, total: int, best: str | None = None) -> str:
        """What the Prefect UI shows."""
        text = f"{done}/{total} candidates"
        return f"{text}, best {best}" if best else text

    @classmethod
    def metadata(cls, done: int, total: int, best: str | None = None) -> dict[str, str]:
        """The artifact metadata carrying the figures as data."""
        figures: dict[str, Any] = {"done": int(done), "total": int(total)}
        if best:
            figures["best"] = best[:cls._BEST_LIMIT]
        return {cls.METADATA_KEY: json.dumps(figures)}

    @classmethod
    def fields(cls, metadata: Mapping[str, str] | None) -> dict[str, Any]:
        """`done`, `total` and `best` from an artifact's metadata (absent keys: not there)."""
        raw = (metadata or {}).get(cls.METADATA_KEY)
        try:
            figures = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        if not isinstance(figures, dict):
            return {}
        found: dict[str, Any] = {}
        done, total = figures.get("done"), figures.get("total")
        if _is_count(done) and _is_count(total):
            found["done"], found["total"] = done, total
            if isinstance(figures.get("best"), str) and figures["best"]:
                found["best"] = figures["best"]
        return found

    @staticmethod
    def best_of(rows: Iterable[Mapping[str, Any]], metric: str) -> str | None:
        """The highest-`metric` candidate that did not fail, as "<metric> <value> (#<id>)"."""
        scored = [r for r in rows if r.get("status") != "failed" and isinstance(r.get(metric), (int, float))
                  and not isinstance(r.get(metric), bool) and math.isfinite(float(r[metric]))]
        if not scored:
            return None
        top = max(scored, key=lambda r: float(r[metric]))
        return f"{metric} {float(top[metric]):.4g} (#{top.get('id', '?')})"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
