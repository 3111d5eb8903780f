"""EST connections: accepted under caps, every read bounded in time.

``loop.create_server(ssl=...)`` learns a client's address only after the TLS handshake and
tells the protocol nothing about a handshake that fails, so it cannot cap sockets that are
still handshaking. :class:`Listener` accepts sockets itself, holds an :class:`Occupancy` slot
(total and per source address) for each from accept to close, closes those beyond the caps at
once, and hands the rest to aiohttp after a handshake bounded by ``est.handshake_timeout``.
Accepting goes through fleet.accept, which survives running out of descriptors.

The other reads are bounded where aiohttp has a knob, and here where it has none:

- request headers: :class:`EstConnection`'s timer (``est.header_timeout``);
- request body: ``provisioning.limits.read_body`` (``est.body_timeout`` + length at
  ``est.body_min_rate``); an unread body is drained for at most ``est.body_timeout``;
- idle keep-alive: aiohttp's ``keepalive_timeout`` (``est.keepalive_timeout``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from fleet.accept import AcceptLoop
from fleet.errors import AuthenticationError, FleetError
from provisioning.limits import Occupancy, ServerBusyError

log = logging.getLogger("provisioning")

OnRefused = Callable[[str, FleetError], None]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds each stage of a connection may take."""

    handshake: float
    headers: float
    keepalive: float
    linger: float
    """How long an unread request body is drained before the connection is closed."""


class EstConnection(web.RequestHandler):
    """aiohttp's HTTP/1.1 protocol for one client, with a deadline on request headers.

    The deadline runs from the end of the handshake, and from the first byte of each
    following request, until the service's middleware begins the request
    (:meth:`request_started`); it is off while the request is handled. Past it the
    connection is aborted: a client that sends no complete headers gets no TLS goodbye.
    """

    __slots__ = ("_header_timer", "_in_request", "_on_close", "_timeouts", "source")

    def __init__(self, server: web.Server, *, source: str, timeouts: Timeouts,
                 on_close: Callable[[], None]) -> None:
        super().__init__(server, loop=asyncio.get_running_loop(),
                         keepalive_timeout=timeouts.keepalive, lingering_time=timeouts.linger)
        self.source = source
        self._timeouts = timeouts
        self._on_close: Callable[[], None] | None = on_close
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        if data and not self._in_request and self._header_timer is None:
            self._await_headers()  # the first byte of a following request
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)
        self.closed()

    def closed(self) -> None:
        """Give back the connection's slot (once, however the connection ended)."""
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()

    def request_started(self) -> None:
        self._in_request = True
        self._stop_header_timer()

    def request_finished(self) -> None:
        self._in_request = False

    def _await_headers(self) -> None:
        self._header_timer = asyncio.get_running_loop().call_later(
            self._timeouts.headers, self._headers_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        log.info("closed the connection from %s: no complete request headers within %gs",
                 self.source, self._timeouts.headers)
        if self.transport is not None:
            self.transport.abort()


class Listener:
    """Accepts TLS connections on a bound socket for an aiohttp server, under *slots*.

    Connections closed at once over a cap, and failed handshakes, go to *on_refused* with the
    peer's address: they prove nothing about the peer (their audit is aggregated).
    """

    def __init__(self, *, sock: socket.socket, context: ssl.SSLContext, server: web.Server,
                 slots: Occupancy, timeouts: Timeouts, backlog: int,
                 on_refused: OnRefused) -> None:
        self._sock = sock
        self._accepting: AcceptLoop | None = None
        self._context = context
        self._server = server
        self.slots = slots
        self._timeouts = timeouts
        self._backlog = backlog
        self._on_refused = on_refused
        self._loop = asyncio.get_running_loop()
        self._handshakes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._sock.listen(self._backlog)
        self._accepting = AcceptLoop(self._sock, self._accepted, name="EST")
        self._accepting.start()

    async def close(self) -> None:
        """Stop accepting and abandon handshakes in progress (aiohttp's runner then closes
        the established connections)."""
        if self._accepting is not None:
            self._accepting.close()
            self._accepting = None
        for task in list(self._handshakes):
            task.cancel()
        if self._handshakes:
            await asyncio.wait(self._handshakes)

    def _accepted(self, sock: socket.socket, address: object) -> None:
        source = str(address[0]) if isinstance(address, tuple) else str(address)
        try:
            self.slots.enter(source)
        except ServerBusyError as refused:
            sock.close()
            self._on_refused(source, refused)
            return
        task = self._loop.create_task(self._handshake(sock, source))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, sock: socket.socket, source: str) -> None:
        connection = EstConnection(self._server, source=source, timeouts=self._timeouts,
                                   on_close=lambda: self.slots.leave(source))
        try:
            await self._loop.connect_accepted_socket(
                lambda: connection, sock, ssl=self._context,
                ssl_handshake_timeout=self._timeouts.handshake,
                ssl_shutdown_timeout=self._timeouts.handshake)
        except BaseException as exc:
            connection.closed()
            if not isinstance(exc, OSError | TimeoutError):  # ssl.SSLError is an OSError
                raise
            self._on_refused(source, AuthenticationError(f"TLS handshake failed: {exc}"))
