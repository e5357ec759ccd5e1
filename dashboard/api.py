"""The JSON API of SPEC section 7, at python_mozaggregator's URLs.

Handlers only check the request and translate between HTTP and
:class:`~dashboard.reader.AggregatesReader`.
"""

from __future__ import annotations

import tornado.web
from pymongo.errors import PyMongoError

from aggregations.aggregates import ROW_DIMENSIONS
from dashboard.app import BaseHandler, Service
from dashboard.reader import NotFound

HISTOGRAM_PARAMS = ("version", "dates", "metric", *ROW_DIMENSIONS, "label")
REQUIRED = ("version", "dates", "metric")


class ApiHandler(BaseHandler):
    def check_channel(self, channel: str) -> None:
        """403 for a private channel without a valid token."""
        if self.service.is_private(channel) and not self.service.authorized(
                self.request.headers.get("Authorization")):
            raise tornado.web.HTTPError(403, "channel %s needs an authorization token", channel)

    def arg(self, name: str) -> str | None:
        value = self.get_query_argument(name, None)
        return value if value else None

    async def answer(self, call) -> None:
        try:
            value = await call
        except NotFound as e:
            raise tornado.web.HTTPError(404, "%s", str(e)) from None
        except PyMongoError as e:
            self.service.deps.metrics.mongo_errors += 1
            raise tornado.web.HTTPError(503, "the aggregates database is not available: %s",
                                        type(e).__name__) from None
        self.write_json(value)


class ChannelsHandler(ApiHandler):
    route_name = "channels"

    async def get(self, by: str) -> None:
        async def channels():
            names = await self.service.reader.channels(by)
            allowed = self.service.authorized(self.request.headers.get("Authorization"))
            return [c for c in names if allowed or not self.service.is_private(c)]
        await self.answer(channels())


class DatesHandler(ApiHandler):
    route_name = "dates"

    async def get(self, by: str, channel: str) -> None:
        self.check_channel(channel)
        await self.answer(self.service.reader.dates(by, channel))


class FiltersHandler(ApiHandler):
    route_name = "filters"

    async def get(self) -> None:
        channel, version = self.arg("channel"), self.arg("version")
        if channel is None or version is None:
            raise tornado.web.HTTPError(404, "filters need channel and version")
        self.check_channel(channel)
        await self.answer(self.service.reader.filters(channel, version))


class HistogramHandler(ApiHandler):
    route_name = "aggregates"

    async def get(self, by: str, channel: str) -> None:
        unknown = sorted(set(self.request.query_arguments) - set(HISTOGRAM_PARAMS))
        if unknown:
            raise tornado.web.HTTPError(405, "unknown query parameter %s", unknown[0][:100])
        args = {name: self.arg(name) for name in HISTOGRAM_PARAMS}
        missing = [name for name in REQUIRED if args[name] is None]
        if missing:
            raise tornado.web.HTTPError(404, "missing query parameter %s", missing[0])
        self.check_channel(channel)
        dates = [d for d in args["dates"].split(",") if d]
        if not dates:
            raise tornado.web.HTTPError(404, "no dates asked for")
        if len(dates) > self.service.config.max_dates:
            raise tornado.web.HTTPError(400, "more than %d dates", self.service.config.max_dates)
        filters = {name: args[name] for name in (*ROW_DIMENSIONS, "label")
                   if args[name] is not None}
        await self.answer(self.service.reader.histogram(
            by, channel, args["version"], dates, args["metric"], filters))


def routes(service: Service) -> list:
    a = {"service": service}
    return [
        (r"/aggregates_by/([^/]+)/channels/", ChannelsHandler, a),
        (r"/aggregates_by/([^/]+)/channels/([^/]+)/dates/", DatesHandler, a),
        (r"/aggregates_by/([^/]+)/channels/([^/]+)/", HistogramHandler, a),
        (r"/filters/", FiltersHandler, a),
    ]
