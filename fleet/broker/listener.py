"""The broker's own TLS listener, with caps on connections and on concurrent handshakes.

``asyncio.start_server(ssl=...)`` starts a handshake for every accepted socket at once, with
no cap. This listener accepts sockets itself, waits (up to the connect timeout) until the
client has sent its first TLS record, and only then handshakes, under a semaphore and with
the same timeout. Idle sockets never hold a handshake slot and a stalled handshake holds one
for a bounded time, so a flood of either cannot lock devices out; sockets beyond
``max_connections`` are closed as soon as they are accepted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from asyncio import sslproto
from collections.abc import Awaitable, Callable

from fleet.errors import AuthenticationError, FleetError

log = logging.getLogger(__name__)

TLS_HANDSHAKE_RECORD = 0x16
_RECORD_HEADER = 5
_MAX_RECORD = 2**14 + 2048
_ACCEPT_BATCH = 64
_POLL = 0.01
TLS_READ_BUFFER = 4096
STREAM_BUFFER = 2**14
"""Bytes a connection's stream reader buffers before it pauses reading the socket."""

OnConnection = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OnRefused = Callable[[FleetError], None]


class TLSListener:
    def __init__(self, *, context: ssl.SSLContext, max_connections: int, max_handshakes: int,
                 timeout: float, on_connection: OnConnection, on_refused: OnRefused) -> None:
        self._context = context
        self._max_connections = max_connections
        self._handshakes = asyncio.Semaphore(max_handshakes)
        self._timeout = timeout
        self._on_connection = on_connection
        self._on_refused = on_refused
        self._socket: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        limit_tls_read_buffer()

    @property
    def open_connections(self) -> int:
        return len(self._tasks)

    async def start(self, host: str, port: int) -> int:
        """Listen on *host*:*port* (0 picks a free port); returns the bound port."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.create_server((host, port), family=family, backlog=1024)
        listening.setblocking(False)
        self._socket = listening
        self._loop.add_reader(listening.fileno(), self._accept)
        bound: int = listening.getsockname()[1]
        return bound

    def stop_accepting(self) -> None:
        if self._socket is not None:
            self._loop.remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None

    async def close(self, *, grace: float = 5.0) -> None:
        """Stop accepting, then wait up to *grace* seconds for open connections to end."""
        self.stop_accepting()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace)

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            if self._socket is None:
                return
            try:
                sock, address = self._socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: leave the rest in the backlog
                log.warning("accept failed: %s", exc)
                return
            peer = _format_peer(address)
            if len(self._tasks) >= self._max_connections:
                sock.close()
                self._on_refused(FleetError(
                    f"connection limit of {self._max_connections} reached", peer=peer))
                continue
            sock.setblocking(False)
            task = self._loop.create_task(self._serve(sock, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, sock: socket.socket, peer: str) -> None:
        try:
            problem = await self._client_hello(sock)
            if problem is not None:
                self._on_refused(AuthenticationError(problem, peer=peer))
                return
            try:
                reader, writer = await self._handshake(sock)
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                self._on_refused(AuthenticationError(_handshake_failure(exc), peer=peer))
                return
            try:
                await self._on_connection(reader, writer)
            finally:
                writer.transport.abort()
        except Exception:
            log.exception("connection from %s failed", peer)
        finally:
            sock.close()

    async def _client_hello(self, sock: socket.socket) -> str | None:
        """Wait until the client's first TLS record (its ClientHello) has fully arrived.

        Returns why not, or None. Nothing is consumed: the bytes stay for the handshake.
        """
        deadline = self._loop.time() + self._timeout
        readable: asyncio.Future[None] = self._loop.create_future()
        fd = sock.fileno()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        self._loop.add_reader(fd, ready)
        try:
            async with asyncio.timeout(self._timeout):
                await readable
        except TimeoutError:
            return f"no TLS ClientHello within {self._timeout:g}s"
        finally:
            self._loop.remove_reader(fd)
        need = _RECORD_HEADER
        while True:
            try:
                head = sock.recv(need, socket.MSG_PEEK)
            except BlockingIOError:
                head = b"?"  # readable was signalled; nothing new yet
            except OSError as exc:
                return f"connection lost before the TLS handshake: {exc}"
            if not head:
                return "connection closed before the TLS handshake"
            if head[0] != TLS_HANDSHAKE_RECORD:
                return "not a TLS ClientHello (plain MQTT or another protocol on the TLS port)"
            if len(head) >= _RECORD_HEADER:
                need = min(_RECORD_HEADER + int.from_bytes(head[3:5], "big"), _MAX_RECORD)
                if len(head) >= need:
                    return None
            if self._loop.time() >= deadline:
                return f"incomplete TLS ClientHello after {self._timeout:g}s"
            await asyncio.sleep(_POLL)

    async def _handshake(self, sock: socket.socket) -> tuple[asyncio.StreamReader,
                                                              asyncio.StreamWriter]:
        if self._handshakes.locked():
            async with asyncio.timeout(self._timeout):
                await self._handshakes.acquire()
        else:
            await self._handshakes.acquire()
        try:
            reader = asyncio.StreamReader(limit=STREAM_BUFFER)
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await self._loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=self._context, ssl_handshake_timeout=self._timeout)
            return reader, asyncio.StreamWriter(transport, protocol, reader, self._loop)
        finally:
            self._handshakes.release()


def limit_tls_read_buffer() -> None:
    """asyncio's TLS protocol gives every connection a 256 KiB read buffer (Python 3.11,
    ``SSLProtocol.max_size``), zero-filled and so resident: ten times what a broker holds per
    idle client, and a source of heap fragmentation as connections come and go. The buffer
    only carries bytes from the socket to OpenSSL's input BIO, which reassembles records, so
    a small one costs nothing but an extra read for large messages. This applies to every
    TLS connection asyncio makes in this process (the EST service in ``fleet up`` too)."""
    sslproto.SSLProtocol.max_size = min(sslproto.SSLProtocol.max_size, TLS_READ_BUFFER)


def _format_peer(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def _handshake_failure(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, TimeoutError | ConnectionAbortedError):
        return "TLS handshake timed out"
    return f"TLS handshake failed: {exc.__class__.__name__}: {exc}"
