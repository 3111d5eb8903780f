"""Thousands of paho-mqtt clients on one asyncio loop, through paho's socket callbacks.

paho's own network loops want a thread per client (``loop_start``) or a blocking
``select`` (``loop_forever``). Instead each client's socket is registered with the asyncio
loop (``add_reader``/``add_writer``) and one periodic timer runs ``loop_misc`` for all of them
(keep-alive pings and their timeouts).

paho opens its socket with a blocking ``connect`` and a blocking TLS handshake; a fleet on one
loop cannot afford that, so :class:`LoopClient` is handed a socket whose TCP connect and TLS
handshake already completed on the loop (:func:`device_sim.tls.open_tls`). Device side:
nothing from Fleet.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from device_sim.tls import open_tls


@dataclass(frozen=True, slots=True)
class Connack:
    code: str
    refused: bool
    session_present: bool


@dataclass(frozen=True, slots=True)
class Closed:
    """How and when (``loop.time()``) a connection ended."""

    at: float
    reason: str
    error: OSError | None = None
    requested: bool = False
    """True when this side sent DISCONNECT."""


class ConnectRefused(Exception):
    """The broker answered CONNECT with a non-zero return code."""

    def __init__(self, code: str) -> None:
        super().__init__(f"CONNACK refused: {code}")
        self.code = code


class ClosedBeforeConnack(Exception):
    """The connection ended after the TLS handshake but before any CONNACK."""

    def __init__(self, closed: Closed) -> None:
        detail = f": {closed.error}" if closed.error else ""
        super().__init__(f"connection closed before CONNACK ({closed.reason}){detail}")
        self.closed = closed


class LoopClient(mqtt.Client):
    """A paho client (MQTT 3.1.1) whose socket comes from the asyncio loop.

    ``connack`` and ``closed`` are futures of the current connection: the CONNACK, and the end
    of the connection (whoever ended it).
    """

    def __init__(self, client_id: str, *, clean_session: bool = False) -> None:
        super().__init__(CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=clean_session, protocol=MQTTProtocolVersion.MQTTv311)
        self.client_id = client_id
        self._prepared: ssl.SSLSocket | None = None
        self.last_error: OSError | None = None
        self.connack: asyncio.Future[Connack] | None = None
        self.closed: asyncio.Future[Closed] | None = None
        self._requested = False
        self.on_connect = self._connack_received
        self.on_disconnect = self._connection_ended

    @property
    def is_open(self) -> bool:
        """Connected and acknowledged, and not yet closed."""
        return (self.connack is not None and self.connack.done()
                and not self.connack.result().refused
                and self.closed is not None and not self.closed.done())

    def _create_socket(self) -> Any:
        # paho calls this from reconnect(); the TLS session is already established.
        sock, self._prepared = self._prepared, None
        if sock is None:
            raise ConnectionError("no connected socket was prepared for this client")
        return sock

    def _sock_recv(self, bufsize: int) -> bytes:
        # Keep what ended the connection: with TLS 1.3 a refused client certificate is an
        # alert on the first read, which paho itself only reports as "connection lost".
        try:
            return super()._sock_recv(bufsize)
        except BlockingIOError:
            raise
        except OSError as exc:
            self.last_error = exc
            raise

    def start_session(self, sock: ssl.SSLSocket) -> MQTTErrorCode:
        """Send CONNECT over *sock* (a connected TLS socket)."""
        self._prepared = sock
        self.last_error = None
        self._requested = False
        try:
            return self.reconnect()
        finally:
            if self._prepared is not None:
                self._prepared.close()
                self._prepared = None

    def close_gracefully(self) -> None:
        """Send DISCONNECT (the broker keeps a persistent session and drops the will)."""
        self._requested = True
        self.disconnect()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT."""
        self._requested = True
        self._sock_close()
        self._connection_ended(self, None, None, None, None)

    def _connack_received(self, _client: mqtt.Client, _userdata: Any, flags: Any,
                          reason: ReasonCode, _properties: Any) -> None:
        if self.connack is not None and not self.connack.done():
            self.connack.set_result(Connack(code=str(reason), refused=reason.is_failure,
                                            session_present=bool(flags.session_present)))

    def _connection_ended(self, _client: mqtt.Client, _userdata: Any, _flags: Any,
                          reason: ReasonCode | None, _properties: Any) -> None:
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(Closed(
                at=self.closed.get_loop().time(), reason=str(reason) if reason else "aborted",
                error=self.last_error, requested=self._requested))


class MqttLoop:
    """Drives every attached :class:`LoopClient` from the running asyncio loop."""

    def __init__(self, *, misc_interval: float = 1.0) -> None:
        self.misc_interval = misc_interval
        self._clients: set[LoopClient] = set()
        self._misc: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._clients)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._schedule_misc()

    def stop(self) -> None:
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("MqttLoop.start() has not been called")
        return self._loop

    def attach(self, client: LoopClient) -> None:
        """Let the loop drive *client*'s socket from now on."""
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        self._clients.add(client)

    def detach(self, client: LoopClient) -> None:
        self._clients.discard(client)

    async def close(self, client: LoopClient, *, timeout: float = 2) -> None:
        """DISCONNECT and wait (bounded) for the close, then stop driving the client."""
        if client.is_open:
            closed = client.closed
            client.close_gracefully()
            if closed is not None:
                await asyncio.wait((closed,), timeout=timeout)
        self.detach(client)

    async def connect(self, client: LoopClient, *, host: str, port: int,
                      context: ssl.SSLContext, keepalive: int, timeout: float) -> bool:
        """Open TLS, send CONNECT and wait for the CONNACK; returns "session present".

        Raises ``ssl.SSLError`` when the handshake fails, :class:`ConnectRefused` on a
        refusing CONNACK, :class:`ClosedBeforeConnack`, and ``OSError``/``TimeoutError`` when
        the broker cannot be reached or does not answer.
        """
        sock = await open_tls(host, port, context, timeout=timeout)
        client.connack = self.loop.create_future()
        client.closed = self.loop.create_future()
        client.connect_async(host, port, keepalive=keepalive)
        result = client.start_session(sock)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"could not send CONNECT: {mqtt.error_string(result)}")
        await asyncio.wait((client.connack, client.closed), timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        if client.connack.done():
            connack = client.connack.result()
            if connack.refused:
                raise ConnectRefused(connack.code)
            return connack.session_present
        if client.closed.done():
            raise ClosedBeforeConnack(client.closed.result())
        client.abort()
        raise TimeoutError(f"no CONNACK within {timeout:g} s")

    # -- paho socket callbacks --------------------------------------------------------------

    def _socket_open(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self.loop.add_reader(sock, self._readable, client)

    def _socket_close(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)

    def _register_write(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self.loop.add_writer(sock, client.loop_write)

    def _unregister_write(self, _client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)

    @staticmethod
    def _readable(client: mqtt.Client) -> None:
        client.loop_read()
        # TLS may hold decrypted bytes the kernel no longer reports as readable.
        sock = client.socket()
        while isinstance(sock, ssl.SSLSocket) and sock.pending():
            client.loop_read()
            sock = client.socket()

    def _schedule_misc(self) -> None:
        self._misc = self.loop.call_later(self.misc_interval, self._run_misc)

    def _run_misc(self) -> None:
        for client in list(self._clients):
            if client.socket() is not None:
                client.loop_misc()
        self._schedule_misc()
