"""Limits that protect the service: body size and pace, failed authentications, occupancy."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from fleet.errors import FleetError

WINDOW_SECONDS = 60.0
MAX_TRACKED_KEYS = 100_000


class PayloadTooLargeError(FleetError):
    """The request body exceeds the configured maximum (HTTP 413)."""


class RequestTimeoutError(FleetError):
    """The request body did not arrive in the time its length allows (HTTP 408)."""


class UploadAbortedError(FleetError):
    """The client closed the connection before its request body was complete."""


class RateLimitedError(FleetError):
    """Too many failed authentications with one credential from one source (HTTP 429)."""

    def __init__(self, message: str, *, retry_after: int, **context: object) -> None:
        super().__init__(message, retry_after=retry_after, **context)
        self.retry_after = retry_after


class ServerBusyError(FleetError):
    """More requests or connections at once than a configured bound (HTTP 503)."""


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """How large a request body may be and how fast it must arrive."""

    max_bytes: int
    timeout: float
    """Seconds allowed on top of the transfer time at *min_rate*."""
    min_rate: int
    """Bytes per second."""

    def seconds_for(self, length: int) -> float:
        return self.timeout + length / self.min_rate


async def read_body(request: web.Request, limits: BodyLimits) -> bytes:
    """The request body, refused before it is buffered when it is too large, and refused
    when it arrives slower than *limits* allow (a body of unknown length is given the time
    of the largest one)."""
    declared = request.content_length
    if declared is not None and declared > limits.max_bytes:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the limit of "
                                   f"{limits.max_bytes} bytes", size=declared)
    allowed = limits.seconds_for(limits.max_bytes if declared is None else declared)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(allowed):
            while chunk := await request.content.read(limits.max_bytes + 1 - size):
                size += len(chunk)
                if size > limits.max_bytes:
                    raise PayloadTooLargeError(
                        f"request body exceeds the limit of {limits.max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeoutError(
            f"request body incomplete after {allowed:g}s ({size} of "
            f"{'?' if declared is None else declared} bytes)", received=size) from None
    except (ConnectionError, RequestPayloadError):
        raise UploadAbortedError(f"connection closed during the upload ({size} of "
                                 f"{'?' if declared is None else declared} bytes)",
                                 received=size) from None
    return b"".join(chunks)


AuthKey = tuple[str, str | None]
"""Whose failures count together: (source address, token id or None)."""


class FailedAuthLimiter:
    """A sliding one-minute window of failed authentications per key.

    Once a key reaches *per_minute* failures its requests are refused with 429 until the
    oldest failure leaves the window. Memory is bounded: the least recently failing keys are
    forgotten first.
    """

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MAX_TRACKED_KEYS) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.max_keys = max_keys
        self._failures: OrderedDict[AuthKey, deque[float]] = OrderedDict()

    def check(self, key: AuthKey) -> None:
        """Raise RateLimitedError while *key* is over its budget."""
        failures = self._window(key)
        if failures is not None and len(failures) >= self.per_minute:
            retry_after = max(1, math.ceil(failures[0] + WINDOW_SECONDS - self.clock()))
            source, token_id = key
            credential = "this credential" if token_id is None else f"token {token_id}"
            raise RateLimitedError(
                f"too many failed authentications with {credential} from {source}; "
                f"retry in {retry_after}s", retry_after=retry_after, source=source,
                token_id=token_id)

    def record_failure(self, key: AuthKey) -> None:
        failures = self._window(key)
        if failures is None:
            failures = self._failures[key] = deque()
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        self._failures.move_to_end(key)
        failures.append(self.clock())

    def _window(self, key: AuthKey) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        horizon = self.clock() - WINDOW_SECONDS
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures


class Occupancy:
    """What is held at once (requests, connections), bounded in total and per source address.

    Beyond either bound the newcomer is shed, not queued. Only sources holding something are
    tracked, so memory is bounded by *total*.
    """

    def __init__(self, *, total: int, per_source: int, what: str) -> None:
        """*what* names the things held, as in "256 requests in progress"."""
        self.total = total
        self.per_source = per_source
        self.what = what
        self.count = 0
        self._by_source: Counter[str] = Counter()

    def enter(self, source: str) -> None:
        if self.count >= self.total:
            raise ServerBusyError(f"server busy: {self.total} {self.what}")
        if self._by_source[source] >= self.per_source:
            raise ServerBusyError(f"too many {self.what} from {source} (limit "
                                  f"{self.per_source}); retry later", source=source)
        self.count += 1
        self._by_source[source] += 1

    def leave(self, source: str) -> None:
        self.count -= 1
        self._by_source[source] -= 1
        if self._by_source[source] <= 0:
            del self._by_source[source]
