"""Does each search earn its keep? Every search pipeline's flow at its defaults (plus any --set),
with `control: random` on each of its search sections, once per seed: the search and a
same-budget random sample of its space (same evaluator, limits and training budget), compared
by the flow itself (tasks/orchestration/search.py `control_report`). Prints, per pipeline, seed
and search section, the best first-objective value within the limits of each side, their
difference, and with two objectives the hypervolume ratio search/control on a common reference
point; then the mean and spread over the seeds. A search with a `fidelity` (successive halving)
also shows how many candidates it screened for the training steps it spent, against how many
those steps train at the full budget. Asserts nothing.

Long: each flow runs in full (about 10-20 min per pipeline and seed on 2 cores, the control
doubling each search's cost). The flows talk to a throwaway Prefect server and a local MLflow
SQLite store in a temporary folder unless PREFECT_API_URL / MLFLOW_TRACKING_URI are set.

    .venv/bin/python benchmarks/search_vs_random.py                      # every search pipeline, seeds 0 1
    .venv/bin/python benchmarks/search_vs_random.py --only prune-ea --seeds 0 1 --set data.embedded=digits
    .venv/bin/python benchmarks/search_vs_random.py --only prune-ea --set search.random_models=48 \
        --set search.num_individual=16 --set 'search.fidelity={min_steps: 10, max_steps: 90, eta: 3}'
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FIGURES = ("best_search", "best_control", "best_gain", "hv_ratio", "hv_ratio_bound")
SCREENING = ("screened", "train_steps", "full_budget_candidates", "screening_gain")


def screened(run_dir: Path, table: str) -> dict[str, float] | None:
    """Multi-fidelity (a `fidelity` section): from the search's own rows of its candidates table,
    how many candidates it screened, the training steps it spent, how many candidates the same
    steps train at the full budget (the largest rung's steps), and the ratio of the two. None when
    the search ran without a fidelity (no `rung` column)."""
    from tasks.orchestration.search import own_rows
    from tasks.orchestration.tables import read_table

    path = run_dir / table
    if not path.is_file():
        return None
    frame = read_table(path)
    if "rung" not in frame.columns:
        return None
    rows = own_rows(frame.to_dict("records"))
    steps = sum(float(r["train_steps"]) for r in rows)
    full = max(float(r["train_steps"]) for r in rows)
    equal = steps / full
    return {"screened": float(len(rows)), "train_steps": steps, "full_budget_candidates": equal,
            "screening_gain": len(rows) / equal}


def flow_of(entrypoint: str) -> Any:
    module, name = entrypoint.split(":")
    return getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name)


def nested(overrides: dict[str, Any], dotted: str, value: Any) -> None:
    *path, key = dotted.split(".")
    node = overrides
    for part in path:
        node = node.setdefault(part, {})
    node[key] = value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated pipelines (default: every one with a search)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--set", action="append", default=[], help="section.key=value, for every pipeline run")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="spnas-search-vs-random-"))
    os.environ.setdefault("SPNAS_HOME", str(home))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

    from latency.timing import load_average
    from params.loader import parse_override
    from params.models import search_sections
    from params.registry import PIPELINES

    chosen = [p for p in PIPELINES.values() if search_sections(p.model)]
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {p.name for p in chosen}
        if unknown:
            sys.exit(f"--only: unknown or search-less pipeline(s) {sorted(unknown)}; "
                     f"choose from {[p.name for p in chosen]}")
        chosen = [p for p in chosen if p.name in wanted]
    sets = [parse_override(s) for s in args.set]

    harness: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.testing.utilities import prefect_test_harness

        harness = prefect_test_harness(server_startup_timeout=180)
    print(f"load average {load_average()} on {os.cpu_count()} CPUs; seeds {args.seeds}; --set {args.set or 'none'}",
          flush=True)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with harness:
        for spec in chosen:
            sections = search_sections(spec.model)
            for seed in args.seeds:
                overrides: dict[str, Any] = {"seed": seed, "output_root": str(home / "outputs")}
                for section in sections:
                    nested(overrides, f"{section}.control", "random")
                for key, value in sets:
                    nested(overrides, key, value)
                t0 = time.perf_counter()
                summary = flow_of(spec.entrypoint)(params_file=spec.params_file, overrides=overrides)
                print(f"{spec.name} seed {seed}: {time.perf_counter() - t0:.0f} s  ({summary.get('run_dir')})",
                      flush=True)
                for section in sections:
                    prefix = "control_" if len(sections) == 1 else f"{section}_control_"
                    row = {k: float(summary[prefix + k]) for k in FIGURES if prefix + k in summary}
                    results.setdefault((spec.name, section), []).append(row)
                    print("   ", section, "  ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
                for front in spec.fronts:
                    screening = screened(Path(summary["run_dir"]), front.table) if front.table else None
                    if screening:
                        results.setdefault((spec.name, f"{front.stage} fidelity"), []).append(screening)
                        print("   ", front.stage, "  ".join(f"{k} {v:.4g}" for k, v in screening.items()), flush=True)

    print("\nsearch vs random control (mean over seeds, min..max):")
    for (name, section), rows in results.items():
        parts = []
        for key in FIGURES + SCREENING:
            values = [r[key] for r in rows if key in r]
            if values:
                parts.append(f"{key} {statistics.mean(values):.4g} ({min(values):.4g}..{max(values):.4g})")
        wins = sum(r.get("best_gain", 0.0) > 0 for r in rows)
        verdict = f"  search ahead on {wins}/{len(rows)} seeds" if "best_gain" in rows[0] else ""
        print(f"  {name:9s} {section:9s} {'  '.join(parts)}{verdict}")
    print(f"state folder (outputs, MLflow store): {home}")


if __name__ == "__main__":
    main()
