"""One live client connection, the index of all of them, and the stream adapters amqtt reads.

A :class:`Connection` is created right after the TLS handshake from the certificate the peer
presented on THIS connection; amqtt sessions point at the connection that last bound them,
so policy decisions never rely on stored session state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from amqtt.adapters import ReaderAdapter, StreamWriterAdapter
from cryptography import x509

from fleet.acl import NOTHING, Grants
from fleet.pki import Identity

if TYPE_CHECKING:
    from amqtt.session import Session

SESSION_KEY = "fleet.connection"
"""The key under ``Session.attributes`` holding the connection bound to that session."""

_RECEIVE_CACHE = 256


class Connection:
    """A TLS connection whose peer certificate was verified in the handshake."""

    __slots__ = (
        "_keep_alive", "_receive", "certificate", "client_id", "closing_reason", "dropped",
        "finished", "grants", "identity", "last_rx", "loop", "outstanding", "peer", "serial",
        "session", "suppress_will", "transport", "unflushed",
    )

    def __init__(self, *, transport: asyncio.WriteTransport, certificate: x509.Certificate,
                 identity: Identity | None, peer: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport = transport
        self.certificate = certificate
        self.identity = identity
        self.serial = format(certificate.serial_number, "x")
        self.peer = peer
        self.client_id: str | None = None
        self.grants: Grants = NOTHING
        self.session: Session | None = None
        self.closing_reason: str | None = None
        self.suppress_will = False
        self.last_rx = self.loop.time()
        self.outstanding = 0  # QoS 1/2 deliveries waiting for their acknowledgement
        self.unflushed = 0  # QoS 0 deliveries written while the socket was backed up
        self.dropped = 0
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self._receive: dict[str, bool] = {}
        self._keep_alive: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"Connection({self.identity}, client_id={self.client_id!r}, peer={self.peer})"

    @property
    def closing(self) -> bool:
        return self.closing_reason is not None or self.transport.is_closing()

    def abort(self, reason: str, *, suppress_will: bool = False) -> None:
        """Drop the connection now; with *suppress_will* its will is not published."""
        if self.closing_reason is None:
            self.closing_reason = reason
        if suppress_will:
            self.suppress_will = True
            if self.session is not None:
                self.session.will_flag = False
        self.transport.abort()

    def bind(self, session: Session) -> None:
        """amqtt created or resumed *session* for this connection."""
        self.session = session
        session.attributes[SESSION_KEY] = self
        if self.suppress_will:
            session.will_flag = False

    def may_receive(self, topic: str) -> bool:
        allowed = self._receive.get(topic)
        if allowed is None:
            if len(self._receive) >= _RECEIVE_CACHE:
                self._receive.clear()
            allowed = self._receive[topic] = self.grants.may_receive(topic)
        return allowed

    def send(self, packet: bytes, *, limit: int) -> bool:
        """Write *packet* unless more than *limit* packets are already backed up."""
        transport = self.transport
        if transport.is_closing():
            return False
        if transport.get_write_buffer_size() == 0:
            self.unflushed = 0
        elif self.unflushed >= limit:
            self.dropped += 1
            return False
        else:
            self.unflushed += 1
        transport.write(packet)
        return True

    def watch_keep_alive(self, keep_alive: int, on_idle: Callable[[Connection], None]) -> None:
        """Call *on_idle* once nothing arrived for 1.5 x *keep_alive* seconds (MQTT-3.1.2-24)."""
        if keep_alive <= 0:
            return
        limit = 1.5 * keep_alive

        def check() -> None:
            idle = self.loop.time() - self.last_rx
            if idle >= limit:
                on_idle(self)
            else:
                self._keep_alive = self.loop.call_later(limit - idle, check)

        self._keep_alive = self.loop.call_later(limit, check)

    def close(self) -> None:
        """The connection is over: stop timers, release waiters."""
        if self._keep_alive is not None:
            self._keep_alive.cancel()
        if not self.transport.is_closing():
            self.transport.abort()
        if not self.finished.done():
            self.finished.set_result(None)


def connection_of(session: Session | None) -> Connection | None:
    """The live connection that last bound *session*, if any."""
    if session is None:
        return None
    connection = session.attributes.get(SESSION_KEY)
    return connection if isinstance(connection, Connection) else None


class Connections:
    """Every open connection, by client id, identity and certificate serial."""

    def __init__(self) -> None:
        self._all: set[Connection] = set()
        self._by_client: dict[str, Connection] = {}
        self._by_identity: dict[Identity, set[Connection]] = {}
        self._by_serial: dict[str, set[Connection]] = {}

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._all))

    def add(self, connection: Connection) -> None:
        self._all.add(connection)
        self._by_serial.setdefault(connection.serial, set()).add(connection)
        if connection.identity is not None:
            self._by_identity.setdefault(connection.identity, set()).add(connection)

    def claim(self, connection: Connection, client_id: str) -> Connection | None:
        """Register *connection* as the holder of *client_id*; returns the previous holder."""
        previous = self._by_client.get(client_id)
        connection.client_id = client_id
        self._by_client[client_id] = connection
        return previous if previous is not connection else None

    def holder(self, client_id: str) -> Connection | None:
        return self._by_client.get(client_id)

    def remove(self, connection: Connection) -> None:
        self._all.discard(connection)
        _discard(self._by_serial, connection.serial, connection)
        if connection.identity is not None:
            _discard(self._by_identity, connection.identity, connection)
        if connection.client_id is not None \
                and self._by_client.get(connection.client_id) is connection:
            del self._by_client[connection.client_id]

    def with_serial(self, serial: str) -> list[Connection]:
        return list(self._by_serial.get(serial, ()))

    def of_identity(self, identity: Identity) -> list[Connection]:
        return list(self._by_identity.get(identity, ()))


def _discard(index: dict[Any, set[Connection]], key: Any, connection: Connection) -> None:
    members = index.get(key)
    if members is not None:
        members.discard(connection)
        if not members:
            del index[key]


class ConnectionReader(ReaderAdapter):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's view of the stream: the CONNECT the gate already read, then the socket.

    Records when data last arrived (keep-alive), refuses packets above the size limit, and
    stops reading while the session's inbound queue holds *max_backlog* messages (TCP
    back-pressure).
    """

    def __init__(self, reader: asyncio.StreamReader, connection: Connection, *, replay: bytes,
                 max_packet_bytes: int, max_backlog: int) -> None:
        self._reader = reader
        self._connection = connection
        self._replay = memoryview(replay)
        self._max = max_packet_bytes
        self._backlog = max_backlog

    async def read(self, n: int = -1) -> bytes:
        if self._replay:
            if n < 0 or n >= len(self._replay):
                head, self._replay = bytes(self._replay), memoryview(b"")
                return head + (await self.read(n - len(head)) if n > len(head) else b"")
            head, self._replay = bytes(self._replay[:n]), self._replay[n:]
            return head
        connection = self._connection
        if n > self._max:
            connection.abort(f"packet larger than {self._max} bytes")
            raise asyncio.IncompleteReadError(b"", n)
        session = connection.session
        while session is not None and not connection.closing \
                and session.delivered_message_queue.qsize() >= self._backlog:
            await asyncio.sleep(0.005)
        data = await (self._reader.read(n) if n < 0 else self._reader.readexactly(n))
        connection.last_rx = connection.loop.time()
        return data

    def feed_eof(self) -> None:
        self._reader.feed_eof()


class ConnectionWriter(StreamWriterAdapter):  # type: ignore[misc]
    """amqtt's writer, carrying the connection it belongs to."""

    def __init__(self, writer: asyncio.StreamWriter, connection: Connection) -> None:
        super().__init__(writer)
        self.connection = connection
