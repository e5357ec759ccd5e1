"""``/metrics`` route (the counters themselves are in :mod:`dashboard.metrics`)."""

from __future__ import annotations

from dashboard.app import BaseHandler, Service
from dashboard.metrics import CONTENT_TYPE


class MetricsHandler(BaseHandler):
    route_name = "metrics"

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE)
        self.set_header("Cache-Control", "no-store")
        self.finish(self.service.deps.metrics.render())


def routes(service: Service) -> list:
    return [(r"/metrics", MetricsHandler, {"service": service})]
