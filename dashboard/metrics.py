"""``/metrics``: the service's counters in Prometheus' text format.

Requests are counted by route name and status, with their total duration;
the Mongo errors answered 503 are counted apart.  Other modules may add
their own lines through :meth:`Metrics.add_source` (the live pipeline does).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable

import tornado.web

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.requests: Counter = Counter()        # (route, status) -> requests
        self.seconds: Counter = Counter()         # route -> seconds spent
        self.mongo_errors = 0
        self._sources: list[Callable[[], str]] = []

    def observe(self, handler: tornado.web.RequestHandler) -> None:
        """Tornado's ``log_function``: called once per finished request."""
        route = getattr(handler, "route_name", type(handler).__name__)
        self.requests[(route, handler.get_status())] += 1
        self.seconds[route] += handler.request.request_time()

    def add_source(self, source: Callable[[], str]) -> None:
        """Another component's lines, appended to every answer."""
        self._sources.append(source)

    def render(self) -> str:
        lines = [
            "# HELP telemetry_dashboard_requests_total HTTP requests by route and status.",
            "# TYPE telemetry_dashboard_requests_total counter",
        ]
        for (route, status), n in sorted(self.requests.items()):
            lines.append(f'telemetry_dashboard_requests_total{{route="{route}",'
                         f'status="{status}"}} {n}')
        lines += [
            "# HELP telemetry_dashboard_request_seconds_total Time spent answering, by route.",
            "# TYPE telemetry_dashboard_request_seconds_total counter",
        ]
        for route, s in sorted(self.seconds.items()):
            lines.append(f'telemetry_dashboard_request_seconds_total{{route="{route}"}} {s:.6f}')
        lines += [
            "# HELP telemetry_dashboard_mongo_errors_total Requests that failed on MongoDB (503).",
            "# TYPE telemetry_dashboard_mongo_errors_total counter",
            f"telemetry_dashboard_mongo_errors_total {self.mongo_errors}",
            "# HELP telemetry_dashboard_start_time_seconds When the service started.",
            "# TYPE telemetry_dashboard_start_time_seconds gauge",
            f"telemetry_dashboard_start_time_seconds {self.started:.3f}",
        ]
        text = "\n".join(lines) + "\n"
        for source in self._sources:
            text += source()
        return text
