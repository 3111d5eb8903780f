"""The EMQX revocation hook: kicks revoked and suspended identities off EMQX through its REST
API (``DELETE /api/v5/clients/{clientid}``, authenticated with an API key as HTTP Basic).

It follows the registry's revocation events (fleet.integrations.follower: every
``broker.revocation_poll_interval`` and at once when PostgreSQL announces one, starting after
the newest event) and turns each revoked or suspended device or certificate into the client
id to kick: a device's id, or the name of the service a certificate belongs to. Kicks wait in
a bounded queue: when it is full the follower waits and does not move past the event, so
none is lost, only delayed. Each kick is retried with a doubling backoff while EMQX answers
5xx or 429 or cannot be reached, up to ``max_attempts``; 404 means the client is not
connected (nothing to do); another 4xx (a wrong API key, say) is logged and not retried.

A kick only ends the live session: the client's next CONNECT is decided again by Fleet
(``POST /emqx/authn``), which refuses a revoked or suspended identity.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from fleet.authority.admission import AdmissionPolicy
from fleet.errors import FleetError
from fleet.integrations.follower import RevocationFollower
from fleet.registry import certificates as certs_db
from fleet.registry.engine import session as new_session
from fleet.registry.engine import unavailable_as_error
from fleet.registry.models import RevocationEvent

log = logging.getLogger(__name__)

KICKED_KINDS = ("revoked", "suspended")
CLIENTS_PATH = "/api/v5/clients/"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An EMQX API key and its secret (sent as HTTP Basic; never logged)."""

    key: str
    secret: str

    def __repr__(self) -> str:
        return f"ApiKey(key={self.key!r}, secret=<hidden>)"

    def authorization(self) -> str:
        """The HTTP Basic ``Authorization`` value (RFC 7617)."""
        return "Basic " + base64.b64encode(f"{self.key}:{self.secret}".encode()).decode()

    @classmethod
    def parse(cls, text: str) -> ApiKey:
        """``KEY:SECRET``, as EMQX shows a new API key."""
        key, colon, secret = text.strip().partition(":")
        if not colon or not key or not secret:
            raise FleetError("an EMQX API key is written KEY:SECRET")
        return cls(key, secret)


@dataclass(frozen=True, slots=True)
class Retry:
    max_attempts: int = 8
    first_delay: float = 0.1
    max_delay: float = 5.0

    def delay(self, attempt: int) -> float:
        return float(min(self.first_delay * 2 ** (attempt - 1), self.max_delay))


class EmqxKicker:
    """Follows the revocation events and kicks the client ids they name."""

    def __init__(self, *, authority: AdmissionPolicy, api_url: str, api_key: ApiKey,
                 ssl_context: ssl.SSLContext | None = None, poll_interval: float | None = None,
                 queue_size: int = 1000, senders: int = 4, retry: Retry = Retry()) -> None:
        self._authority = authority
        self._base = api_url.rstrip("/") + CLIENTS_PATH
        self._headers = {"Authorization": api_key.authorization()}
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self.follower = RevocationFollower(authority=authority, handle=self._queue_kicks,
                                           name="EMQX kick hook", interval=poll_interval)
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self._senders = senders
        self._retry = retry
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.kicked = 0
        """Kicks EMQX confirmed (2xx) or found nothing to kick (404)."""
        self.failed = 0
        """Kicks given up on."""

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._tasks = [asyncio.create_task(self._send(), name=f"emqx-kick-send-{n}")
                       for n in range(self._senders)]
        await self.follower.start()

    async def close(self) -> None:
        await self.follower.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- following the registry -------------------------------------------------------------

    async def _queue_kicks(self, event: RevocationEvent) -> None:
        """Queue the kicks of *event*, waiting while the queue is full (the follower moves
        past the event once they are queued)."""
        for client_id in await asyncio.to_thread(self.client_ids, event):
            await self._queue.put(client_id)

    def client_ids(self, event: RevocationEvent) -> Sequence[str]:
        """The client ids *event* kicks off EMQX (blocking: may ask the registry)."""
        if event.kind not in KICKED_KINDS:
            return ()
        if event.device_id:
            return (event.device_id,)
        if not event.serial:
            return ()
        with unavailable_as_error(), new_session(self._authority.engine) as session:
            row = certs_db.get_certificate(session=session, serial=event.serial)
        owner = row.device_id or row.service if row is not None else None
        return (owner,) if owner else ()

    # -- kicking ----------------------------------------------------------------------------

    async def _send(self) -> None:
        while True:
            client_id = await self._queue.get()
            try:
                await self.kick(client_id)
            finally:
                self._queue.task_done()

    async def kick(self, client_id: str) -> bool:
        """Kick one client id, with retries; True once EMQX has no session of it."""
        assert self._session is not None, "start() first"
        url = self._base + quote(client_id, safe="")
        for attempt in range(1, self._retry.max_attempts + 1):
            try:
                async with self._session.delete(url, headers=self._headers,
                                                ssl=self._ssl) as reply:
                    status = reply.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if status < 300 or status == 404:
                    self.kicked += 1
                    log.info("EMQX kick of %r: %s", client_id,
                             "not connected" if status == 404 else "done")
                    return True
                if status < 500 and status != 429:
                    self.failed += 1
                    log.error("EMQX refused the kick of %r with %d; check the API key and "
                              "URL", client_id, status)
                    return False
                problem = f"HTTP {status}"
            if attempt < self._retry.max_attempts:
                delay = self._retry.delay(attempt)
                log.warning("EMQX kick of %r failed (%s), attempt %d, retrying in %gs",
                            client_id, problem, attempt, delay)
                await asyncio.sleep(delay)
        self.failed += 1
        log.error("EMQX kick of %r given up after %d attempts", client_id,
                  self._retry.max_attempts)
        return False

    async def drain(self) -> None:
        """Wait until every queued kick is done."""
        await self._queue.join()
