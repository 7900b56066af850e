"""tests/browser.py without a stack: page URLs, reading a dumped DOM, and (slow: needs Chromium)
dump_dom seeing what a page's JavaScript rendered."""
from __future__ import annotations

from pathlib import Path

import pytest

import browser
from spnas.config import StackConfig

CFG = StackConfig(state=Path("/nonexistent-spnas-state"), prefect_port=4311, mlflow_port=5311)


def test_prefect_page_urls() -> None:
    assert browser.prefect_flow_run_url(CFG, "abc") == "http://127.0.0.1:4311/runs/flow-run/abc"
    assert (browser.prefect_v2_flow_run_url(CFG, "abc", "TaskRuns")
            == "http://127.0.0.1:4311/v2/runs/flow-run/abc?tab=TaskRuns")
    assert browser.prefect_v2_task_run_href("t1") == "/v2/runs/task-run/t1"
    assert browser.prefect_v2_artifact_href("lcnet-summary") == "/v2/artifacts/key/lcnet-summary"


def test_prefect_v2_tab_is_checked() -> None:
    # V1's label "Task Runs" is not a V2 tab value: the page would silently open on Details.
    with pytest.raises(ValueError, match="TaskRuns"):
        browser.prefect_v2_flow_run_url(CFG, "abc", "Task Runs")


def test_mlflow_page_urls() -> None:
    assert browser.mlflow_runs_table_url(CFG, 3) == "http://127.0.0.1:5311/#/experiments/3/runs"
    assert (browser.mlflow_runs_table_url(CFG, "3", order_by="attributes.run_name")
            == "http://127.0.0.1:5311/#/experiments/3/runs?orderByKey=attributes.run_name&orderByAsc=true")
    assert (browser.mlflow_runs_table_url(CFG, 3, order_by="metrics.`a b`", ascending=False)
            == "http://127.0.0.1:5311/#/experiments/3/runs?orderByKey=metrics.%60a+b%60&orderByAsc=false")
    assert browser.mlflow_run_href(3, "r1") == "#/experiments/3/runs/r1"


def test_read_page_text_and_links() -> None:
    dom = ("<html><head><title>T</title><style>.x{}</style><script>var a = 1;</script></head>"
           "<body><p>6 Task&nbsp;runs</p><a href='/a'><span>first</span> <b>run</b></a>"
           "<a href='/a'>again</a><div><a href='#/b'>x<a href='/c'>inner</a></a></div></body></html>")
    page = browser.read_page(dom)
    assert page.text == "T 6 Task runs first run again x inner"  # &nbsp; is whitespace too
    assert page.link_texts("/a") == ["first run", "again"]
    assert page.link_texts("/c") == ["inner"]
    assert page.link_texts("/missing") == []


def test_missing_chromium_says_how_to_install() -> None:
    assert browser.find_chromium("/no/such/chromium") is None
    with pytest.raises(browser.ChromiumMissing, match="scripts/system_deps.sh"):
        browser.require_chromium("/no/such/chromium")


@pytest.mark.slow
def test_dump_dom_has_what_javascript_rendered(tmp_path: Path) -> None:
    if browser.find_chromium() is None:
        pytest.fail(f"Chromium is needed: {browser.INSTALL_HINT}")
    page = tmp_path / "spa.html"
    # Like the UIs: the served HTML is a shell, the content comes later from script.
    page.write_text("<html><body><div id='app'>loading</div><script>"
                    "setTimeout(() => { document.getElementById('app').innerHTML ="
                    " \"<a href='/runs/1'>rendered-run</a>\"; }, 1500);"
                    "</script></body></html>")
    dom = browser.dump_dom(page.as_uri(), budget_ms=5000)
    assert browser.read_page(dom).link_texts("/runs/1") == ["rendered-run"]
    assert "loading" not in browser.read_page(dom).text
