"""Real clients for broker tests: paho-mqtt (MQTT 3.1.1 over mutual TLS) and raw TLS sockets."""

from __future__ import annotations

import asyncio
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy.engine import Engine

from fleet import eventloop
from fleet.broker.server import RunningServer, start
from fleet.registry import AuditEvent
from fleet.registry import events as events_db
from fleet.registry.engine import session as registry_session
from fleet.settings import Settings

T = TypeVar("T")
WAIT = 5.0


@dataclass(frozen=True)
class Credentials:
    """A certificate and key on disk, as a device or service holds them."""

    name: str
    cert: Path
    key: Path
    serial: str
    ca: Path


class BrokerThread:
    """The broker (fleet.broker.server.start) on its own event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = eventloop.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.server: RunningServer | None = None
        self._thread = threading.Thread(target=self._run, name="broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("broker did not start")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.server = self.loop.run_until_complete(
                start(self.settings, host="127.0.0.1", port=0))
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = WAIT) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def run(self, function: Callable[[], T], timeout: float = WAIT) -> T:
        """Run a plain function on the broker's loop (to inspect its state safely)."""
        async def wrapper() -> T:
            return function()
        return self.call(wrapper(), timeout)

    def connection_count(self) -> int:
        assert self.server is not None
        server = self.server
        return self.run(lambda: len(server.connections))

    def session_ids(self) -> set[str]:
        assert self.server is not None
        server = self.server
        return self.run(lambda: set(server.broker.sessions))

    def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run(predicate):
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        """Close the broker as a shutdown does (a restart is another BrokerThread on the
        same settings); a second call does nothing."""
        if self.loop.is_closed():
            return
        if self.server is not None:
            self.call(self.server.close(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Client:
    """A paho MQTT 3.1.1 client over mutual TLS, driven synchronously by tests."""

    def __init__(self, port: int, credentials: Credentials | None, *,
                 client_id: str | None = None, clean_session: bool = True,
                 will: tuple[str, bytes, int, bool] | None = None, keepalive: int = 60,
                 ca: Path | None = None, source: str = "") -> None:
        name = credentials.name if credentials else "anonymous"
        self.client_id = name if client_id is None else client_id
        self.port = port
        self.source = source
        """The local address connections are made from (any of 127/8; "" lets the OS pick)."""
        self.paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                clean_session=clean_session, protocol=mqtt.MQTTv311,
                                reconnect_on_failure=False)
        trusted = ca or (credentials.ca if credentials is not None else None)
        context = ssl.create_default_context(cafile=str(trusted) if trusted else None)
        if credentials is not None:
            context.load_cert_chain(str(credentials.cert), str(credentials.key))
        self.paho.tls_set_context(context)
        self.keepalive = keepalive
        if will is not None:
            topic, payload, qos, retain = will
            self.paho.will_set(topic, payload, qos=qos, retain=retain)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[int] = queue.Queue()
        self.session_present: bool | None = None  # of the last CONNACK
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.acks: queue.Queue[int] = queue.Queue()
        self.disconnected = threading.Event()
        self.paho.on_connect = self._on_connect
        self.paho.on_message = lambda c, u, m: self.messages.put(m)
        self.paho.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put(
            [_suback_code(code) for code in codes])
        self.paho.on_publish = lambda c, u, mid, rc, p: self.acks.put(mid)
        self.paho.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    code: ReasonCode, properties: object) -> None:
        self.session_present = flags.session_present
        self.connack.put(_connack_code(code))

    def connect(self, timeout: float = WAIT) -> int | None:
        """The CONNACK return code, or None when the connection ended without one. Called
        again after a disconnect, a reconnect that keeps paho's in-flight messages."""
        # The network thread of a lost connection may still be on its way out: left
        # running, it would read from (and close) the new socket.
        self.paho.loop_stop()
        self.disconnected.clear()
        try:
            self.paho.connect("127.0.0.1", self.port, keepalive=self.keepalive,
                              bind_address=self.source)
        except (OSError, ssl.SSLError):
            return None
        self.paho.loop_start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.connack.get(timeout=0.05)
            except queue.Empty:
                if self.disconnected.is_set():
                    return None
        raise TimeoutError(f"{self.client_id}: no CONNACK and no disconnect")

    def subscribe(self, *filters: str, qos: int = 1) -> list[int]:
        self.paho.subscribe([(f, qos) for f in filters])
        return self.subacks.get(timeout=WAIT)

    def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> None:
        info = self.paho.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(WAIT)
            assert info.is_published(), f"no PUBACK for {topic}"

    def receive(self, timeout: float = WAIT) -> mqtt.MQTTMessage | None:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


class Clients:
    """Paho clients of one broker, closed together: ``with Clients(broker) as clients``."""

    def __init__(self, broker: BrokerThread) -> None:
        self.broker = broker
        self._clients: list[Client] = []

    def connect(self, credentials: Credentials | None, *, expect: int | None = 0,
                **options: Any) -> Client:
        """A connected client; asserts CONNACK 0 unless *expect* says otherwise."""
        client = Client(self.broker.port, credentials, **options)
        self._clients.append(client)
        assert client.connect() == expect
        return client

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for client in self._clients:
            client.close()


def _connack_code(code: ReasonCode | int) -> int:
    if isinstance(code, ReasonCode):
        # paho maps MQTT 3.1.1 return codes to MQTT 5 reason codes; map them back.
        return {0: 0, 132: 1, 133: 2, 136: 3, 134: 4, 135: 5}.get(code.value, code.value)
    return int(code)


def _suback_code(code: ReasonCode | int) -> int:
    if isinstance(code, ReasonCode):
        return 0x80 if code.is_failure else code.value
    return int(code)


def tls_socket(port: int, credentials: Credentials, *, timeout: float = WAIT) -> ssl.SSLSocket:
    """A raw TLS connection with a client certificate, for hand-made MQTT bytes."""
    context = ssl.create_default_context(cafile=str(credentials.ca))
    context.load_cert_chain(str(credentials.cert), str(credentials.key))
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _text(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def connect_packet(client_id: str, *, keep_alive: int = 60, level: int = 4,
                   name: bytes = b"MQTT", flags: int = 0x02, tail: bytes = b"",
                   will: tuple[str, bytes] | None = None) -> bytes:
    """A CONNECT packet built by hand (a will sets the will flag, QoS 0, retained)."""
    if will is not None:
        flags |= 0x24
        tail = _text(will[0].encode()) + _text(will[1]) + tail
    body = _text(name) + bytes((level, flags)) + keep_alive.to_bytes(2, "big") \
        + _text(client_id.encode()) + tail
    return bytes((0x10, len(body))) + body


def publish_packet(topic: str, payload: bytes) -> bytes:
    """A QoS 0 PUBLISH built by hand (no client-side topic checks)."""
    body = _text(topic.encode()) + payload
    return bytes((0x30, len(body))) + body


def subscribe_packet(topic_filter: str, *, qos: int = 0, packet_id: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + _text(topic_filter.encode()) + bytes((qos,))
    return bytes((0x82, len(body))) + body


def read_connack(sock: ssl.SSLSocket) -> int:
    data = sock.recv(4)
    assert data[:3] == bytes((0x20, 0x02, 0x00)), data
    return data[3]


def closed_within(sock: ssl.SSLSocket, seconds: float) -> float | None:
    """Seconds until the peer closed *sock* (reading and discarding data), or None."""
    start = time.monotonic()
    sock.settimeout(0.05)
    while time.monotonic() - start < seconds:
        try:
            if not sock.recv(4096):
                return time.monotonic() - start
        except TimeoutError:
            continue
        except (OSError, ssl.SSLError):
            return time.monotonic() - start
    return None


def received_until_closed(sock: ssl.SSLSocket, seconds: float) -> bytes | None:
    """Every byte the peer sent before it closed *sock*, or None if it stays open that long."""
    received = b""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.05)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except (OSError, ssl.SSLError):
            return received
        if not chunk:
            return received
        received += chunk
    return None


def audit_events(engine: Engine, action: str | None = None) -> list[AuditEvent]:
    with registry_session(engine) as db:
        return list(events_db.list_audit(session=db, action=action))


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def client_hello() -> bytes:
    """A complete, genuine TLS ClientHello (the client then never answers)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()
