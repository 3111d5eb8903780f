"""Limits that protect the service: body size, failed authentications per source, load."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from aiohttp import web

from fleet.errors import FleetError

WINDOW_SECONDS = 60.0
MAX_TRACKED_SOURCES = 100_000


class PayloadTooLargeError(FleetError):
    """The request body exceeds the configured maximum (HTTP 413)."""


class RateLimitedError(FleetError):
    """Too many failed authentications from one source (HTTP 429)."""

    def __init__(self, message: str, *, retry_after: int, **context: object) -> None:
        super().__init__(message, retry_after=retry_after, **context)
        self.retry_after = retry_after


class ServerBusyError(FleetError):
    """More requests in flight than the configured bound (HTTP 503)."""


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The request body, refused before it is buffered when it is larger than *max_bytes*."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the limit of "
                                   f"{max_bytes} bytes", size=declared)
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(max_bytes + 1 - size):
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class FailedAuthLimiter:
    """A sliding one-minute window of failed authentications per source address.

    Once a source reaches *per_minute* failures its requests are refused with 429 until the
    oldest failure leaves the window. Memory is bounded: the least recently failing sources are
    forgotten first.
    """

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic,
                 max_sources: int = MAX_TRACKED_SOURCES) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.max_sources = max_sources
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, source: str) -> None:
        """Raise RateLimitedError while *source* is over its budget."""
        failures = self._window(source)
        if failures is not None and len(failures) >= self.per_minute:
            retry_after = max(1, math.ceil(failures[0] + WINDOW_SECONDS - self.clock()))
            raise RateLimitedError(
                f"too many failed authentications from {source}; retry in {retry_after}s",
                retry_after=retry_after, source=source)

    def record_failure(self, source: str) -> None:
        failures = self._window(source)
        if failures is None:
            failures = self._failures[source] = deque()
            while len(self._failures) > self.max_sources:
                self._failures.popitem(last=False)
        self._failures.move_to_end(source)
        failures.append(self.clock())

    def _window(self, source: str) -> deque[float] | None:
        failures = self._failures.get(source)
        if failures is None:
            return None
        horizon = self.clock() - WINDOW_SECONDS
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[source]
            return None
        return failures


class InFlight:
    """A bound on requests being served at once; beyond it requests are shed, not queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def enter(self) -> None:
        if self.count >= self.limit:
            raise ServerBusyError(f"server busy: {self.limit} requests in progress")
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
