"""The real path a user takes: stack up (Prefect server, process worker, MLflow server),
`prefect deploy --all` from prefect.yaml, a deployment run picked up by the worker, results in
the MLflow server, both UIs showing that run in a real (headless) browser, stack down.

The session's shared stack and lcnet run (tests/conftest.py) serve every test here: starting them
is most of the time."""
from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import browser
from params.registry import LCNET, stage_from_tags
from spnas.stack import StackConfig

pytestmark = pytest.mark.slow

LCNET_STAGES = set(LCNET.stages)
# Loopback only: never route through a proxy from the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Deployed:
    cfg: StackConfig
    out: Path
    code: int


@pytest.fixture(scope="module")
def lcnet_deployed(lcnet_watched_run) -> Deployed:
    """The session's shared lcnet/full run, started through the CLI on the shared stack."""
    cfg, out, proc = lcnet_watched_run
    return Deployed(cfg, out, proc.returncode)


def _run_dir(d: Deployed) -> Path:
    assert d.code == 0, f"lcnet/full exited {d.code}"
    runs = [p for p in d.out.iterdir() if p.is_dir()]
    assert len(runs) == 1
    return runs[0]


def test_lcnet_deployment_runs_on_the_worker(lcnet_deployed: Deployed) -> None:
    from mlflow.tracking import MlflowClient

    cfg = lcnet_deployed.cfg
    run_dir = _run_dir(lcnet_deployed)
    assert (run_dir / "export/inference_model/model.onnx").is_file()
    assert (run_dir / "summary.json").is_file()

    client = MlflowClient(cfg.mlflow_url)
    exp = client.get_experiment_by_name("lcnet")
    found = client.search_runs([exp.experiment_id])
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["prefect.flow_run_name"] == run_dir.name
    assert len(found) == 7  # parent + data, split, train, evaluate, export, predict
    # Artifacts went through the MLflow server into the state folder.
    assert any((cfg.state / "mlartifacts").rglob("model.onnx"))


# --- both UIs in a browser -------------------------------------------------------------

def _prefect(cfg: StackConfig, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(f"{cfg.prefect_api_url}{path}", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with _HTTP.open(req, timeout=30) as resp:
        return json.loads(resp.read())


def _has_links(*hrefs: str) -> Any:
    """A dump_dom `ready` check: the page has rendered the rows that link to these."""
    return lambda dom: all(f'href="{h}"' in dom for h in hrefs)


def _name_cell_has_button(dom: str, href: str) -> bool:
    """In MLflow's runs table, whether the Run Name cell holding the link `href` also holds a
    button: the expander a parent of nested runs gets (plain rows have none)."""
    at = dom.find(f'href="{href}"')
    cell_start = dom.rfind('role="gridcell"', 0, at)
    return at > 0 and cell_start >= 0 and "<button" in dom[cell_start:at]


def test_both_uis_render_the_run(lcnet_deployed: Deployed) -> None:
    """Prefect's flow-run page and MLflow's runs table, loaded in headless Chromium, show this
    run: asserted on the rendered DOM against what the two APIs say."""
    from mlflow.tracking import MlflowClient

    if browser.find_chromium() is None:
        pytest.fail(f"Chromium is needed to check the UIs: {browser.INSTALL_HINT}. "
                    "README command 2 (scripts/test.sh) does this itself.")
    cfg = lcnet_deployed.cfg
    name = _run_dir(lcnet_deployed).name  # the output folder is named after the flow run

    # What the Prefect API says about the run.
    flow_runs = _prefect(cfg, "/flow_runs/filter", {"flow_runs": {"name": {"any_": [name]}}})
    assert len(flow_runs) == 1
    fr_id = flow_runs[0]["id"]
    task_runs = _prefect(cfg, "/task_runs/filter", {"flow_runs": {"id": {"any_": [fr_id]}}})
    assert {stage_from_tags(t["tags"]) for t in task_runs} == LCNET_STAGES  # every stage ran, tagged with it
    artifacts = _prefect(cfg, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [fr_id]}}})
    keys = sorted({a["key"] for a in artifacts if a["key"]})
    assert {"lcnet-summary", "lcnet-mlflow"} <= set(keys)

    # What MLflow says: one parent named after the flow run, one child per stage.
    client = MlflowClient(cfg.mlflow_url)
    exp_id = client.get_experiment_by_name("lcnet").experiment_id
    found = client.search_runs([exp_id])
    parent = next(r for r in found if "mlflow.parentRunId" not in r.data.tags)
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.run_name == name and {c.info.run_name for c in children} == LCNET_STAGES

    # Prefect's default UI, the flow-run page (Logs tab): name, state, task-run count, and the
    # MLflow link the flow logs.
    url = browser.prefect_flow_run_url(cfg, fr_id)
    page = browser.read_page(browser.dump_dom(
        url, ready=lambda dom: f"{len(task_runs)} Task runs" in dom and parent.info.run_id in dom))
    assert f"Flow Run: {name}" in page.text, url
    assert "Completed" in page.text and f"{len(task_runs)} Task runs" in page.text, url
    assert parent.info.run_id in page.text, url  # "MLflow run: <url>" log line

    # Its Task Runs tab: each task run is a row linking to it, under its name.
    task_hrefs = {browser.prefect_v2_task_run_href(t["id"]): t["name"] for t in task_runs}
    url = browser.prefect_v2_flow_run_url(cfg, fr_id, "TaskRuns")
    page = browser.read_page(browser.dump_dom(url, ready=_has_links(*task_hrefs)))
    assert f"{len(task_runs)} Task runs" in page.text, url
    for href, task_name in task_hrefs.items():
        assert page.link_texts(href) == [task_name], (url, href)

    # Its Artifacts tab: one card per key, linking to the key's page.
    key_hrefs = {browser.prefect_v2_artifact_href(k): k for k in keys}
    url = browser.prefect_v2_flow_run_url(cfg, fr_id, "Artifacts")
    page = browser.read_page(browser.dump_dom(url, ready=_has_links(*key_hrefs)))
    for href, key in key_hrefs.items():
        texts = page.link_texts(href)
        assert len(texts) == 1 and key in texts[0], (url, key, texts)

    # MLflow's runs table as it opens: the parent row with an expander, its children folded
    # under it (not rendered), and the count of all matching runs.
    parent_href = browser.mlflow_run_href(exp_id, parent.info.run_id)
    child_hrefs = {browser.mlflow_run_href(exp_id, c.info.run_id): c.info.run_name for c in children}
    url = browser.mlflow_runs_table_url(cfg, exp_id)
    dom = browser.dump_dom(url, ready=_has_links(parent_href))
    page = browser.read_page(dom)
    assert page.link_texts(parent_href) == [name], url
    assert _name_cell_has_button(dom, parent_href), "no expander on the parent row"
    assert not any(page.link_texts(h) for h in child_hrefs), "children shown before expanding"
    assert f"{len(found)} matching runs" in page.text, url

    # Sorted by name the same table lists the runs flat: every child by name, and the parent.
    url = browser.mlflow_runs_table_url(cfg, exp_id, order_by="attributes.run_name")
    dom = browser.dump_dom(url, ready=_has_links(parent_href, *child_hrefs))
    page = browser.read_page(dom)
    assert page.link_texts(parent_href) == [name], url
    for href, child_name in child_hrefs.items():
        assert page.link_texts(href) == [child_name], (url, child_name)
        assert not _name_cell_has_button(dom, href)
