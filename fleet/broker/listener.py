"""The broker's own TLS listener: caps on open and on pending connections, deadlines on the
handshake, and an accept loop that survives running out of file descriptors.

``asyncio.start_server(ssl=...)`` gives every accepted socket a 60 s handshake and no cap.
Here a socket gets ``handshake_timeout`` from accept to the end of its TLS handshake, and is
*pending* (fleet.broker.pending) until the CONNECT gate admits it: a flood of sockets that
send nothing, or a replayed ClientHello and nothing after it, only pushes out the oldest of
its own pending connections and never holds capacity that devices need. Sockets beyond
``max_connections`` are closed as soon as they are accepted, unless a pending one can make
room. Accepting goes through fleet.accept, which survives running out of descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from asyncio import sslproto
from collections.abc import Awaitable, Callable

from fleet.accept import AcceptLoop
from fleet.broker.connection import READ_BUFFER, ConnectionProtocol
from fleet.broker.pending import Pending, PendingConnections
from fleet.errors import AuthenticationError, FleetError

log = logging.getLogger(__name__)

TLS_READ_BUFFER = 4096

Admitted = Callable[[], None]
OnConnection = Callable[[ConnectionProtocol, asyncio.StreamWriter, Admitted], Awaitable[None]]
OnRefused = Callable[[FleetError], None]


class TLSListener:
    def __init__(self, *, context: ssl.SSLContext, max_connections: int, max_pending: int,
                 max_pending_per_source: int, handshake_timeout: float,
                 on_connection: OnConnection, on_refused: OnRefused) -> None:
        self._context = context
        self._max_connections = max_connections
        self._pending = PendingConnections(limit=max_pending, per_source=max_pending_per_source)
        self._timeout = handshake_timeout
        self._on_connection = on_connection
        self._on_refused = on_refused
        self._accepting: AcceptLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        limit_tls_read_buffer()

    @property
    def open_connections(self) -> int:
        return len(self._tasks)

    @property
    def pending_connections(self) -> int:
        return len(self._pending)

    async def start(self, host: str, port: int) -> int:
        """Listen on *host*:*port* (0 picks a free port); returns the bound port."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.create_server((host, port), family=family, backlog=1024)
        self._accepting = AcceptLoop(listening, self._accepted, name="broker")
        self._accepting.start()
        bound: int = listening.getsockname()[1]
        return bound

    def stop_accepting(self) -> None:
        if self._accepting is not None:
            self._accepting.close()
            self._accepting = None

    async def close(self, *, grace: float = 5.0) -> None:
        """Stop accepting, then wait up to *grace* seconds for open connections to end."""
        self.stop_accepting()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace)

    def _accepted(self, sock: socket.socket, address: object) -> None:
        host, peer = _format_peer(address)
        if len(self._tasks) >= self._max_connections and not self._pending.evict_oldest(
                f"connection limit of {self._max_connections} reached"):
            sock.close()
            self._on_refused(AuthenticationError(
                f"connection limit of {self._max_connections} reached", peer=peer))
            return
        entry = self._pending.add(host, functools.partial(self._evict, sock, peer))
        task = self._loop.create_task(self._serve(sock, peer, entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _evict(self, sock: socket.socket, peer: str, reason: str) -> None:
        """Cut a pending connection: its handshake or CONNECT read ends with an error."""
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        self._on_refused(AuthenticationError(f"closed while pending admission: {reason}",
                                             peer=peer))

    async def _serve(self, sock: socket.socket, peer: str, entry: Pending) -> None:
        try:
            try:
                protocol, writer = await self._handshake(sock)
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                self._on_refused(AuthenticationError(_handshake_failure(exc), peer=peer))
                return
            acknowledge_now(sock)
            try:
                await self._on_connection(protocol, writer,
                                          functools.partial(self._pending.settle, entry))
            finally:
                writer.transport.abort()
        except Exception:
            log.exception("connection from %s failed", peer)
        finally:
            self._pending.settle(entry)
            sock.close()

    async def _handshake(self, sock: socket.socket) -> tuple[ConnectionProtocol,
                                                              asyncio.StreamWriter]:
        reader = asyncio.StreamReader(limit=READ_BUFFER)
        protocol = ConnectionProtocol(reader)
        transport, _ = await self._loop.connect_accepted_socket(
            lambda: protocol, sock, ssl=self._context, ssl_handshake_timeout=self._timeout)
        return protocol, asyncio.StreamWriter(transport, protocol, reader, self._loop)


def acknowledge_now(sock: socket.socket) -> None:
    """Send the ACK of the client's last handshake flight now, not after the delayed-ACK
    timer (Linux: up to 40 ms). Without session tickets the server has nothing to send after
    its Finished, and a client with Nagle on (paho's default, as on most devices) holds its
    CONNECT until that flight is acknowledged: every connect would wait out the timer."""
    with contextlib.suppress(OSError, AttributeError):  # TCP_QUICKACK is Linux's
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def limit_tls_read_buffer() -> None:
    """asyncio's TLS protocol gives every connection a 256 KiB read buffer (Python 3.11,
    ``SSLProtocol.max_size``), zero-filled and so resident: ten times what a broker holds per
    idle client, and a source of heap fragmentation as connections come and go. The buffer
    only carries bytes from the socket to OpenSSL's input BIO, which reassembles records, so
    a small one costs nothing but an extra read for large messages. This applies to every
    TLS connection asyncio's own loop makes in this process (the EST service in ``fleet up``
    too); uvloop (fleet.eventloop) has a TLS transport of its own, whose 256 KiB buffer is
    allocated but resident only as far as it is written."""
    sslproto.SSLProtocol.max_size = min(sslproto.SSLProtocol.max_size, TLS_READ_BUFFER)


def _format_peer(address: object) -> tuple[str, str]:
    """(host, host:port) of a peer address."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = str(address[0]), address[1]
        return host, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address), str(address)


_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL",
                      "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"})
"""OpenSSL's reasons for a first record that is not TLS at all."""


def _handshake_failure(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        if exc.reason in _NOT_TLS:
            return "not a TLS ClientHello (plain MQTT or another protocol on the TLS port)"
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError | ConnectionAbortedError):
        return "TLS handshake timed out"
    return f"TLS handshake failed: {exc.__class__.__name__}: {exc}"
