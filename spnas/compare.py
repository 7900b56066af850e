"""`spnas compare RUN [RUN ...]`: put flow runs of one deployment side by side.

A RUN is a Prefect flow-run name (the MLflow tag `prefect.flow_run_name` of the flow's parent
run), a Prefect flow-run id, or an MLflow run id (a stage or candidate run id stands for the
flow run it belongs to). The comparison is

* one table: the parameters whose values differ between the runs (identical ones are only
  counted), each run's final figures (its summary.json, else its metrics) and, per search
  stage, figures of its Pareto front: candidates, front size, best score, the share of the
  common box its front dominates (hypervolume) and how many points of the runs' combined front
  it owns;
* one plot: every run's Pareto front as a step line over its candidates, one panel per search
  stage (lcnet has no search: each run is one point, MACs vs test top-1).

Both go to a folder (compare.csv, pareto_fronts.png) and to a new MLflow run `compare <names>`
in the deployment's experiment, tagged with the compared run ids.

The candidates tables are read from the search stage's MLflow run (artifacts logged by the
search driver) or, failing that, from the flow run's output folder on this machine.
"""
from __future__ import annotations

import csv
import io
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from core.errors import InputError
from core.paths import unwritable_reason
from params.registry import PIPELINES, FrontSpec
from strategies import pareto
from tasks.orchestration.search import CONTROL
from tracking import tracker

COMPARE_TAG = "spnas.compare.run_ids"
NAME_TAG = "prefect.flow_run_name"
ID_TAG = "prefect.flow_run_id"
PNG = "pareto_fronts.png"
CSV = "compare.csv"
MISSING = "—"
# Front objectives in strategies.pareto's terms: x (cost) minimized, y (score) maximized.
MAXIMIZE = (False, True)


def front_specs(flow: str, runs: Sequence[RunInfo]) -> tuple[FrontSpec, ...]:
    """The registry's fronts of `flow`, with the axes these runs were searched on."""
    return tuple(spec.for_runs([r.params for r in runs]) for spec in PIPELINES[flow].fronts)


@dataclass
class RunInfo:
    ref: str                 # what the user typed
    run_id: str
    name: str                # flow-run name (MLflow run name)
    flow: str                # experiment name
    status: str
    start_time: int | None
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    label: str = ""
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def deployment(self) -> str:
        return PIPELINES[self.flow].deployment


@dataclass
class Comparison:
    deployment: str
    runs: list[RunInfo]
    rows: list[dict[str, Any]]          # {"section", "name", "values": [one per run]}
    identical_params: int
    png: Path
    csv: Path
    mlflow_run_id: str | None
    notes: list[str]

    def report(self, width: int = 28) -> str:
        labels = [r.label for r in self.runs]
        lines = [f"{self.deployment}: {len(self.runs)} run(s): "
                 + ", ".join(f"{r.label} ({r.run_id}, {r.status})" for r in self.runs)]
        lines += [f"note: {n}" for n in self.notes]
        lines += ["", format_table(self.rows, labels, width), ""]
        lines.append(f"parameters: {sum(r['section'] == 'params' for r in self.rows)} differ, "
                     f"{self.identical_params} identical (not shown)")
        lines.append(f"table: {self.csv}")
        lines.append(f"plot:  {self.png}")
        if self.mlflow_run_id:
            url = tracker.run_url(self.mlflow_run_id)
            lines.append(f"MLflow run: {self.mlflow_run_id}" + (f"  {url}" if url else ""))
        return "\n".join(lines)


# ---------------------------------------------------------------- finding the runs


def _flows() -> list[str]:
    return list(PIPELINES)


def resolve(ref: str, notes: list[str]) -> RunInfo:
    """The parent run of one flow run; InputError naming `ref` and where it looked if none."""
    flows = _flows()
    ids = tracker.experiment_ids(flows)
    run = None
    if len(ref) == 32 and all(c in "0123456789abcdef" for c in ref.lower()):
        found = tracker.find_run(ref)
        if found is not None:
            run = tracker.root_run(found)
            if run.info.run_id != found.info.run_id:
                notes.append(f"{ref} is a stage/candidate run; comparing its flow run {run.info.run_id}")
    if run is None:
        for tag in (NAME_TAG, ID_TAG):
            matches = tracker.top_runs_tagged(list(ids.values()), tag, ref)
            if matches:
                run = matches[0]
                if len(matches) > 1:
                    notes.append(f"{ref!r} names {len(matches)} MLflow runs; taking the newest, {run.info.run_id} "
                                 f"(others: {', '.join(m.info.run_id for m in matches[1:])})")
                break
    if run is None:
        raise InputError("RUN", f"{ref!r} is no flow-run name, flow-run id or MLflow run id in the experiments "
                                f"{', '.join(flows)} of {tracker.tracking_uri()} (experiments there: "
                                f"{', '.join(ids) or 'none of them'})")
    flow = tracker.experiment_name(run.info.experiment_id)
    if flow not in PIPELINES:
        raise InputError("RUN", f"{ref!r} is an MLflow run of experiment {flow!r}, not of one of our flows "
                                f"({', '.join(flows)})")
    if COMPARE_TAG in run.data.tags:
        raise InputError("RUN", f"{ref!r} is a comparison made by `spnas compare`, not a flow run")
    return RunInfo(ref, run.info.run_id, run.data.tags.get(NAME_TAG) or run.info.run_name or run.info.run_id, flow,
                   run.info.status, run.info.start_time, dict(run.data.params), dict(run.data.tags),
                   dict(run.data.metrics))


def resolve_all(refs: Sequence[str], notes: list[str]) -> list[RunInfo]:
    if not refs:
        raise InputError("RUN", "give at least one run (flow-run name or MLflow run id)")
    runs: list[RunInfo] = []
    for ref in refs:
        run = resolve(ref, notes)
        same = next((r for r in runs if r.run_id == run.run_id), None)
        if same is not None:
            raise InputError("RUN", f"{ref!r} and {same.ref!r} are the same run ({run.run_id})")
        runs.append(run)
    flows = {r.flow for r in runs}
    if len(flows) > 1:
        raise InputError("RUN", "runs of different deployments cannot be compared: "
                                + ", ".join(f"{r.ref} is {r.deployment}" for r in runs)
                                + "; compare runs of one deployment")
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.name] = counts.get(r.name, 0) + 1
    for r in runs:  # two runs of one name (a retried flow run): the id tells them apart
        r.label = r.name if counts[r.name] == 1 else f"{r.name} ({r.run_id[:8]})"
    return runs


# ---------------------------------------------------------------- what each run holds


def load_summary(run: RunInfo, tmp: Path) -> dict[str, Any]:
    """The run's summary.json (text figures too, e.g. the winner's code), else its metrics."""
    path = tracker.download_artifact(run.run_id, "summary.json", tmp / run.run_id)
    if path is None and run.tags.get("output_dir"):
        local = Path(run.tags["output_dir"]) / "summary.json"
        path = local if local.is_file() else None
    summary: dict[str, Any] = {}
    if path is not None:
        try:
            summary = dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            summary = {}
    return {**summary, **{k: v for k, v in run.metrics.items() if k not in summary}}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in {"true", "1", "1.0", "yes"}


def load_points(run: RunInfo, spec: FrontSpec, tmp: Path) -> list[dict[str, Any]] | None:
    """The run's evaluated candidates as {"x", "y", "chosen"}; None if its table is nowhere."""
    if spec.stage is None:
        x, y = _number(run.summary.get(spec.x)), _number(run.summary.get(spec.y))
        return [{"x": x, "y": y, "chosen": True}] if x is not None and y is not None else None
    path = None
    stages = [c for c in tracker.child_runs(run.run_id) if c.info.run_name == spec.stage_run]
    for child in sorted(stages, key=lambda c: c.info.start_time or 0, reverse=True):
        path = tracker.download_artifact(child.info.run_id, spec.table, tmp / child.info.run_id)
        if path is not None:
            break
    if path is None and run.tags.get("output_dir"):
        local = Path(run.tags["output_dir"]) / spec.table
        path = local if local.is_file() else None
    if path is None:
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    points = []
    for row in rows:
        x, y = _number(row.get(spec.x)), _number(row.get(spec.y))
        if x is None or y is None or row.get("status", "ok") != "ok" or row.get("origin") == CONTROL:
            continue  # a random control's candidates are not the run's (summary.json has search vs control)
        points.append({"x": x, "y": y, "chosen": _truthy(row.get("chosen"))})
    return points


# ---------------------------------------------------------------- Pareto figures


def front_points(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The distinct non-dominated points (x lower is better, y higher is better), by increasing x:
    the steps of a front's line."""
    unique = sorted(set(points))
    if not unique:
        return []
    return [unique[i] for i in pareto.pareto_front(unique, MAXIMIZE)]


def log_scale(xs: Sequence[float]) -> bool:
    """MACs/params spanning more than two decades (pruning) read better on a log axis."""
    positive = [x for x in xs if x > 0]
    return len(positive) == len(xs) and bool(xs) and max(xs) / min(xs) > 100


def front_figures(points: dict[str, list[dict[str, Any]] | None], spec: FrontSpec) -> dict[str, list[Any]]:
    """Per run (same order as `points`): candidates, front size, best y, smallest x on the front,
    the hypervolume share of the box all runs span (x on a log scale where the plot has one)
    and how many points of the combined front are its own."""
    labels = list(points)
    every = [p for pts in points.values() if pts for p in pts]
    out: dict[str, list[Any]] = {k: [] for k in ("candidates", "front size", f"best {spec.y}",
                                                 f"smallest {spec.x} on front", "hypervolume share",
                                                 "points on combined front")}
    if not every:
        return {k: [None] * len(labels) for k in out}
    log = log_scale([p["x"] for p in every])
    tx = (lambda v: math.log10(v)) if log else (lambda v: v)
    xs, ys = [tx(p["x"]) for p in every], [p["y"] for p in every]
    dx, dy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    # Reference point 5 % beyond the worst x and y of all runs, so no front end counts zero.
    ref = (max(xs) + 0.05 * dx, min(ys) - 0.05 * dy)
    box = (ref[0] - min(xs)) * (max(ys) - ref[1])
    fronts = {lab: front_points([(p["x"], p["y"]) for p in pts]) if pts else [] for lab, pts in points.items()}
    combined = set(front_points([p for f in fronts.values() for p in f]))
    # A point two runs share (a reused candidate) counts for both.
    total = len(combined)
    for lab in labels:
        pts, front = points[lab], fronts[lab]
        if not pts:
            for values in out.values():
                values.append(None)
            continue
        out["candidates"].append(len(pts))
        out["front size"].append(len(front))
        out[f"best {spec.y}"].append(max(p["y"] for p in pts))
        out[f"smallest {spec.x} on front"].append(front[0][0])
        area = pareto.hypervolume([(tx(x), y) for x, y in front], MAXIMIZE, ref)
        out["hypervolume share"].append(round(area / box, 4))
        out["points on combined front"].append(f"{sum(p in combined for p in front)} of {total}")
    return out


# ---------------------------------------------------------------- table


def param_rows(runs: Sequence[RunInfo]) -> tuple[list[dict[str, Any]], int]:
    keys = sorted({k for r in runs for k in r.params})
    rows, identical = [], 0
    for key in keys:
        values = [r.params.get(key, "(absent)") for r in runs]
        if len(set(values)) == 1:
            identical += 1
        else:
            rows.append({"section": "params", "name": key, "values": values})
    return rows, identical


# Summary keys of an export's int8 twin (a model-name prefix may come first, e.g. winner_int8_acc_delta):
# deltas are int8 − float in points of the run's headline metric, the ratio is int8 / float latency.
INT8_SUFFIXES = ("int8_acc_delta", "int8_map_delta", "int8_ap50_delta", "int8_latency_ratio", "int8_error")
INT8_SECTION = "int8 vs float (delta: points; latency: int8 / float)"


def _is_int8(key: str) -> bool:
    return key.endswith(INT8_SUFFIXES)


def figure_rows(runs: Sequence[RunInfo]) -> list[dict[str, Any]]:
    """The summaries' figures (section "final"), then the int8 twin's accuracy delta and latency
    ratio in a section of their own where any run has them (its other int8 figures stay in "final")."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.summary if k not in keys]
    final = [{"section": "final", "name": k, "values": [r.summary.get(k) for r in runs]}
             for k in keys if not _is_int8(k)]
    return final + [{"section": INT8_SECTION, "name": k, "values": [r.summary.get(k) for r in runs]}
                    for k in sorted(keys, key=lambda k: (k.endswith("int8_error"), k)) if _is_int8(k)]


def _cell(value: Any) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{int(value):,}" if value.is_integer() and abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def comparison_table(rows: Sequence[dict[str, Any]], labels: Sequence[str], width: int = 28) -> Table:
    """Rows grouped by section (a "[section]" row before each), one right-aligned column per run
    (values longer than `width` end in "…")."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("run", no_wrap=True)
    for label in labels:
        table.add_column(label, justify="right", no_wrap=True, overflow="ellipsis", max_width=max(width, len(label)))
    section = None
    for row in rows:
        if row["section"] != section:
            section = row["section"]
            table.add_row(Text(f"[{section}]", style="bold"), *[""] * len(labels))
        table.add_row("  " + row["name"], *[_cell(v) for v in row["values"]])
    return table


def format_table(rows: Sequence[dict[str, Any]], labels: Sequence[str], width: int = 28) -> str:
    """`comparison_table` as plain text (no colours: the report is also written to pipes and logs)."""
    console = Console(file=io.StringIO(), width=100_000, color_system=None, highlight=False)
    console.print(comparison_table(rows, labels, width))
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())


def write_csv(rows: Sequence[dict[str, Any]], labels: Sequence[str], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["section", "name", *labels])
        for row in rows:
            writer.writerow([row["section"], row["name"],
                             *["" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else v
                               for v in row["values"]]])
    return path


# ---------------------------------------------------------------- plot


def plot_fronts(deployment: str, specs: Sequence[FrontSpec], points: Sequence[dict[str, list[dict[str, Any]] | None]],
                path: Path) -> Path:
    """One panel per search stage: per run its candidates (faint), its front (step line) and
    the candidate the run chose (star)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(specs), figsize=(6.5 * len(specs), 4.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, spec, per_run in zip(axes[0], specs, points):
        every = [p["x"] for pts in per_run.values() if pts for p in pts]
        for i, (label, pts) in enumerate(per_run.items()):
            color = colors[i % len(colors)]
            if not pts:
                ax.plot([], [], color=color, label=f"{label} (no candidates table)")
                continue
            front = front_points([(p["x"], p["y"]) for p in pts])
            ax.scatter([p["x"] for p in pts], [p["y"] for p in pts], color=color, alpha=0.25, s=14)
            ax.step([x for x, _ in front], [y for _, y in front], where="post", color=color, marker="o",
                    label=label)
            chosen = [p for p in pts if p["chosen"]]
            if chosen and spec.stage is not None:
                ax.scatter([p["x"] for p in chosen], [p["y"] for p in chosen], color=color, marker="*", s=160,
                           edgecolors="black", linewidths=0.6, zorder=3)
        if log_scale(every):
            ax.set_xscale("log")
        ax.set_xlabel(f"{spec.x} (lower is better)")
        ax.set_ylabel(f"{spec.y} (higher is better)")
        ax.set_title(spec.title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    star = " (star: the candidate the run chose)" if any(s.stage for s in specs) else ""
    fig.suptitle(f"{deployment}: Pareto fronts{star}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- the command


def default_out_dir() -> Path:
    return Path.cwd() / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"


def compare(refs: Sequence[str], out_dir: str | Path | None = None, log: bool = True) -> Comparison:
    """Resolve, tabulate, plot, write and (if `log`) record the comparison in MLflow."""
    notes: list[str] = []
    out = Path(out_dir) if out_dir else default_out_dir()
    reason = unwritable_reason(out)
    if reason:
        raise InputError("--out", f"{out} cannot be written: {reason}")
    tracker.check_tracking_server()  # a server nobody answers at: one line in seconds, not minutes of retries
    runs = resolve_all(refs, notes)  # every input checked before anything is written
    flow = runs[0].flow
    specs = front_specs(flow, runs)
    with tempfile.TemporaryDirectory(prefix="spnas-compare-") as tmp_name:
        tmp = Path(tmp_name)
        for r in runs:
            r.summary = load_summary(r, tmp)
        points = [{r.label: load_points(r, spec, tmp) for r in runs} for spec in specs]
    rows, identical = param_rows(runs)
    rows += figure_rows(runs)
    for spec, per_run in zip(specs, points):
        for r in runs:
            if per_run[r.label] is None:
                notes.append(f"{r.label}: no {spec.table or spec.y} found for '{spec.title}'")
        section = f"front: {spec.title} ({spec.y} vs {spec.x})"
        rows += [{"section": section, "name": name, "values": values}
                 for name, values in front_figures(per_run, spec).items()]
    out.mkdir(parents=True, exist_ok=True)
    labels = [r.label for r in runs]
    csv_path = write_csv(rows, labels, out / CSV)
    png = plot_fronts(runs[0].deployment, specs, points, out / PNG)
    run_id = None
    if log:
        name = "compare " + " ".join(labels)
        run_id = tracker.log_comparison_run(flow, name if len(name) <= 240 else name[:239] + "…", [png, csv_path],
                                            {COMPARE_TAG: ",".join(r.run_id for r in runs),
                                             "spnas.compare.runs": ",".join(labels)})
    return Comparison(runs[0].deployment, runs, rows, identical, png, csv_path, run_id, notes)


__all__ = ["Comparison", "compare", "format_table", "front_figures", "front_points", "resolve_all"]
