"""The dashboard page: its HTML, its static files, the chart library and the operations summary.

Added to the API server's application by :func:`routes`; nothing here talks
to the aggregates, the page reads them through the API like any client.

Caching: our own files are served with an ETag and ``Cache-Control:
no-cache`` (kept by the browser, revalidated with a cheap 304, so a new
version is picked up at once); the chart library's URL carries its version
and is cached for a year.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tornado.httpclient
import tornado.web

from dashboard.operations import Operations, OperationsConfig

STATIC_DIR = Path(__file__).parent / "static"


def plotly_js() -> Path:
    """plotly.min.js as shipped inside the ``plotly`` wheel (no CDN, no vendored copy)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall the plotly package (pip install plotly)")
    return path


class StaticHandler(tornado.web.StaticFileHandler):
    """Our files: always revalidated (ETag), so a deploy shows at once."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")
        if path.endswith(".js"):
            self.set_header("Content-Type", "text/javascript; charset=utf-8")


class VendorHandler(tornado.web.StaticFileHandler):
    """The chart library: its version is in the page's URL for it, so it never changes under a URL."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "public, max-age=31536000, immutable")


class PageHandler(tornado.web.RequestHandler):
    """``/``: the page (with the chart library's versioned URL written in)."""

    def initialize(self, html: bytes) -> None:
        self.html = html

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.write(self.html)


class OperationsHandler(tornado.web.RequestHandler):
    """``GET /operations/``: the operations summary as JSON."""

    def initialize(self, operations: Operations, database: Any = None) -> None:
        self.operations = operations
        self.database = database

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Access-Control-Allow-Origin", "*")

    async def get(self) -> None:
        metrics_text = None
        problems = []
        url = self.operations.config.receiver_url
        if url:
            try:
                response = await tornado.httpclient.AsyncHTTPClient().fetch(
                    url.rstrip("/") + "/metrics", request_timeout=5)
                metrics_text = response.body.decode("utf-8", "replace")
            except Exception as e:  # noqa: BLE001 - a receiver that is down is news, not a 500
                problems.append(f"cannot read {url.rstrip('/')}/metrics: {e}")
        summary = await self.operations.summary_async(self.database, metrics_text)
        summary["problems"][:0] = problems
        self.write(summary)


def page_html() -> bytes:
    import plotly

    html = (STATIC_DIR / "index.html").read_text("utf-8")
    return html.replace("/static/vendor/plotly.min.js",
                        f"/static/vendor/plotly-{plotly.__version__}.min.js").encode("utf-8")


def routes(operations: OperationsConfig | None = None, database: Any = None) -> list[tuple]:
    """The page's URL rules, to add to the API server's application.

    ``database`` is a PyMongo ``AsyncDatabase`` that holds the importer's
    ``imports`` collection, for the operations view.
    """
    vendor = plotly_js()
    return [
        (r"/", PageHandler, {"html": page_html()}),
        (r"/static/vendor/plotly-[^/]+\.min\.js()", VendorHandler,
         {"path": str(vendor), "default_filename": None}),
        (r"/static/(.*)", StaticHandler, {"path": str(STATIC_DIR)}),
        (r"/operations/", OperationsHandler,
         {"operations": Operations(operations or OperationsConfig()), "database": database}),
    ]
