"""Run the service on a free loopback port in a thread of its own (tests, benchmarks, demos)."""

from __future__ import annotations

import asyncio
import threading
from typing import Callable

from dashboard.app import Deps, make_app
from dashboard.config import DashboardConfig, load_tokens


class ServiceThread:
    """``with ServiceThread(config, mongo_url) as s: requests.get(s.url + "/")``."""

    def __init__(self, config: DashboardConfig, mongo_url: str,
                 customize: Callable[[Deps], None] | None = None):
        self.config = config
        self.mongo_url = mongo_url
        self.customize = customize
        self.url = ""
        self.deps: Deps | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)

    def __enter__(self) -> "ServiceThread":
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported to the thread that waits in __enter__
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        from pymongo import AsyncMongoClient

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        client = AsyncMongoClient(self.mongo_url, serverSelectionTimeoutMS=3000)
        self.deps = Deps(client[self.config.database], load_tokens(self.config.tokens_file))
        if self.customize:
            self.customize(self.deps)
        app = make_app(self.config, self.deps)
        server = app.listen(0, "127.0.0.1")
        port = next(iter(server._sockets.values())).getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.stop()
            await server.close_all_connections()
            await client.close()
