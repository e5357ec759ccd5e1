"""The Tornado application: ``make_app(config, deps)`` for ``main`` and tests alike.

Routes come from a list of modules (:data:`ROUTE_MODULES`), each with a
``routes(service) -> list`` function, so pages are added as modules of their
own without touching the API.  Every handler derives from
:class:`BaseHandler`, which gives every answer, errors and 404s included, the
CORS headers the dashboard needs and a JSON error body, and turns a MongoDB
failure into a 503 instead of a 500.
"""

from __future__ import annotations

import hmac
import importlib
from dataclasses import dataclass, field
from typing import Any

import orjson
import tornado.web

from dashboard.config import DashboardConfig, load_tokens
from dashboard.metrics import Metrics
from dashboard.reader import AggregatesReader

ROUTE_MODULES = ["dashboard.api", "dashboard.index", "dashboard.metrics_page", "dashboard.page"]


@dataclass
class Deps:
    """What the service is given rather than makes: the database (an ``AsyncDatabase``)."""

    db: Any
    tokens: frozenset[str] = frozenset()
    metrics: Metrics = field(default_factory=Metrics)


@dataclass
class Service:
    """What handlers reach through ``self.service``."""

    config: DashboardConfig
    deps: Deps
    reader: AggregatesReader

    def authorized(self, header: str | None) -> bool:
        """True for ``Authorization: Bearer <token>`` with a configured token."""
        if not header or not header.startswith("Bearer "):
            return False
        given = header[len("Bearer "):].strip().encode("utf-8", "surrogateescape")
        return any(hmac.compare_digest(given, t.encode()) for t in self.deps.tokens)

    def is_private(self, channel: str) -> bool:
        return channel in self.config.private_channels


class BaseHandler(tornado.web.RequestHandler):
    """CORS on every answer, JSON errors, 204 for preflights, 503 when MongoDB fails."""

    route_name = "other"
    service: Service

    def initialize(self, service: Service) -> None:
        self.service = service

    def set_default_headers(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin:
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")
        else:
            self.set_header("Access-Control-Allow-Origin", "*")

    def options(self, *args: Any) -> None:
        self.set_header("Access-Control-Allow-Methods", "GET")
        self.set_header("Access-Control-Allow-Headers", "Authorization")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)
        self.finish()

    def write_json(self, value: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        cache = "private" if self.request.headers.get("Authorization") else "public"
        self.set_header("Cache-Control", f"{cache}, max-age={self.service.config.max_age}")
        vary = "Origin, Authorization" if self.request.headers.get("Origin") else "Authorization"
        self.set_header("Vary", vary)
        self.finish(orjson.dumps(value))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self._reason
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            reason = exc.log_message % exc.args if exc.args else exc.log_message
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(orjson.dumps({"code": status_code, "description": reason}))


class NotFoundHandler(BaseHandler):
    route_name = "not_found"

    def prepare(self) -> None:
        if self.request.method != "OPTIONS":
            raise tornado.web.HTTPError(404, "no such endpoint")


def make_app(config: DashboardConfig, deps: Deps) -> tornado.web.Application:
    """The application with every route module's routes, for ``config`` and ``deps``."""
    service = Service(config, deps, AggregatesReader(deps.db))
    routes: list = []
    for name in ROUTE_MODULES:
        routes += importlib.import_module(name).routes(service)
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args={"service": service},
        log_function=deps.metrics.observe,
        compress_response=True,
    )


def make_deps(config: DashboardConfig, url: str) -> Deps:
    """Deps for a running service: an ``AsyncMongoClient`` on ``url``, tokens from their file."""
    from pymongo import AsyncMongoClient

    client = AsyncMongoClient(url, serverSelectionTimeoutMS=config.mongo_timeout_ms,
                              tz_aware=True)
    deps = Deps(client[config.database], load_tokens(config.tokens_file))
    if config.pipeline_dir:
        from pipeline.health import metrics_source

        deps.metrics.add_source(metrics_source(config.pipeline_dir))
    return deps
