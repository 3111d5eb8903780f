"""fleet.broker.connection.ConnectionReader fed by ConnectionProtocol: the packets of the short
path are handled inside ``data_received``, every complete one at once and without waking amqtt's
reader task; the first packet for amqtt waits for amqtt, and what follows it waits until amqtt
asks for its next packet; bytes that came with the CONNECT are kept; and a client that does
not read what it is sent is not read from."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from contextlib import closing
from pathlib import Path
from typing import Any, cast

import pytest

from fleet.broker.connection import (
    READ_BUFFER,
    Connection,
    ConnectionProtocol,
    ConnectionReader,
    Receiver,
)
from fleet.broker.packets import Violation

from .conftest import Enroll, StartBroker
from .helpers import (
    WAIT,
    BrokerThread,
    Client,
    Credentials,
    connect_packet,
    tls_socket,
)
from .quota_helpers import packet, publish, raw_client, read_packet, subscribe

PINGREQ = packet(0xC0, b"")
TELEMETRY = "devices/d1/telemetry"


def _new_uvloop() -> asyncio.AbstractEventLoop:
    uvloop = pytest.importorskip("uvloop")
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


LOOPS = [pytest.param(asyncio.new_event_loop, id="asyncio"),
         pytest.param(_new_uvloop, id="uvloop")]


class Recorder:
    """A Receiver that records what it is given, and whether amqtt's read was pending."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes, int]] = []
        self.oversize: list[int] = []

    def receive(self, session: Any, topic: str, data: bytes, qos: int, retain: bool) -> None:
        self.received.append((topic, data, qos))

    def hold(self, session: Any, packet_id: int, topic: str, data: bytes,
             retain: bool) -> None:
        self.received.append((topic, data, 2))

    def release(self, session: Any, packet_id: int) -> None:
        pass

    def oversized(self, connection: Connection, size: int) -> None:
        self.oversize.append(size)


class Wire:
    """A ConnectionReader on a TCP connection over loopback, and the peer's socket."""

    def __init__(self, protocol: ConnectionProtocol, connection: Connection,
                 reader: ConnectionReader, recorder: Recorder, peer: socket.socket,
                 violations: list[Violation]) -> None:
        self.protocol, self.connection, self.reader = protocol, connection, reader
        self.recorder, self.peer, self.violations = recorder, peer, violations


async def _wire(*, before: bytes = b"", max_packet_bytes: int = 2**20) -> Wire:
    """Connect, put *before* in the protocol's stream (as if it came with the CONNECT), and
    hand the connection over to its reader, with a receiver and a session attached."""
    loop = asyncio.get_running_loop()
    with closing(socket.create_server(("127.0.0.1", 0))) as listening:
        peer = socket.create_connection(listening.getsockname())
        ours, _ = listening.accept()
    ours.setblocking(False)
    protocol = ConnectionProtocol(asyncio.StreamReader(limit=READ_BUFFER))
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, ours)
    if before:
        protocol.stream.feed_data(before)
    connection = Connection(transport=cast(asyncio.WriteTransport, transport), serial="01",
                            identity=None, peer="test")
    connection.session = cast(Any, object())
    connection.acknowledged()
    recorder = Recorder()
    violations: list[Violation] = []
    reader = ConnectionReader(protocol, connection, max_packet_bytes=max_packet_bytes,
                              on_violation=lambda _, violation: violations.append(violation))
    reader.receiver = recorder
    await protocol.hand_over(reader)
    return Wire(protocol, connection, reader, recorder, peer, violations)


def _run(loop_factory: Callable[[], asyncio.AbstractEventLoop],
         main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_publishes_in_one_chunk_are_routed_inside_data_received(
        loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """Many PUBLISH packets arriving at once are all routed, and QoS 1 ones acknowledged,
    within the one data_received call, while amqtt's reader task stays asleep."""

    async def main() -> None:
        w = await _wire()
        amqtt = asyncio.create_task(w.reader.read(1))  # amqtt's reader, for its next packet
        await _settle()
        assert not amqtt.done()
        chunk = b"".join(publish(f"t/{n}", b"m%d" % n, qos=n % 2, packet_id=n + 1)
                         for n in range(200))
        w.protocol.data_received(chunk)
        assert w.recorder.received == [(f"t/{n}", b"m%d" % n, n % 2) for n in range(200)]
        assert not amqtt.done()  # never woken: nothing was for amqtt
        w.protocol.data_received(PINGREQ + publish("t/after", b"x"))
        assert await asyncio.wait_for(amqtt, 5) == b"\xc0"  # the PINGREQ is amqtt's
        assert w.recorder.received[-1][0] == "t/199"  # what follows waits for amqtt
        assert await w.reader.read(1) == b"\x00"
        later = asyncio.create_task(w.reader.read(1))  # amqtt asks for its next packet
        await _settle()
        assert w.recorder.received[-1] == ("t/after", b"x", 0)
        assert not later.done()
        later.cancel()
        await asyncio.sleep(0)
        acknowledged = b""
        w.peer.settimeout(5)
        while len(acknowledged) < 4 * 100:
            acknowledged += await asyncio.to_thread(w.peer.recv, 4096)
        assert acknowledged == b"".join(b"\x40\x02" + (n + 1).to_bytes(2, "big")
                                        for n in range(1, 200, 2))
        w.connection.close()
        w.peer.close()

    _run(loop_factory, main())


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_packets_come_out_in_order_across_chunks(
        loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """Bytes the stream held at the hand-over come first; packets split anywhere, and
    amqtt's packets between them, are handled in the order they were sent: what follows a
    SUBSCRIBE only once the broker has applied it."""

    async def main() -> None:
        packets = [publish("t/0", b"a"), subscribe("f/#", packet_id=3),
                   publish("t/1", b"b" * 300, qos=1, packet_id=9), PINGREQ,
                   publish("t/2", b"c")]
        data = b"".join(packets)
        w = await _wire(before=data[:5])
        seen: list[object] = []

        async def amqtt() -> None:
            while True:
                first = await w.reader.read(1)
                if not first:
                    return
                length = (await w.reader.read(1))[0]  # all below 128 bytes long
                body = await w.reader.read(length) if length else b""
                seen.append((first + bytes((length,)) + body, len(w.recorder.received)))

        task = asyncio.create_task(amqtt())
        for start in range(5, len(data), 7):
            w.peer.sendall(data[start:start + 7])
            await asyncio.sleep(0.01)
        w.peer.shutdown(socket.SHUT_WR)  # the end of the stream comes before the SUBSCRIBE
        await asyncio.sleep(0.05)  # is applied: what follows it is still handled
        assert [topic for topic, _, _ in w.recorder.received] == ["t/0"]
        assert seen == [(packets[1], 1)]
        w.reader.applied()  # as the broker does once it has written the SUBACK
        await asyncio.wait_for(task, 5)
        assert [topic for topic, _, _ in w.recorder.received] == ["t/0", "t/1", "t/2"]
        # each of amqtt's packets came after the PUBLISH before it, and before the next
        assert seen == [(packets[1], 1), (PINGREQ, 2)]
        w.connection.close()
        w.peer.close()

    _run(loop_factory, main())


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_violation_and_oversize_stop_the_reader(
        loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:

    async def main() -> None:
        w = await _wire()
        amqtt = asyncio.create_task(w.reader.read(1))
        await _settle()
        w.protocol.data_received(publish("t/ok", b"x") + publish("t/+", b"bad")
                                 + publish("t/after", b"x"))
        assert [topic for topic, _, _ in w.recorder.received] == ["t/ok"]
        assert [v.rule for v in w.violations] == ["MQTT-3.3.2-2"]
        assert w.connection.closing
        assert await asyncio.wait_for(amqtt, 5) == b""  # end of stream
        w.protocol.data_received(publish("t/later", b"x"))
        assert [topic for topic, _, _ in w.recorder.received] == ["t/ok"]
        w.connection.close()
        w.peer.close()

        w = await _wire(max_packet_bytes=100)
        amqtt = asyncio.create_task(w.reader.read(1))
        await _settle()
        w.protocol.data_received(publish("t/big", b"x" * 200)[:10])  # only its header
        assert w.recorder.oversize == [len(publish("t/big", b"x" * 200))]
        assert w.connection.closing
        assert await asyncio.wait_for(amqtt, 5) == b""
        w.connection.close()
        w.peer.close()

    _run(loop_factory, main())


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_reading_pauses_while_amqtt_holds_a_full_buffer_or_writes_do_not_drain(
        loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:

    async def main() -> None:
        w = await _wire()
        amqtt = asyncio.create_task(w.reader.read(1))
        await _settle()
        w.protocol.data_received(PINGREQ + publish("t/x", b"x" * READ_BUFFER))
        assert await asyncio.wait_for(amqtt, 5) == b"\xc0"
        assert w.protocol.reading_paused  # amqtt's turn, and more than READ_BUFFER waits
        assert await w.reader.read(1) == b"\x00"
        next_packet = asyncio.create_task(w.reader.read(1))
        await _settle()
        assert [topic for topic, _, _ in w.recorder.received] == ["t/x"]
        assert not w.protocol.reading_paused
        w.protocol.data_received(publish("t/big", b"y" * 3 * READ_BUFFER)[:2 * READ_BUFFER])
        assert w.protocol.reading_paused  # until what it caused is written: the turn's end
        await _settle()
        assert not w.protocol.reading_paused  # a packet being completed is read
        w.protocol.pause_writing()  # the socket does not take writes
        assert w.protocol.reading_paused
        w.protocol.resume_writing()
        assert not w.protocol.reading_paused
        next_packet.cancel()
        await asyncio.sleep(0)
        w.connection.close()
        w.peer.close()

    _run(loop_factory, main())


# -- through the broker --------------------------------------------------------------------

ECHO_POLICY = """
[device]
publish = ["devices/{device_id}/telemetry", "devices/{device_id}/state"]
subscribe = ["devices/{device_id}/telemetry"]

[service]
publish = []
subscribe = ["devices/+/telemetry"]
"""


@pytest.fixture
def echo_broker(start_broker: StartBroker, tmp_path: Path) -> BrokerThread:
    """A broker whose devices may subscribe to their own telemetry."""
    acl = tmp_path / "echo-acl.toml"
    acl.write_text(ECHO_POLICY)
    return start_broker(acl_file=str(acl))


def test_subscribe_then_publish_in_one_chunk_is_delivered_back_in_order(
        enroll: Enroll, echo_broker: BrokerThread) -> None:
    with raw_client(echo_broker.port, enroll("d1")) as sock:
        sock.sendall(subscribe(TELEMETRY, qos=0, packet_id=5)
                     + publish(TELEMETRY, b"one") + publish(TELEMETRY, b"two"))
        assert read_packet(sock) == b"\x90\x03\x00\x05\x00"  # SUBACK
        assert read_packet(sock) == publish(TELEMETRY, b"one")
        assert read_packet(sock) == publish(TELEMETRY, b"two")


def test_bytes_after_the_connect_in_its_chunk_are_not_lost(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        broker: BrokerThread) -> None:
    sink = Client(broker.port, issue_service("ingest"))
    try:
        assert sink.connect() == 0
        assert sink.subscribe("devices/+/telemetry") == [1]
        with tls_socket(broker.port, enroll("d1")) as sock:
            sock.sendall(connect_packet("d1") + publish(TELEMETRY, b"early", qos=1, packet_id=4)
                         + publish(TELEMETRY, b"x" * 30000) + PINGREQ)
            assert read_packet(sock) == b"\x20\x02\x00\x00"  # CONNACK
            assert read_packet(sock) == b"\x40\x02\x00\x04"  # PUBACK
            assert read_packet(sock) == b"\xd0\x00"  # PINGRESP
        messages = [sink.receive(), sink.receive()]
        assert [m.payload for m in messages if m is not None] == [b"early", b"x" * 30000]
    finally:
        sink.close()


def _connection_of(broker: BrokerThread, client_id: str) -> Connection:
    assert broker.server is not None
    server = broker.server
    return broker.run(lambda: next(c for c in server.connections if c.client_id == client_id))


class Counting:
    """The broker's Receiver, counting the PUBLISH packets it is given."""

    def __init__(self, inner: Receiver) -> None:
        self.inner = inner
        self.count = 0

    def receive(self, session: Any, topic: str, data: bytes, qos: int, retain: bool) -> None:
        self.count += 1
        self.inner.receive(session, topic, data, qos, retain)

    def hold(self, session: Any, packet_id: int, topic: str, data: bytes,
             retain: bool) -> None:
        self.inner.hold(session, packet_id, topic, data, retain)

    def release(self, session: Any, packet_id: int) -> None:
        self.inner.release(session, packet_id)

    def oversized(self, connection: Connection, size: int) -> None:
        self.inner.oversized(connection, size)


FLOOD_CAP = 64 * 2**20
SSL_WRITE_BUFFER = 2**20
"""Above what the TLS transport buffers before it asks the protocol to pause writing
(asyncio: 64 KiB, uvloop: 512 KiB)."""


def _flood(sock: ssl.SSLSocket) -> int:
    """Send QoS 1 PUBLISH packets (each answered by a PUBACK) until a write blocks for a
    second; returns the bytes sent (at most FLOOD_CAP)."""
    chunk = b"".join(publish("devices/d1/state", b"", qos=1, packet_id=n % 65535 + 1)
                     for n in range(2000))
    sent = 0
    sock.settimeout(1)
    while sent < FLOOD_CAP:
        try:
            sock.sendall(chunk)
        except TimeoutError:
            break
        sent += len(chunk)
    return sent


def test_a_client_that_does_not_read_is_not_read_from(enroll: Enroll,
                                                      broker: BrokerThread) -> None:
    """A device floods QoS 1 PUBLISHes and does not read its PUBACKs: once the broker's
    writes to it back up, the broker stops reading its socket, so the flood stops at what
    the kernel's buffers hold, and what the broker holds for it stays bounded. Once the
    device reads again, so does the broker."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", broker.port))
    credentials = enroll("d1")
    context = ssl.create_default_context(cafile=str(credentials.ca))
    context.load_cert_chain(str(credentials.cert), str(credentials.key))
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(connect_packet("d1"))
        assert read_packet(sock)[:2] == b"\x20\x02"
        connection = _connection_of(broker, "d1")
        protocol = connection.transport.get_protocol()
        assert isinstance(protocol, ConnectionProtocol)
        reader = protocol.reader
        assert reader is not None
        assert reader.receiver is not None
        counting = Counting(reader.receiver)
        broker.run(lambda: setattr(reader, "receiver", counting))

        sent = _flood(sock)
        assert sent < FLOOD_CAP, "the broker read everything a client that does not read sent"
        assert broker.run(lambda: protocol.writing_paused and protocol.reading_paused)
        assert broker.run(lambda: reader.unread) <= READ_BUFFER
        written = broker.run(lambda: connection.transport.get_write_buffer_size())
        assert written <= SSL_WRITE_BUFFER
        handled = counting.count
        time.sleep(0.5)
        assert counting.count == handled  # not read meanwhile

        sock.settimeout(0.1)
        deadline = time.monotonic() + WAIT
        while counting.count == handled and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                sock.recv(65536)  # the PUBACKs
        assert counting.count > handled  # reading again
