"""Fixtures for the real-browser test: a JupyterLab server, headless Chromium through Playwright, and a page that
records console errors and leaves a screenshot in test-results/ when its test fails.

Without /usr/bin/chromium or the playwright package the browser tests skip, so `make test` passes on a laptop
that has neither; CI installs both (.ci/run)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_lab import CHROMIUM, LAUNCH_ARGS, LabServer

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "test-results"  # git-ignored
collect_ignore_glob = ["*.ipynb"]  # the demo notebook is driven by the tests here, not collected by nbval


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)  # the page fixture reads it to decide on a screenshot
    return report


@pytest.fixture(scope="session")
def chromium():
    """Headless Chromium, or a skip naming what is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium); CI runs this test")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is missing (pip install -r requirements-dev.txt); CI runs this test")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def lab(chromium, tmp_path_factory):
    """JupyterLab serving a fresh temporary directory; stopped (with its kernels) after the module."""
    server = LabServer(tmp_path_factory.mktemp("lab-root"), tmp_path_factory.mktemp("lab-state"))
    yield server
    server.stop()


@pytest.fixture
def page(chromium, request):
    """A new browser page; `page.console_errors` collects console errors and uncaught exceptions, except failed
    loads of resources outside the local server (badge images need internet), kept in `page.offline_errors`."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.console_errors, pg.offline_errors = [], []

    def on_console(msg):
        if msg.type != "error":
            return
        url = (msg.location or {}).get("url", "")
        if msg.text.startswith("Failed to load resource") and not url.startswith("http://127.0.0.1"):
            pg.offline_errors.append(f"{msg.text} ({url})")  # e.g. a Colab badge image: CI has no internet
        else:
            pg.console_errors.append(f"{msg.text} ({url})" if url else msg.text)

    pg.on("console", on_console)
    pg.on("pageerror", lambda err: pg.console_errors.append(f"uncaught: {err}"))
    yield pg
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        RESULTS.mkdir(exist_ok=True)
        stem = re.sub(r"[^\w.-]+", "_", request.node.nodeid)
        try:
            pg.screenshot(path=str(RESULTS / f"{stem}.png"), full_page=True)
        except Exception as err:  # noqa: BLE001 - a failed screenshot must not hide the test's own failure
            print(f"screenshot failed: {err}")
        (RESULTS / f"{stem}.console.txt").write_text("\n".join(pg.console_errors + pg.offline_errors),
                                                      encoding="utf-8")
    context.close()
