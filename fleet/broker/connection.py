"""One live client connection, the index of all of them, and the reader of its packets.

A :class:`Connection` is created right after the TLS handshake from the certificate the peer
presented on THIS connection; amqtt sessions point at the connection that last bound them,
so policy decisions never rely on stored session state.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

from cryptography import x509

from fleet.acl import NOTHING, Grants
from fleet.broker import conformance, packets
from fleet.broker.packets import PUBACK, PUBCOMP, PUBREC, PUBREL, SUBSCRIBE, UNSUBSCRIBE, Violation
from fleet.broker.quotas import CACHED_TOPIC_LENGTH
from fleet.broker.tls import peer_certificate
from fleet.pki import Identity

if TYPE_CHECKING:
    from fleet.broker.amqtt_adapter import FleetSession as Session

SESSION_KEY = "fleet.connection"
"""The key under ``Session.attributes`` holding the connection bound to that session."""

_TOPIC_CACHE = 256
READ_BUFFER = 2**14
"""Bytes of a connection that may wait unhandled (for amqtt) before its socket is not read;
also the limit of the stream reader the gate reads the CONNECT from."""
_ACKNOWLEDGEMENTS = frozenset((PUBACK, PUBREC, PUBREL, PUBCOMP))
_COMPLETES = {PUBACK: 1, PUBCOMP: 2}  # the acknowledgement that ends a QoS 1 / QoS 2 delivery
_APPLIED = frozenset((SUBSCRIBE, UNSUBSCRIBE))  # what follows waits until the broker applied it

log = logging.getLogger(__name__)

OnViolation = Callable[["Connection", Violation], None]


class Receiver(Protocol):
    """The broker's side of the packets :class:`ConnectionReader` handles itself."""

    def receive(self, session: Session, topic: str, data: bytes, qos: int,
                retain: bool) -> None:
        """A QoS 0 or 1 PUBLISH (the reader then acknowledges a QoS 1 one)."""

    def hold(self, session: Session, packet_id: int, topic: str, data: bytes,
             retain: bool) -> None:
        """An inbound QoS 2 PUBLISH (the reader answers PUBREC)."""

    def release(self, session: Session, packet_id: int) -> None:
        """Its PUBREL (the reader answers PUBCOMP)."""

    def oversized(self, connection: Connection, size: int) -> None:
        """A packet above the size limit (the reader closes the connection)."""


class Connection:
    """A TLS connection whose peer certificate was verified in the handshake."""

    __slots__ = (
        "_acknowledged", "_keep_alive", "_pending", "_pending_sent", "_pending_sent_bytes",
        "_publish", "_receive", "admitted_at", "client_id", "closing_reason",
        "dropped", "finished", "grants", "id", "identity", "last_rx", "loop", "peer", "serial",
        "session", "suppress_will", "transport", "unflushed", "unflushed_bytes",
    )

    def __init__(self, *, transport: asyncio.WriteTransport, serial: str,
                 identity: Identity | None, peer: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.id = secrets.token_hex(6)
        """Names this connection in the broker's log lines."""
        self.transport = transport
        self.identity = identity
        self.serial = serial
        self.peer = peer
        self.client_id: str | None = None
        self.grants: Grants = NOTHING
        self.session: Session | None = None
        self.admitted_at: datetime | None = None  # when the registry was asked about it
        self.closing_reason: str | None = None
        self.suppress_will = False
        self.last_rx = self.loop.time()
        # QoS 0 deliveries (and their bytes) written since the socket last drained
        # completely: upper bounds of what is still unsent, tightened by backlog(exact=True).
        self.unflushed = 0
        self.unflushed_bytes = 0
        self.dropped = 0
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self._receive: dict[str, bool] = {}
        self._publish: dict[str, bool] = {}
        self._pending: list[bytes] = []
        self._pending_sent = self._pending_sent_bytes = 0  # QoS 0 deliveries among _pending
        self._acknowledged = False  # CONNACK sent: queued packets may leave
        self._keep_alive: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"Connection({self.identity}, client_id={self.client_id!r}, peer={self.peer})"

    def certificate(self) -> x509.Certificate:
        """The certificate the peer presented on this connection (parsed again: not kept)."""
        return peer_certificate(self.transport.get_extra_info("ssl_object"))

    @property
    def device_id(self) -> str | None:
        """The device this connection's certificate names (None for a service)."""
        identity = self.identity
        return identity.name if identity is not None and identity.kind == "device" else None

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
        """May a message on *topic* be delivered here (remembered per topic)?"""
        allowed = self._receive.get(topic)
        if allowed is None:
            allowed = self.grants.may_receive(topic)
            _remember(self._receive, topic, allowed)
        return allowed

    def may_publish(self, topic: str) -> bool:
        """May this connection publish to *topic* (remembered per topic)?"""
        allowed = self._publish.get(topic)
        if allowed is None:
            allowed = self.grants.may_publish(topic)
            _remember(self._publish, topic, allowed)
        return allowed

    def backlog(self, *, exact: bool = False) -> tuple[int, int]:
        """QoS 0 deliveries and their bytes, queued or written and maybe not yet sent.

        Cheap upper bounds, counted since the socket last drained completely; the socket's
        buffer is looked at only when *exact*. (QoS 1 and 2 deliveries are counted by the
        session, which holds them until acknowledged.)
        """
        if exact:
            buffered = self.transport.get_write_buffer_size()
            if buffered:
                self.unflushed_bytes = min(self.unflushed_bytes, buffered)
            else:
                self.unflushed = self.unflushed_bytes = 0
        return (self.unflushed + self._pending_sent,
                self.unflushed_bytes + self._pending_sent_bytes)

    def send(self, packet: bytes) -> None:
        """Write a QoS 0 delivery, counted in the backlog."""
        self._pending_sent += 1
        self._pending_sent_bytes += len(packet)
        self.write(packet)

    def write(self, packet: bytes) -> None:
        """Queue *packet*; everything queued in one event-loop turn leaves in one write.

        Until :meth:`acknowledged` is called, packets are held: nothing may reach a client
        before its CONNACK (MQTT-3.2.0-1), even when messages are routed to the session it
        resumes while the CONNACK is still being prepared.
        """
        if not self._pending and self._acknowledged:
            self.loop.call_soon(self._flush)
        self._pending.append(packet)

    def acknowledged(self) -> None:
        """The CONNACK has been written: let the held packets go."""
        self._acknowledged = True
        if self._pending:
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        sent, size = self._pending_sent, self._pending_sent_bytes
        self._pending_sent = self._pending_sent_bytes = 0
        transport = self.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() == 0:
            self.unflushed = self.unflushed_bytes = 0
        self.unflushed += sent
        self.unflushed_bytes += size
        transport.write(b"".join(pending) if len(pending) > 1 else pending[0])

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


def _remember(cache: dict[str, bool], topic: str, allowed: bool) -> None:
    if len(topic) <= CACHED_TOPIC_LENGTH:
        if len(cache) >= _TOPIC_CACHE:
            cache.clear()
        cache[topic] = allowed


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


class ConnectionProtocol(asyncio.StreamReaderProtocol):
    """The asyncio protocol of a TLS connection: what arrives goes to its :attr:`stream`, from
    which the gate reads the CONNECT, until :meth:`hand_over` gives the connection to its
    :class:`ConnectionReader`, which then handles data as it arrives. A StreamReaderProtocol,
    so that ``StreamWriter.drain`` waits while the socket does not take writes."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        super().__init__(stream)
        # asyncio's FlowControlMixin keeps the drain() waiters in a deque (760 bytes, for a
        # connection's life); it only appends, removes and iterates: a list does the same.
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.stream = stream
        self.writing_paused = False
        self.reading_paused = False
        self._reads: asyncio.Transport | None = None
        self.reader: ConnectionReader | None = None
        self._ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._reads = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport

    async def hand_over(self, reader: ConnectionReader) -> None:
        """From now on *reader* gets the bytes, starting with those :attr:`stream` holds."""
        self.reader = reader
        stream = self.stream
        stream.feed_eof()
        buffered = await stream.read() if stream.exception() is None else b""  # never waits
        reader.received_first(buffered)
        if self._ended:
            reader.ended()

    def pause_reads(self, paused: bool) -> None:
        """Stop (or resume) reading the socket."""
        transport = self._reads
        if paused == self.reading_paused or transport is None or transport.is_closing():
            return
        self.reading_paused = paused
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        if reader is None:
            super().data_received(data)
        else:
            reader.received(data)

    def eof_received(self) -> bool | None:
        self._end()
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._end()
        self.reader = None  # nothing more comes: no cycle to keep both alive

    def pause_writing(self) -> None:
        super().pause_writing()
        self.writing_paused = True
        if self.reader is not None:
            self.reader.flow()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.writing_paused = False
        if self.reader is not None:
            self.reader.flow()

    def _end(self) -> None:
        self._ended = True
        if self.reader is not None:
            self.reader.ended()


class ConnectionReader:
    """amqtt's view of the stream after the CONNECT, which the gate read (an amqtt
    ReaderAdapter, fleet.broker.amqtt_adapter), fed by the connection's
    :class:`ConnectionProtocol` as data arrives.

    The reader keeps track of packet boundaries. Every PUBLISH, its PUBREL, and PUBACK,
    PUBREC and PUBCOMP for the deliveries the broker writes (all outgoing QoS 1 and 2 ones)
    are parsed and handled here once the broker has attached its :class:`Receiver`: a QoS 0
    or 1 PUBLISH goes to the receiver, then a QoS 1 one is acknowledged; a QoS 2 one is
    held by the receiver and answered with PUBREC, its PUBREL releases it and is answered
    with PUBCOMP (also for an unknown or discarded one, 4.3.3); a PUBREC is answered with
    PUBREL. These are handled in the protocol's ``data_received``, every complete one at once,
    without waking a task, while amqtt is not in a packet: the first packet of another type
    stops that, amqtt's protocol handler reads it (and may read no further than its end), and
    handling goes on when amqtt asks for its next packet; after a SUBSCRIBE or UNSUBSCRIBE,
    once the broker has also applied it (:meth:`applied`: its SUBACK or UNSUBACK written), so
    packets are acted on in the order they came and a PUBLISH right behind a SUBSCRIBE
    reaches the new subscription. Nothing is handled before amqtt's first read (the CONNACK
    is written by then). Every packet after the CONNECT is read whole and checked first
    (fleet.broker.conformance): one that breaks MQTT 3.1.1 closes the connection, is reported
    to *on_violation* and answered with nothing, and nothing after it is read. Also records
    when data last arrived (keep-alive), closes the connection on a packet above the size
    limit, whatever its type, handles nothing more once the broker dropped the connection,
    and stops reading the socket while the peer does not read what it is sent, or while more
    than :data:`READ_BUFFER` bytes wait for amqtt (:meth:`flow`).
    """

    def __init__(self, protocol: ConnectionProtocol, connection: Connection, *,
                 max_packet_bytes: int, on_violation: OnViolation) -> None:
        self._protocol = protocol
        self._connection = connection
        self._data = b""  # whole packets are parsed in here, from _position on
        self._position = 0
        self._arrived: list[bytes] = []  # what came after _data, joined to it when needed
        self._arrived_bytes = 0
        self._left = 0  # bytes of the packet amqtt is reading that it has not read yet
        self._amqtt_turn = True  # a packet is amqtt's, or amqtt has not asked for one yet
        self._unapplied = 0  # SUBSCRIBE / UNSUBSCRIBE packets amqtt read, not applied yet
        self._burst = 0  # bytes received since reading last waited for the writes they caused
        self._writes_pending = False  # reading waits for them, written at the end of the turn
        self._eof = False  # nothing more arrives
        self._stopped = False  # nothing more is handled (a violation, or the broker's drop)
        self._waiter: asyncio.Future[None] | None = None  # amqtt's read, for its next packet
        self._max = max_packet_bytes
        self._on_violation = on_violation
        self.receiver: Receiver | None = None  # attached by the broker with the session

    async def read(self, n: int = -1) -> bytes:
        if self._left == 0:  # amqtt asks for its next packet
            self._amqtt_turn = False
            self._handle()
            while not self._amqtt_turn:
                if self._stopped or (self._eof and not self._unapplied):
                    return b""  # end of stream
                self._waiter = self._connection.loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        if n < 0 or n > self._left:
            self._connection.abort("malformed packet (read past its end)")
            raise asyncio.IncompleteReadError(b"", n)
        start = self._position
        self._position += n
        self._left -= n
        return self._data[start:start + n]

    def feed_eof(self) -> None:
        self.ended()

    def received(self, data: bytes) -> None:
        """Bytes from the socket: handle what they complete, unless it is amqtt's turn."""
        if self._stopped:
            return
        connection = self._connection
        connection.last_rx = connection.loop.time()
        self._arrived.append(data)
        self._arrived_bytes += len(data)
        self._burst += len(data)
        if self._burst > READ_BUFFER and not self._writes_pending:
            # The answers queued meanwhile are written once this event-loop turn ends (a
            # loop may read a socket many times in one turn): reading waits for that, so a
            # peer that does not read them is not read from either.
            self._writes_pending = True
            connection.loop.call_soon(self._written)
        if self._amqtt_turn:
            self.flow()
        else:
            self._handle()

    def received_first(self, data: bytes) -> None:
        """What arrived before :meth:`ConnectionProtocol.hand_over`: ahead of the rest."""
        if data:
            self._arrived.insert(0, data)
            self._arrived_bytes += len(data)
        self.flow()

    def applied(self) -> None:
        """The broker has applied a SUBSCRIBE or UNSUBSCRIBE amqtt read: handle what follows."""
        if self._unapplied:
            self._unapplied -= 1
        if not self._amqtt_turn:
            self._handle()
        self._wake()

    def ended(self) -> None:
        """Nothing more arrives: amqtt reads the end of the stream after what came before."""
        self._eof = True
        self._wake()

    @property
    def unread(self) -> int:
        """Bytes that arrived and are neither handled nor read by amqtt yet."""
        return len(self._data) - self._position + self._arrived_bytes

    def flow(self) -> None:
        """Read the socket only while the peer reads what it is sent (and, after
        :data:`READ_BUFFER` bytes, once what they caused has been written), and while what
        waits for amqtt or the broker stays below :data:`READ_BUFFER`: a packet being
        completed is always read."""
        protocol = self._protocol
        waiting = self._amqtt_turn or self._unapplied > 0
        protocol.pause_reads(protocol.writing_paused or self._writes_pending
                             or (waiting and self.unread > READ_BUFFER))

    def _written(self) -> None:
        self._writes_pending = False
        self._burst = 0
        self.flow()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _take(self, n: int) -> bool:
        """Have at least *n* unread bytes in ``_data``; False while fewer have arrived."""
        have = len(self._data) - self._position
        if have >= n:
            return True
        if have + self._arrived_bytes < n:
            return False
        arrived = self._arrived
        if have == 0 and len(arrived) == 1:
            self._data = arrived[0]
        else:
            arrived.insert(0, self._data[self._position:])
            self._data = b"".join(arrived)
        self._position = 0
        self._arrived = []
        self._arrived_bytes = 0
        return True

    def _stop(self) -> None:
        self._stopped = True
        self._data, self._position, self._arrived, self._arrived_bytes = b"", 0, [], 0
        self._wake()

    def _handle(self) -> None:
        """Handle complete packets on the short path until one is for amqtt (woken to read
        it) or the next one is incomplete."""
        connection = self._connection
        while not (self._stopped or self._unapplied):
            if connection.closing_reason is not None:  # dropped by the broker
                self._stop()
                return
            if not self._take(2):
                break
            try:
                while (decoded := packets.decode_length(self._data, self._position + 1)) is None:
                    if not self._take(len(self._data) - self._position + 1):
                        break
                if decoded is None:
                    break
                length, end = decoded
                header = end - self._position
                total = header + length
                if total > self._max:
                    if self.receiver is not None:
                        self.receiver.oversized(connection, total)
                    connection.abort(f"packet of {total} bytes, above {self._max}")
                    self._stop()
                    return
                if not self._take(total):
                    break
                packet = self._data[self._position:self._position + total]
                publish = conformance.check(packet, header)
            except Violation as violation:
                self._on_violation(connection, violation)
                connection.abort(str(violation))
                self._stop()
                return
            if publish is not None:
                handled = self._publish(packet, *publish)
            else:
                handled = packet[0] >> 4 in _ACKNOWLEDGEMENTS and self._acknowledgement(packet)
            if handled:
                self._position += total
                continue
            self._left = total
            self._amqtt_turn = True
            if packet[0] >> 4 in _APPLIED:
                self._unapplied += 1
            self._wake()
            break
        self.flow()

    def _acknowledgement(self, packet: bytes) -> bool:
        """Handle a PUBREL, or a PUBACK, PUBREC or PUBCOMP of a delivery (4 bytes, checked)."""
        connection, session, receiver = self._connection, self._connection.session, self.receiver
        if session is None or receiver is None:
            return False
        kind = packet[0] >> 4
        identifier = packet[-2:]
        packet_id = int.from_bytes(identifier, "big")
        if kind == PUBREL:
            receiver.release(session, packet_id)
            connection.write(packets.acknowledgement(PUBCOMP, identifier))
            return True
        if kind == PUBREC:  # 4.3.3: PUBREL answers every PUBREC, and is resent on resume
            session.pubrec(packet_id)
            connection.write(packets.acknowledgement(PUBREL, identifier))
        else:
            session.acknowledged(packet_id, _COMPLETES[kind])
        return True

    def _publish(self, packet: bytes, topic: str, payload: int) -> bool:
        """Route a PUBLISH (checked: *topic* is its topic name, its payload starts at
        *payload*) and answer it."""
        connection, session, receiver = self._connection, self._connection.session, self.receiver
        if session is None or receiver is None:
            return False
        flags = packet[0]
        qos = (flags >> 1) & 0x03
        identifier = packet[payload - 2:payload] if qos else b""
        try:
            if qos == 2:
                receiver.hold(session, int.from_bytes(identifier, "big"), topic,
                              packet[payload:], bool(flags & 0x01))
            else:
                receiver.receive(session, topic, packet[payload:], qos, bool(flags & 0x01))
        except Exception:
            log.exception("routing a PUBLISH from %s failed", connection)
            connection.abort("internal error while routing a PUBLISH")
            return True
        if qos:  # PUBACK or PUBREC, after routing or holding
            connection.write(packets.acknowledgement(PUBACK if qos == 1 else PUBREC, identifier))
        return True
