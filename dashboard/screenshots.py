"""Screenshots of each dashboard view, for docs/dashboard.md (``python -m dashboard.screenshots``).

Drives headless Chromium (Debian's, through Playwright: a dev dependency)
against a running ``telemetry dashboard``; the browser tests call
:func:`take` too, so the pictures in the docs come from the code the tests run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]

# file name -> the view's query string (metric and channel filled in by take())
VIEWS = {
    "distribution.png": "view=dist&compare=os",
    "distribution-table.png": "view=dist&cumulative=1&percent=1&table=1",
    "evolution.png": "view=evo&stats=p50|mean|p95",
    "evolution-boolean.png": "view=evo",
    "operations.png": "view=ops",
}


class NoChromium(Exception):
    """Debian's Chromium (or $CHROMIUM) is not there."""


def launch(playwright):
    """Headless Chromium, Debian's (or $CHROMIUM), never one Playwright downloads."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        raise NoChromium(f"no Chromium at {path}: install Debian's package (apt-get install -y chromium) "
                         "or set CHROMIUM to a Chromium binary")
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS, headless=True)


def wait_drawn(page, before: int = 0, timeout: float = 90_000) -> None:
    """Wait until the page has finished ``before + 1`` refreshes (drawn, empty or error)."""
    page.wait_for_function(f"window.__dashboard && window.__dashboard.done > {before}", timeout=timeout)


def take(browser, base_url: str, out_dir: str | os.PathLike, metric: str = "GC_MS",
         boolean_metric: str = "SHUTDOWN_OK", channel: str = "nightly", sanitize: int = 0) -> list[Path]:
    """One PNG per view in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    page = browser.new_page()   # a Browser or a BrowserContext
    page.set_viewport_size({"width": 1280, "height": 900})
    try:
        for name, query in VIEWS.items():
            m = boolean_metric if "boolean" in name else metric
            page.goto(f"{base_url}/?{query}&metric={m}&channel={channel}&sanitize={sanitize}",
                      wait_until="commit", timeout=90_000)
            wait_drawn(page)
            page.wait_for_timeout(300)   # let Plotly finish its transitions
            path = out / name
            page.screenshot(path=str(path), full_page=True)
            written.append(path)
    finally:
        page.close()
    return written


@click.command()
@click.option("--url", required=True, help="Where the dashboard runs, e.g. http://127.0.0.1:8000")
@click.option("--out", "out_dir", default="docs/img", show_default=True, type=click.Path(file_okay=False))
@click.option("--metric", default="GC_MS", show_default=True)
@click.option("--boolean-metric", default="SHUTDOWN_OK", show_default=True)
@click.option("--channel", default="nightly", show_default=True)
@click.option("--sanitize", default=0, show_default=True, help="Sanitize threshold used in the pictures.")
def main(url: str, out_dir: str, metric: str, boolean_metric: str, channel: str, sanitize: int) -> None:
    """Take a screenshot of each view of the dashboard at URL."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        try:
            browser = launch(p)
        except NoChromium as e:
            raise click.ClickException(str(e)) from None
        try:
            for written in take(browser, url.rstrip("/"), out_dir, metric, boolean_metric, channel, sanitize):
                click.echo(written)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
