"""The dashboard page at ``/``: its HTML, its static files, the chart library and the operations summary.

A route module of the service (see ``dashboard.app.ROUTE_MODULES``); nothing
here reads the aggregates: the page asks the API like any other client.

Caching: our own files are served with an ETag and ``Cache-Control:
no-cache`` (kept by the browser, revalidated with a cheap 304, so a new
version is picked up at once); the chart library's URL carries its version
and is cached for a year.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import tornado.httpclient
import tornado.web

from dashboard.app import BaseHandler, Service
from dashboard.operations import Operations, OperationsConfig

STATIC_DIR = Path(__file__).parent / "static"


def plotly_js() -> Path:
    """plotly.min.js as shipped inside the ``plotly`` wheel (no CDN, no vendored copy)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall the plotly package (pip install plotly)")
    return path


def page_html() -> bytes:
    """index.html with the chart library's versioned URL written in."""
    import plotly

    html = (STATIC_DIR / "index.html").read_text("utf-8")
    return html.replace("/static/vendor/plotly.min.js",
                        f"/static/vendor/plotly-{plotly.__version__}.min.js").encode("utf-8")


class StaticHandler(tornado.web.StaticFileHandler):
    """Our files: always revalidated (ETag), so a deploy shows at once."""

    route_name = "static"

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")
        if path.endswith(".js"):
            self.set_header("Content-Type", "text/javascript; charset=utf-8")


class VendorHandler(tornado.web.StaticFileHandler):
    """The chart library: its version is in its URL, so the file never changes under a URL."""

    route_name = "static"

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "public, max-age=31536000, immutable")


class PageHandler(BaseHandler):
    """``/``: the page (ETag from its content, so a reload costs a 304)."""

    route_name = "page"

    def initialize(self, service: Service, html: bytes) -> None:
        super().initialize(service)
        self.html = html

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(self.html)


class OperationsHandler(BaseHandler):
    """``GET /operations/``: the operations summary as JSON (see :mod:`dashboard.operations`)."""

    route_name = "operations"

    def initialize(self, service: Service, operations: Operations) -> None:
        super().initialize(service)
        self.operations = operations

    async def get(self) -> None:
        metrics_text = None
        problems = []
        url = self.operations.config.receiver_url
        if url:
            metrics_url = url.rstrip("/") + "/metrics"
            try:
                response = await tornado.httpclient.AsyncHTTPClient().fetch(metrics_url, request_timeout=5)
                metrics_text = response.body.decode("utf-8", "replace")
            except Exception as e:  # noqa: BLE001 - a receiver that is down is news, not a 500
                problems.append(f"cannot read {metrics_url}: {e}")
        summary = await self.operations.summary_async(self.service.deps.db, metrics_text)
        summary["problems"][:0] = problems
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(orjson.dumps(summary))


def operations_config(service: Service) -> OperationsConfig:
    """The operations view's sources: as configured, else those of ``--pipeline-dir``'s layout."""
    c = service.config
    raw_logs, errors_dir = c.raw_logs, c.errors_dir
    if c.pipeline_dir:
        from converter.process import ERRORS_DIR
        from pipeline.datadir import DataDir

        data = DataDir(Path(c.pipeline_dir))
        raw_logs = raw_logs or str(data.raw)
        errors_dir = errors_dir or str(data.layout / ERRORS_DIR)
    return OperationsConfig(stats_log=c.stats_log, raw_logs=raw_logs, errors_dir=errors_dir,
                            receiver_url=c.receiver_url)


def routes(service: Service) -> list:
    return [
        (r"/", PageHandler, {"service": service, "html": page_html()}),
        (r"/static/vendor/plotly-[^/]+\.min\.js()", VendorHandler, {"path": str(plotly_js())}),
        (r"/static/(.*)", StaticHandler, {"path": str(STATIC_DIR)}),
        (r"/operations/", OperationsHandler,
         {"service": service, "operations": Operations(operations_config(service))}),
    ]
