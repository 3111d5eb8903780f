"""The broker's metrics and health, served over HTTP.

``GET /metrics`` is the Prometheus exposition of one broker's own registry (several brokers in
one process do not share counters); ``GET /healthz`` is JSON saying whether the broker can
confirm revocation state: 200 while its last successful revocation poll is younger than
``broker.revocation_max_staleness``, 503 once it is older (the broker then refuses new
connections, see fleet.authority.admission). Both listen on broker.host:broker.metrics_port;
0 picks a free port, -1 turns them off, and a port that cannot be bound stops the broker at
start.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fleet.errors import ConfigError
from fleet.metrics import MetricsServer

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


DROP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
"""Seconds from a revocation event's record to the drop of a connection it names: about the
poll interval (broker.revocation_poll_interval), longer while polls fail."""


class BrokerMetrics:
    """The broker's Prometheus metrics, in a registry of its own (fleet.metrics)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self._poll_age = Gauge(
            "fleet_broker_revocation_poll_age_seconds",
            "Seconds since the last successful poll of the revocation events.",
            registry=registry)
        self._poll_failures = Counter(
            "fleet_broker_revocation_poll_failures",
            "Revocation polls that failed, by exception type.", ["error"], registry=registry)
        self._drops = Counter(
            "fleet_broker_revocation_drops",
            "Live connections dropped for a revocation event, by event kind.", ["kind"],
            registry=registry)
        self._drop_latency = Histogram(
            "fleet_broker_revocation_drop_seconds",
            "From a revocation or suspension recorded in the registry to the drop of a live "
            "connection it names, by event kind.", ["kind"], buckets=DROP_BUCKETS,
            registry=registry)
        self._connections = Gauge(
            "fleet_broker_connections",
            "Open connections: pending (TLS handshake or CONNECT not yet admitted) or "
            "admitted.", ["state"], registry=registry)
        self._admitted = Counter(
            "fleet_broker_connects_admitted",
            "CONNECTs admitted, by identity kind (device or service).", ["kind"],
            registry=registry)
        self._refused = Counter(
            "fleet_broker_connects_refused",
            "CONNECTs refused, by CONNACK return code (none: closed without one) and the "
            "check that refused (an admission check of fleet diagnose, or protocol).",
            ["connack", "check"], registry=registry)
        self.handshakes_refused = Counter(
            "fleet_broker_handshakes_refused",
            "TLS connections refused before a CONNECT could be read (handshake failed or "
            "timed out, connection limits).", registry=registry)
        self.received = Counter(
            "fleet_broker_messages_received",
            "PUBLISH packets received from clients (denied ones included).", registry=registry)
        self.delivered = Counter(
            "fleet_broker_messages_delivered",
            "Messages written to subscribers' connections.", registry=registry)
        dropped = Counter(
            "fleet_broker_messages_dropped",
            "Messages dropped, by reason: denied (a PUBLISH the topic policy refuses), "
            "queue_full (beyond a subscriber's broker.max_queued_messages or "
            "max_queued_bytes).", ["reason"], registry=registry)
        self.dropped_denied = dropped.labels(reason="denied")
        self.dropped_queue_full = dropped.labels(reason="queue_full")
        self._denials = Counter(
            "fleet_broker_acl_denials",
            "Requests the topic policy refused, by action (publish, subscribe).", ["action"],
            registry=registry)
        self._audit_dropped = Counter(
            "fleet_broker_audit_events_dropped",
            "Audit events not written because the audit backlog was full, by action.",
            ["action"], registry=registry)

    def observe(self, *, poll_age: Callable[[], float], pending: Callable[[], float],
                admitted: Callable[[], float]) -> None:
        """Read these gauges from the running broker at each scrape."""
        self._poll_age.set_function(poll_age)
        self._connections.labels(state="pending").set_function(pending)
        self._connections.labels(state="admitted").set_function(admitted)

    def poll_failed(self, error: BaseException) -> None:
        self._poll_failures.labels(error=type(error).__name__).inc()

    def dropped(self, kind: str, count: int, *, latency: float | None = None) -> None:
        """*count* connections dropped for an event of *kind*, *latency* seconds after it was
        recorded (None: the drop was not the event's to time, as at a grace's end)."""
        if count:
            self._drops.labels(kind=kind).inc(count)
            if latency is not None:
                histogram = self._drop_latency.labels(kind=kind)
                for _ in range(count):
                    histogram.observe(latency)

    def admitted(self, kind: str) -> None:
        self._admitted.labels(kind=kind).inc()

    def refused(self, code: int | None, check: str) -> None:
        self._refused.labels(connack="none" if code is None else f"0x{code:02x}",
                             check=check).inc()

    def denied(self, action: str) -> None:
        self._denials.labels(action=action).inc()
        if action == "publish":
            self.dropped_denied.inc()

    def audit_dropped(self, action: str) -> None:
        self._audit_dropped.labels(action=action).inc()


def listening_socket(host: str, port: int) -> socket.socket:
    """The bound socket for /metrics and /healthz (port 0: a free one); a port in use is a
    ConfigError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(SETTING, f"{host}:{port}",
                          f"cannot listen: {exc.strerror or exc}") from None


class HealthServer(MetricsServer):
    """``/metrics`` and ``/healthz`` of one broker, on a socket bound by the caller."""

    def __init__(self, *, sock: socket.socket, metrics: BrokerMetrics,
                 health: Callable[[], Health]) -> None:
        super().__init__(sock=sock, registry=metrics.registry,
                         routes=[web.get("/healthz", self._serve_health)])
        self._health = health

    async def start(self) -> None:
        await super().start()
        log.info("broker metrics on %s/metrics, health on %s/healthz", self.url, self.url)

    async def _serve_health(self, _request: web.Request) -> web.Response:
        health = self._health()
        return web.json_response(asdict(health), status=200 if health.fresh else 503)
