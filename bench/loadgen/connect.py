"""Connect worker: sequential connects, each a new TCP connection and a new TLS handshake.

mode "mqtt": a paho-mqtt client per connect (MQTT 3.1.1, clean session, client id = the
certificate's CN, paho's defaults otherwise: Nagle on, as on a device), timed from connect()
to CONNACK; the TLS handshake is timed from paho's pre-connect hook (before the TCP connect)
to its socket-open hook (after the handshake). Then DISCONNECT.

mode "tls": the same TCP connect and handshake with the same contexts, then one line echoed by
``openssl s_server -rev`` (so the server has finished the handshake, client certificate
checked, before the next connect): the handshake ceiling of the machine. Here the client sets
TCP_NODELAY: s_server sends no session ticket and cannot turn Nagle off, so the line would
otherwise wait for its delayed ACK of the client's Finished (~40 ms), and s_server, which
serves one connection at a time, would spend that wait idle.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from loadgen import HOST, Credential, client_context, serve

TIMEOUT = 10.0


def worker(pipe: Connection, chain: str, clients: list[Credential] | None) -> None:
    """Each request: (port, mode, seconds, limit). *clients* None: no client certificate
    (server-auth handshakes, mode "tls" only)."""
    contexts: list[tuple[str, ssl.SSLContext]] = (
        [(c[0], client_context(chain, c)) for c in clients] if clients
        else [("anonymous", client_context(chain))])
    serve(pipe, lambda request: _connects(contexts, *request))


def _connects(contexts: list[tuple[str, ssl.SSLContext]], port: int, mode: str,
              seconds: float, limit: int) -> dict[str, Any]:
    attempt = _mqtt if mode == "mqtt" else _tls
    handshake: list[float] = []
    reply: list[float] = []
    failed: Counter[str] = Counter()
    started = time.monotonic()
    deadline = started + seconds
    tried = 0
    while time.monotonic() < deadline and tried < limit:
        name, context = contexts[tried % len(contexts)]
        tried += 1
        try:
            shake, answer = attempt(port, name, context)
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            failed[type(exc).__name__] += 1
            continue
        handshake.append(shake)
        reply.append(answer)
    return {"done": len(reply), "failed": dict(failed), "handshake_ms": handshake,
            "reply_ms": reply, "seconds": time.monotonic() - started}


def _mqtt(port: int, name: str, context: ssl.SSLContext) -> tuple[float, float]:
    marks: dict[str, Any] = {}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name,
                         protocol=mqtt.MQTTv311, clean_session=True)
    client.tls_set_context(context)
    client.on_pre_connect = lambda _c, _u: marks.setdefault("tcp", time.perf_counter())
    client.on_socket_open = lambda _c, _u, _s: marks.setdefault("tls", time.perf_counter())
    client.on_connect = lambda _c, _u, _f, code, _p: marks.setdefault(
        "connack", (time.perf_counter(), code))
    begun = time.perf_counter()
    try:
        client.connect(HOST, port, keepalive=60)
        while "connack" not in marks:
            if time.perf_counter() - begun > TIMEOUT:
                raise TimeoutError("no CONNACK")
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError("closed before CONNACK")
        at, code = marks["connack"]
        if code.is_failure:
            raise ConnectionRefusedError(str(code))
        client.disconnect()
    finally:
        client.loop(timeout=0.0)
        sock = client.socket()
        if sock is not None:
            sock.close()
    return (marks["tls"] - marks["tcp"]) * 1000, (at - begun) * 1000


def _tls(port: int, _name: str, context: ssl.SSLContext) -> tuple[float, float]:
    begun = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with context.wrap_socket(raw, server_hostname=HOST,
                                 do_handshake_on_connect=False) as tls:
            tls.do_handshake()
            shaken = time.perf_counter()
            tls.sendall(b"x\n")
            if not tls.recv(16):
                raise ConnectionError("closed before the echo")
            answered = time.perf_counter()
    return (shaken - begun) * 1000, (answered - begun) * 1000
