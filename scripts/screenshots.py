"""Headless-Chromium screenshots of the running stack's UIs.

Takes, into one folder (default <state>/screenshots):
  prefect_runs.png      the Prefect UI runs page
  prefect_flow_run.png  the newest flow run's page
  mlflow_runs.png       the MLflow runs table of the experiment with the newest run

A health check passing does not prove the UI works (a Prefect UI pointed at the wrong API
port still serves its page and shows "Can't connect to Server API"), so look at the PNGs.

    python scripts/screenshots.py [--out DIR] [--chromium PATH]
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

from spnas.config import StackConfig

# The Chromium helpers are the tests' (tests/browser.py); this script is their one other user.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import browser  # noqa: E402

# Loopback only: never route through a proxy from the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with _HTTP.open(req, timeout=10) as resp:
        return json.loads(resp.read())


def newest_flow_run_id(cfg: StackConfig) -> str | None:
    runs = _post(f"{cfg.prefect_api_url}/flow_runs/filter",
                 {"sort": "EXPECTED_START_TIME_DESC", "limit": 1})
    return runs[0]["id"] if runs else None


def newest_experiment_id(cfg: StackConfig) -> str | None:
    """The experiment holding the most recently started run (else the newest experiment)."""
    api = f"{cfg.mlflow_url}/api/2.0/mlflow"
    exps = _post(f"{api}/experiments/search",
                 {"max_results": 1000, "order_by": ["creation_time DESC"]}).get("experiments", [])
    if not exps:
        return None
    runs = _post(f"{api}/runs/search", {
        "experiment_ids": [e["experiment_id"] for e in exps],
        "max_results": 1, "order_by": ["attributes.start_time DESC"]}).get("runs", [])
    return runs[0]["info"]["experiment_id"] if runs else exps[0]["experiment_id"]


def main(argv: list[str] | None = None) -> int:
    cfg = StackConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=cfg.state / "screenshots",
                        help="folder for the PNGs (default: %(default)s)")
    parser.add_argument("--chromium", help="path to a chromium/chrome executable")
    args = parser.parse_args(argv)

    try:
        chromium = browser.require_chromium(args.chromium)
    except browser.ChromiumMissing as e:
        print(e, file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    shots: list[tuple[str, str]] = [("prefect_runs.png", f"{cfg.prefect_ui_url}/runs")]
    try:
        if run_id := newest_flow_run_id(cfg):
            shots.append(("prefect_flow_run.png", browser.prefect_flow_run_url(cfg, run_id)))
        else:
            print("No Prefect flow runs yet: skipping the flow-run page.")
    except OSError as e:
        print(f"Prefect API at {cfg.prefect_api_url} did not answer ({e}); is the stack up?",
              file=sys.stderr)
        return 1
    try:
        exp_id = newest_experiment_id(cfg)
    except OSError as e:
        print(f"MLflow at {cfg.mlflow_url} did not answer ({e}); is the stack up?",
              file=sys.stderr)
        return 1
    shots.append(("mlflow_runs.png",
                  browser.mlflow_runs_table_url(cfg, exp_id) if exp_id is not None
                  else cfg.mlflow_url))

    failed = 0
    for name, url in shots:
        png = args.out / name
        error = browser.screenshot(url, png, chromium=chromium)
        failed += error is not None
        print(f"{'FAILED' if error else 'ok    '} {png}  <-  {url}")
        if error:
            print(f"  {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
