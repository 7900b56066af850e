"""Headless Chromium against the stack's two UIs: rendered DOM for the tests, PNGs for people.

A test helper (`import browser` from tests/); scripts/screenshots.py imports it from here too.

Both UIs are single-page apps: the HTML the server sends is an empty shell, so what a user
sees exists only after the page's JavaScript has fetched the data. Chromium's --dump-dom
prints the DOM after a virtual-time budget, i.e. after that rendering.

The URL builders name pages a user can open by hand:
- Prefect's default (V1) UI keeps the flow-run tab in `?tab=`, but resets it to Logs on the
  first load (the Task Runs and Artifacts tabs are hidden until the run has loaded, and a
  hidden tab falls back to the first visible one). The V2 UI the same server serves under
  /v2 keeps `?tab=TaskRuns` / `?tab=Artifacts`, so those tabs are addressed there.
- MLflow's runs table nests child runs under their parent, collapsed behind an expander,
  only while the table is sorted by start time (its default); the expanded state lives in
  the browser's local storage, not in the URL. Sorted by any other column the same table
  lists parent and children flat, so `orderByKey=attributes.run_name` shows every child.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable

from spnas.config import StackConfig

INSTALL_HINT = "run `bash scripts/system_deps.sh` (it installs Debian's `chromium`)"

# On a machine without internet, Chromium's own background traffic (component updates, sync,
# QUIC probes) gets its connections refused and can stall the page; turn all of it off.
BASE_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1400,900",
    # Paint (and so lay out) everything before the DOM is dumped or the shot taken.
    "--run-all-compositor-stages-before-draw",
]

# V2 flow-run tabs (the values its `?tab=` accepts).
PREFECT_V2_TABS = ("Details", "Logs", "TaskRuns", "SubflowRuns", "Artifacts", "Parameters",
                   "JobVariables")


class ChromiumMissing(RuntimeError):
    pass


def find_chromium(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def require_chromium(explicit: str | None = None) -> str:
    if found := find_chromium(explicit):
        return found
    raise ChromiumMissing(f"Chromium was not found ({explicit or 'chromium on PATH'}); "
                          f"{INSTALL_HINT}, or pass the path of a chromium/chrome executable.")


def _run(chromium: str, action: list[str], url: str, budget_ms: int,
         timeout: float) -> subprocess.CompletedProcess[str]:
    # A fresh profile per page: no cache, cookies or local storage carried between pages.
    with tempfile.TemporaryDirectory(prefix="spnas-chromium-") as profile:
        argv = [chromium, *BASE_FLAGS, f"--virtual-time-budget={budget_ms}",
                f"--user-data-dir={profile}", *action, url]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              start_new_session=True)


def dump_dom(url: str, *, chromium: str | None = None, ready: Callable[[str], bool] | None = None,
             attempts: int = 3, budget_ms: int = 15000, timeout: float = 90.0,
             pause: float = 2.0) -> str:
    """The DOM of `url` after rendering. With `ready`, reload (up to `attempts` times, each with
    a longer budget) until ready(dom) holds; the last DOM is returned either way, so the
    caller's assertions say what was missing."""
    exe = require_chromium(chromium)
    dom = ""
    for attempt in range(attempts):
        try:
            done = _run(exe, ["--dump-dom"], url, budget_ms * (attempt + 1), timeout)
            dom = done.stdout
        except subprocess.TimeoutExpired:
            dom = ""
        if dom and (ready is None or ready(dom)):
            return dom
        time.sleep(pause)
    return dom


def screenshot(url: str, png: Path, *, chromium: str | None = None, budget_ms: int = 10000,
               timeout: float = 120.0) -> str | None:
    """Writes `png`; None when it worked, else why not."""
    exe = require_chromium(chromium)
    png.unlink(missing_ok=True)
    try:
        done = _run(exe, [f"--screenshot={png}"], url, budget_ms, timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if not png.exists():
        return f"chromium wrote no screenshot (exit {done.returncode}):\n{done.stderr.strip()[-1500:]}"
    return None


# --- reading a dumped DOM ---------------------------------------------------------------

@dataclass
class Page:
    """What a dumped DOM shows: its visible text and its links (href, text)."""
    text: str = ""
    links: list[tuple[str, str]] = field(default_factory=list)

    def link_texts(self, href: str) -> list[str]:
        return [t for h, t in self.links if h == href]


class _Reader(HTMLParser):
    _SKIP = {"script", "style", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.links: list[tuple[str, str]] = []
        self._open: list[tuple[str, list[str]]] = []  # <a> elements being read
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag == "a":
            self._open.append((dict(attrs).get("href") or "", []))

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag == "a" and self._open:
            href, words = self._open.pop()
            self.links.append((href, " ".join(" ".join(words).split())))

    def handle_data(self, data: str) -> None:
        if self._skipping:
            return
        self.parts.append(data)
        for _, words in self._open:
            words.append(data)


def read_page(dom: str) -> Page:
    reader = _Reader()
    reader.feed(dom)
    reader.close()
    return Page(text=" ".join(" ".join(reader.parts).split()), links=reader.links)


# --- page URLs --------------------------------------------------------------------------

def prefect_flow_run_url(cfg: StackConfig, flow_run_id: str) -> str:
    """The flow-run page of Prefect's default UI (opens on its Logs tab)."""
    return f"{cfg.prefect_ui_url}/runs/flow-run/{flow_run_id}"


def prefect_v2_flow_run_url(cfg: StackConfig, flow_run_id: str, tab: str = "Details") -> str:
    """A flow-run tab of Prefect's V2 UI (same server, under /v2), addressable by URL."""
    if tab not in PREFECT_V2_TABS:
        raise ValueError(f"tab must be one of {', '.join(PREFECT_V2_TABS)}, got {tab!r}")
    return f"{cfg.prefect_ui_url}/v2/runs/flow-run/{flow_run_id}?tab={tab}"


def prefect_v2_task_run_href(task_run_id: str) -> str:
    """How the V2 UI links a task run (relative href, as in the DOM)."""
    return f"/v2/runs/task-run/{task_run_id}"


def prefect_v2_artifact_href(key: str) -> str:
    """How the V2 UI links an artifact key (relative href, as in the DOM)."""
    return f"/v2/artifacts/key/{urllib.parse.quote(key)}"


def mlflow_runs_table_url(cfg: StackConfig, experiment_id: str | int,
                          order_by: str | None = None, ascending: bool = True) -> str:
    """The runs table; `order_by` (e.g. "attributes.run_name") other than start time lists
    child runs flat instead of nested under their parent."""
    url = cfg.mlflow_runs_url(experiment_id)
    if order_by is None:
        return url
    query = urllib.parse.urlencode({"orderByKey": order_by, "orderByAsc": str(ascending).lower()})
    return f"{url}?{query}"


def mlflow_run_href(experiment_id: str | int, run_id: str) -> str:
    """How the runs table links a run (relative hash route, as in the DOM)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"
