"""What the revocation hooks of other brokers share (``fleet serve emqx-kick``, ``fleet serve
rabbitmq-close``, ``fleet serve mosquitto-kick``): following the revocation events, a bounded
queue of identities to act on, a few senders working it, and HTTP calls retried with backoff.

The follower (fleet.integrations.follower) turns each revoked or suspended device or
certificate into the identity the other broker knows the client by: a device's id, or the
name of the service a certificate belongs to. The identities wait in a bounded queue: when it
is full the follower waits and does not move past the event, so none is lost, only delayed.
A hook's :meth:`Hook.act` ends the identity's sessions on its broker, over whatever
connection the hook opens (:meth:`Hook.open`). The HTTP hooks (:class:`RevocationHook`) call
the broker's API (:meth:`RevocationHook.request`), retried with a doubling backoff while the
broker answers 5xx or 429 or cannot be reached, up to ``max_attempts``; any other answer is
the hook's to read.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from fleet.authority.admission import AdmissionPolicy
from fleet.errors import FleetError
from fleet.integrations.follower import RevocationFollower
from fleet.registry import certificates as certs_db
from fleet.registry.engine import session as new_session
from fleet.registry.engine import unavailable_as_error
from fleet.registry.models import RevocationEvent
from fleet.tasks import cancel

log = logging.getLogger(__name__)

ACTED_ON_KINDS = ("revoked", "suspended")


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user (or API key) and its secret, sent as HTTP Basic; never logged."""

    user: str
    secret: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}(user={self.user!r}, secret=<hidden>)"

    def authorization(self) -> str:
        """The HTTP Basic ``Authorization`` value (RFC 7617)."""
        return "Basic " + base64.b64encode(f"{self.user}:{self.secret}".encode()).decode()

    @classmethod
    def parse(cls, text: str, *, what: str, form: str = "USER:SECRET") -> Credentials:
        """``USER:SECRET`` (*what* and *form* name the credentials in the error)."""
        user, colon, secret = text.strip().partition(":")
        if not colon or not user or not secret:
            raise FleetError(f"{what} is written {form}")
        return cls(user, secret)


@dataclass(frozen=True, slots=True)
class Retry:
    max_attempts: int = 8
    first_delay: float = 0.1
    max_delay: float = 5.0

    def delay(self, attempt: int) -> float:
        return float(min(self.first_delay * 2 ** (attempt - 1), self.max_delay))


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> object:
        """The body as JSON (FleetError when it is not)."""
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FleetError(f"the answer is not JSON: {exc}") from None


class Hook:
    """Follows the revocation events and hands each identity they name to :meth:`act`."""

    what = "revocation hook"
    """Who acts, in the logs."""

    def __init__(self, *, authority: AdmissionPolicy, poll_interval: float | None = None,
                 queue_size: int = 1000, senders: int = 4, retry: Retry | None = None) -> None:
        self._authority = authority
        self.follower = RevocationFollower(authority=authority, handle=self._queue_identities,
                                           name=self.what, interval=poll_interval)
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self._senders = senders
        self._retry = retry or Retry()
        self._tasks: list[asyncio.Task[None]] = []
        self._again: set[asyncio.Task[None]] = set()
        self.done = 0
        """Identities the broker confirmed it holds no session of any more."""
        self.failed = 0
        """Identities given up on."""

    async def start(self) -> None:
        await self.open()
        self._tasks = [asyncio.create_task(self._send(), name=f"{self.what}-send-{n}")
                       for n in range(self._senders)]
        await self.follower.start()

    async def close(self) -> None:
        await self.follower.close()
        await cancel(*self._tasks, *self._again)
        self._tasks = []
        await self.shut()

    async def open(self) -> None:
        """Open what :meth:`act` talks to the broker over (nothing here)."""

    async def shut(self) -> None:
        """Close what :meth:`open` opened."""

    async def drain(self) -> None:
        """Wait until every queued identity is done."""
        await self._queue.join()

    # -- following the registry -------------------------------------------------------------

    async def _queue_identities(self, event: RevocationEvent) -> None:
        """Queue the identities of *event*, waiting while the queue is full (the follower
        moves past the event once they are queued)."""
        for identity in await asyncio.to_thread(self.identities, event):
            await self._queue.put(identity)

    def identities(self, event: RevocationEvent) -> Sequence[str]:
        """The identities whose sessions *event* ends (blocking: may ask the registry)."""
        if event.kind not in ACTED_ON_KINDS:
            return ()
        if event.device_id:
            return (event.device_id,)
        if not event.serial:
            return ()
        with unavailable_as_error(), new_session(self._authority.engine) as session:
            row = certs_db.get_certificate(session=session, serial=event.serial)
        owner = row.device_id or row.service if row is not None else None
        return (owner,) if owner else ()

    # -- acting -----------------------------------------------------------------------------

    async def _send(self) -> None:
        while True:
            identity = await self._queue.get()
            try:
                if await self.act(identity):
                    self.done += 1
                else:
                    self.failed += 1
            except Exception:  # one identity's trouble never stops the sender
                self.failed += 1
                log.exception("%s: acting on %r failed", self.what, identity)
            finally:
                self._queue.task_done()

    async def act(self, identity: str) -> bool:
        """End *identity*'s sessions on the broker; True once it holds none."""
        raise NotImplementedError

    def once_more(self, identity: str, action: Callable[[str], Awaitable[bool]], *,
              after: float) -> None:
        """Run *action* on *identity* once more *after* seconds from now, in the background
        (:meth:`close` cancels it), for a session that reconnected before the broker refused
        *identity*."""
        task = asyncio.create_task(self._run_once_more(identity, action, after),
                                   name=f"{self.what}-again")
        self._again.add(task)
        task.add_done_callback(self._again.discard)

    async def _run_once_more(self, identity: str, action: Callable[[str], Awaitable[bool]],
                           after: float) -> None:
        await asyncio.sleep(after)
        try:
            if await action(identity):
                return
            log.error("%s: acting on %r once more failed", self.what, identity)
        except Exception:
            log.exception("%s: acting on %r once more failed", self.what, identity)


class RevocationHook(Hook):
    """A hook that acts through the broker's HTTP API, with HTTP Basic *credentials*."""

    def __init__(self, *, authority: AdmissionPolicy, credentials: Credentials,
                 ssl_context: ssl.SSLContext | None = None, poll_interval: float | None = None,
                 queue_size: int = 1000, senders: int = 4, retry: Retry | None = None) -> None:
        super().__init__(authority=authority, poll_interval=poll_interval,
                         queue_size=queue_size, senders=senders, retry=retry)
        self._headers = {"Authorization": credentials.authorization()}
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def shut(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, url: str, *, identity: str,
                      headers: Mapping[str, str] | None = None) -> Reply | None:
        """*method* *url*, retried while the broker answers 5xx or 429 or cannot be
        reached; the reply, or None once ``max_attempts`` are spent."""
        assert self._session is not None, "start() first"
        for attempt in range(1, self._retry.max_attempts + 1):
            try:
                async with self._session.request(method, url, ssl=self._ssl,
                                                 headers={**self._headers,
                                                          **(headers or {})}) as reply:
                    status, body = reply.status, await reply.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if status < 500 and status != 429:
                    return Reply(status, body)
                problem = f"HTTP {status}"
            if attempt < self._retry.max_attempts:
                delay = self._retry.delay(attempt)
                log.warning("%s: %s for %r failed (%s), attempt %d, retrying in %gs",
                            self.what, method, identity, problem, attempt, delay)
                await asyncio.sleep(delay)
        log.error("%s: %s for %r given up after %d attempts", self.what, method, identity,
                  self._retry.max_attempts)
        return None
