"""The broker's metrics and health, served over HTTP.

``GET /metrics`` is the Prometheus exposition of one broker's own registry (several brokers in
one process do not share counters); ``GET /healthz`` is JSON saying whether the broker can
confirm revocation state: 200 while its last successful revocation poll is younger than
``broker.revocation_max_staleness``, 503 once it is older (the broker then refuses new
connections, see fleet.authority.admission). Both listen on broker.host:broker.metrics_port;
0 turns them off, and a port that cannot be bound stops the broker at start.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import choose_encoder

from fleet.errors import ConfigError

log = logging.getLogger(__name__)

SETTING = "broker.metrics_port"


@dataclass(frozen=True, slots=True)
class Health:
    """What ``/healthz`` answers."""

    status: str
    """"ok", or "stale": revocation state unconfirmed for longer than the limit."""
    revocation_poll_age_seconds: float
    revocation_max_staleness_seconds: float
    revocation_poll_failures: int
    """Failed polls since the last successful one."""
    last_poll_error: str | None
    detail: str | None = None

    @property
    def fresh(self) -> bool:
        return self.status == "ok"


class BrokerMetrics:
    """The broker's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._poll_age = Gauge(
            "fleet_broker_revocation_poll_age_seconds",
            "Seconds since the last successful poll of the revocation events.",
            registry=self.registry)
        self._poll_failures = Counter(
            "fleet_broker_revocation_poll_failures",
            "Revocation polls that failed, by exception type.", ["error"],
            registry=self.registry)
        self._drops = Counter(
            "fleet_broker_revocation_drops",
            "Live connections dropped for a revocation event, by event kind.", ["kind"],
            registry=self.registry)
        self._connections = Gauge(
            "fleet_broker_connections_open",
            "Connections past their TLS handshake, admitted or being admitted.",
            registry=self.registry)
        self._refused = Counter(
            "fleet_broker_connects_refused",
            "CONNECTs refused, by CONNACK return code (none: closed without one).",
            ["connack"], registry=self.registry)
        self._audit_dropped = Counter(
            "fleet_broker_audit_events_dropped",
            "Audit events not written because the audit backlog was full, by action.",
            ["action"], registry=self.registry)

    def observe(self, *, poll_age: Callable[[], float],
                connections_open: Callable[[], float]) -> None:
        """Read these gauges from the running broker at each scrape."""
        self._poll_age.set_function(poll_age)
        self._connections.set_function(connections_open)

    def poll_failed(self, error: BaseException) -> None:
        self._poll_failures.labels(error=type(error).__name__).inc()

    def dropped(self, kind: str, count: int) -> None:
        if count:
            self._drops.labels(kind=kind).inc(count)

    def refused(self, code: int | None) -> None:
        self._refused.labels(connack="none" if code is None else f"0x{code:02x}").inc()

    def audit_dropped(self, action: str) -> None:
        self._audit_dropped.labels(action=action).inc()


def listening_socket(host: str, port: int) -> socket.socket:
    """The bound socket for /metrics and /healthz; a port in use is a ConfigError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(SETTING, f"{host}:{port}",
                          f"cannot listen: {exc.strerror or exc}") from None


class HealthServer:
    """``/metrics`` and ``/healthz`` of one broker, on a socket bound by the caller."""

    def __init__(self, *, sock: socket.socket, metrics: BrokerMetrics,
                 health: Callable[[], Health]) -> None:
        self._sock = sock
        self._metrics = metrics
        self._health = health
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._serve_health)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)

    @property
    def url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    @property
    def port(self) -> int:
        port: int = self._sock.getsockname()[1]
        return port

    async def start(self) -> None:
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()
        log.info("broker metrics on %s/metrics, health on %s/healthz", self.url, self.url)

    async def close(self) -> None:
        await self._runner.cleanup()
        self._sock.close()

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self._metrics.registry),
                            headers={"Content-Type": content_type})

    async def _serve_health(self, _request: web.Request) -> web.Response:
        health = self._health()
        return web.json_response(asdict(health), status=200 if health.fresh else 503)
