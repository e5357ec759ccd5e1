"""``/api/``: a plain index of the API's endpoints (the dashboard page is at ``/``)."""

from __future__ import annotations

import html

from dashboard.app import BaseHandler, Service

ENDPOINTS = [
    ("/aggregates_by/{build_id|submission_date}/channels/", "channels with data"),
    ("/aggregates_by/{by}/channels/{channel}/dates/", "every (version, date) with data"),
    ("/filters/?channel=C&version=V", "filter options of a channel and version"),
    ("/aggregates_by/{by}/channels/{channel}/?version=V&dates=D1,D2&metric=M",
     "one metric's histograms per date (filters: application, architecture, os, osVersion, "
     "child, label)"),
    ("/metrics", "service counters (Prometheus text format)"),
]


class IndexHandler(BaseHandler):
    route_name = "index"

    def get(self) -> None:
        items = "".join(f"<li><code>{html.escape(path)}</code>: {html.escape(text)}</li>"
                        for path, text in ENDPOINTS)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish("<!doctype html><meta charset=utf-8><title>Telemetry aggregates</title>"
                    f"<h1>Telemetry aggregates API</h1><ul>{items}</ul>"
                    "<p>See docs/aggregates.md.</p>")


def routes(service: Service) -> list:
    return [(r"/api/", IndexHandler, {"service": service})]
