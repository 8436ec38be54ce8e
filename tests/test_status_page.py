"""The live status page (`--metrics`), in Debian's Chromium driven by Playwright.

Runs only where /usr/bin/chromium exists (Playwright's own browser download
is never used). The page is served by the supervisor, so it must keep
updating while the workers are killed or reloaded.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service import Services, free_port, wait_until

CHROMIUM = "/usr/bin/chromium"
SCRIPTS = Path(__file__).parent / "scripts"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed")

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture
def page() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            tab = context.new_page()
            tab.set_default_timeout(15_000)
            yield tab
        finally:
            browser.close()


def load(port: int, stop: threading.Event, sent: list[int]) -> None:
    """Keep-alive requests until `stop`, for at most 20 s."""
    deadline = time.monotonic() + 20
    with httpx.Client(timeout=5) as client:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                client.get(f"http://127.0.0.1:{port}/")
                sent[0] += 1
            except httpx.HTTPError:
                time.sleep(0.05)


def test_status_page_shows_workers_and_live_charts(
    services: Services, page: object, tmp_path: Path
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    port, mport = free_port(), free_port()
    service = services.squall(
        "tests.scripts.supervised:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--metrics",
        f"127.0.0.1:{mport}",
        "--workers",
        "2",
    )
    service.wait_for_port(port)
    service.wait_for_log("is ready", count=2)
    pids = sorted(service.workers())

    page.goto(f"http://127.0.0.1:{mport}/")
    expect(page.locator("#overall")).to_have_text("ready")
    rows = page.locator("#workers tr")
    expect(rows).to_have_count(2)
    assert sorted(int(pid) for pid in rows.evaluate_all("rs => rs.map(r => r.dataset.pid)")) == pids
    expect(rows.nth(0).locator("td").nth(2)).to_have_text("ready")
    expect(page.locator("#restarts")).to_contain_text("signal")

    # Load: the requests/s chart's newest sample goes above zero and its line changes.
    chart = page.locator("#rps-chart")
    path_before = chart.locator("path[data-series='rps']").get_attribute("d")
    stop = threading.Event()
    sent = [0]
    clients = [threading.Thread(target=load, args=(port, stop, sent)) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        page.wait_for_function(
            "() => Number(document.getElementById('rps-chart').dataset.last) > 0",
            timeout=15_000,
        )
        time.sleep(2.5)  # a few seconds of samples, for the picture
    finally:
        stop.set()
        for client in clients:
            client.join(30)
    assert sent[0] > 0
    assert chart.locator("path[data-series='rps']").get_attribute("d") != path_before
    last = float(chart.get_attribute("data-last") or 0)
    assert last > 0
    p99_path = page.locator("#latency-chart path[data-series='p99']").get_attribute("d")
    assert p99_path and p99_path.startswith("M")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#workers tr')]"
        ".every(r => Number(r.children[4].textContent.replace(/[^0-9.]/g, '')) >= 0)"
    )
    page.screenshot(path=str(tmp_path / "status_page_under_load.png"), full_page=True)

    # A crash: the page (served by the supervisor) keeps updating and shows the restart.
    updates = int(page.locator("body").get_attribute("data-updates") or 0)
    os.kill(pids[0], signal.SIGKILL)
    expect(page.locator("#restarts")).to_contain_text("signal1", timeout=10_000)
    wait_until(lambda: len(service.workers()) == 2, timeout=10)
    expect(rows).to_have_count(2, timeout=10_000)
    page.wait_for_function(
        f"() => Number(document.body.dataset.updates) > {updates + 2}", timeout=10_000
    )
    expect(page.locator("#link")).not_to_have_class("muted down")
    expect(page.locator("#events")).to_contain_text("killed by signal 9")
    screenshot = tmp_path / "status_page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
