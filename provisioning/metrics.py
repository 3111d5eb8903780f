"""The EST service's Prometheus metrics (fleet.metrics), served on a loopback-only port.

Counted per request: requests by operation and HTTP status, their latency, and the outcome of
each enrollment and renewal. Read from the registry when scraped, at most once per
``REGISTRY_REFRESH`` seconds whatever the scrape rate (fleet.health.gauges, two aggregate
queries): the earliest expiry of a current certificate and the unused tokens of each group.
With ``--workers N`` the counters of every worker are summed (fleet.metrics).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from fleet import health
from fleet.errors import FleetError
from fleet.registry.engine import session as new_session
from fleet.registry.engine import unavailable_as_error
from fleet.registry.models import utcnow

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ENROLLMENTS = ("simpleenroll", "simplereenroll")
REGISTRY_REFRESH = 15.0
"""Seconds a reading of the registry serves scrapes before it is read again."""

log = logging.getLogger("provisioning")


def outcome(status: int) -> str:
    """An enrollment's outcome by its HTTP status."""
    if status == 200:
        return "issued"
    if status == 503:
        return "unavailable"
    return "refused" if status < 500 else "failed"


class Metrics:
    """The metrics of one EST service (each worker process counts its own; a scrape in
    multiprocess mode sums them)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self._requests = Counter(
            "fleet_est_requests", "EST requests by operation and HTTP status.",
            ["operation", "status"], registry=registry)
        self._latency = Histogram(
            "fleet_est_request_seconds", "Time to answer an EST request, by operation.",
            ["operation"], buckets=LATENCY_BUCKETS, registry=registry)
        self._enrollments = Counter(
            "fleet_est_enrollments",
            "Enrollments (simpleenroll) and renewals (simplereenroll) by outcome: issued, "
            "refused (4xx), unavailable (503: registry or load) or failed (other 5xx).",
            ["operation", "outcome"], registry=registry)
        self.registry_state = RegistryState()

    def observe(self, operation: str, status: int, seconds: float) -> None:
        self._requests.labels(operation=operation, status=str(status)).inc()
        self._latency.labels(operation=operation).observe(seconds)
        if operation in ENROLLMENTS:
            self._enrollments.labels(operation=operation, outcome=outcome(status)).inc()


Call = Callable[..., Awaitable[Any]]


class RegistryState:
    """The gauges read from the registry, refreshed before a scrape when older than
    REGISTRY_REFRESH; a registry that cannot be read leaves the last reading in place."""

    def __init__(self) -> None:
        self._gauges: health.Gauges | None = None
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self, call: Call, engine: Any) -> None:
        async with self._lock:
            if time.monotonic() - self._read_at < REGISTRY_REFRESH:
                return
            try:
                self._gauges = await call(_read, engine)
            except FleetError as error:
                log.warning("metrics: cannot read the registry: %s", error.message)
            self._read_at = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "fleet_certificate_earliest_expiry_timestamp_seconds",
            "Unix time of the soonest expiry of a current (active, unexpired) certificate.")
        tokens = GaugeMetricFamily(
            "fleet_tokens_unused", "Live bootstrap tokens no device has used, by group.",
            labels=["group"])
        gauges = self._gauges
        if gauges is not None:
            if gauges.earliest_expiry is not None:
                expiry.add_metric([], gauges.earliest_expiry.timestamp())
            for group, count in sorted(gauges.unused_tokens.items()):
                tokens.add_metric([group], count)
        yield expiry
        yield tokens


def _read(engine: Any) -> health.Gauges:
    with unavailable_as_error(), new_session(engine) as session:
        return health.gauges(session, now=utcnow())
