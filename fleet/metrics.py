"""The services' Prometheus metrics (prometheus-client): where a scrape reads them, and
``GET /metrics`` over HTTP.

Each service keeps its metrics in a CollectorRegistry of its own (two brokers or EST services
in one process do not share counters). ``fleet serve est --workers N`` runs in
prometheus-client's multiprocess mode: the parent makes a fresh directory, names it in
``PROMETHEUS_MULTIPROC_DIR`` for the workers it starts (which write their counters and
histograms there) and removes it when they have stopped; every worker serves ``/metrics`` on
the one metrics port (SO_REUSEPORT), summing the files of all of them, so whichever worker a
scrape reaches answers for the whole service.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_PATH = "/metrics"


@contextmanager
def multiprocess_dir() -> Iterator[Path]:
    """A fresh directory for the metric files of the worker processes started inside the
    block (named to them in PROMETHEUS_MULTIPROC_DIR), removed at its end."""
    path = Path(tempfile.mkdtemp(prefix="fleet-metrics-"))
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


def scraped(own: CollectorRegistry, *at_scrape: Collector) -> CollectorRegistry:
    """What a scrape of this process reads: *own* registry, or in multiprocess mode the files
    of every worker summed; and the *at_scrape* collectors (read when scraped, not stored)."""
    path = os.environ.get(MULTIPROC_ENV)
    registry = own
    if path is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    for collector in at_scrape:
        registry.register(collector)
    return registry


class MetricsServer:
    """``GET /metrics`` of *registry* (and the extra *routes*) on a socket bound by the caller;
    *before_scrape* is awaited before each scrape (to refresh what is read at scrape)."""

    def __init__(self, *, sock: socket.socket, registry: CollectorRegistry,
                 routes: list[web.RouteDef] | None = None,
                 before_scrape: Callable[[], Awaitable[None]] | None = None) -> None:
        self._sock = sock
        self._registry = registry
        self._before_scrape = before_scrape
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._serve)
        app.add_routes(routes or [])
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)

    @property
    def port(self) -> int:
        port: int = self._sock.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the bound socket."""
        host = self._sock.getsockname()[0]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        try:
            await web.SockSite(self._runner, self._sock).start()
        except BaseException:
            await self._runner.cleanup()
            raise

    async def close(self) -> None:
        await self._runner.cleanup()
        self._sock.close()

    async def _serve(self, request: web.Request) -> web.Response:
        if self._before_scrape is not None:
            await self._before_scrape()
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self._registry), headers={"Content-Type": content_type})
