"""Idle-session holder: opens MQTT sessions and keeps them, noting when the server closes one.

Each session is a blocking ``ssl`` socket (mutual TLS, the device's own certificate), a
CONNECT (MQTT 3.1.1, clean session, client id = CN, keep-alive 0: no pings while idle) and a
SUBSCRIBE to the device's command topic at QoS 1; then the socket joins a selector. Several
holder processes share the sessions of a run, each opening its own with a few threads. A
close by the server is stamped with CLOCK_MONOTONIC, which the parent compares with the time
it revoked the certificate.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

from loadgen import HOST, Credential, client_context

TIMEOUT = 30.0
DISCONNECT = b"\xe0\x00"


def _string(value: str) -> bytes:
    data = value.encode()
    return len(data).to_bytes(2, "big") + data


def _length(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _length(len(body)) + body


def _read_packet(tls: ssl.SSLSocket) -> tuple[int, bytes]:
    head = _exactly(tls, 2)
    length, shift, byte = 0, 0, head[1]
    while True:
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        byte = _exactly(tls, 1)[0]
    return head[0], _exactly(tls, length)


def _exactly(tls: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = tls.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed by the server")
        data += chunk
    return data


def open_session(port: int, chain: str, device: Credential) -> ssl.SSLSocket:
    raw = socket.create_connection((HOST, port), timeout=TIMEOUT)
    tls = client_context(chain, device).wrap_socket(raw, server_hostname=HOST)
    try:
        tls.sendall(_packet(0x10, _string("MQTT") + bytes((4, 0x02, 0, 0))
                            + _string(device[0])))
        kind, body = _read_packet(tls)
        if kind != 0x20 or body[1] != 0:
            raise ConnectionRefusedError(f"CONNACK {body.hex()}")
        tls.sendall(_packet(0x82, b"\x00\x01" + _string(f"devices/{device[0]}/commands/#")
                            + b"\x01"))
        kind, body = _read_packet(tls)
        if kind != 0x90 or body[-1] == 0x80:
            raise ConnectionRefusedError("SUBSCRIBE refused")
    except BaseException:
        tls.close()
        raise
    return tls


def _socket(key: selectors.SelectorKey) -> ssl.SSLSocket:
    assert isinstance(key.fileobj, ssl.SSLSocket)
    return key.fileobj


def holder(pipe: Connection, port: int, chain: str, devices: list[Credential],
           threads: int) -> None:
    """Open *devices*' sessions within the seconds the parent sends, report ("opened", n,
    failures), then watch them until the parent asks ("report"): answer {name: close time} of
    those the server closed, and end."""
    failed: Counter[str] = Counter()
    selector = selectors.DefaultSelector()
    pipe.send("ready")
    deadline = time.monotonic() + pipe.recv()

    def attempt(device: Credential) -> tuple[str, ssl.SSLSocket | str]:
        if time.monotonic() > deadline:
            return device[0], "not tried: out of time"
        try:
            return device[0], open_session(port, chain, device)
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            return device[0], type(exc).__name__

    opened = []
    with ThreadPoolExecutor(threads) as pool:
        for name, outcome in pool.map(attempt, devices):
            if isinstance(outcome, str):
                failed[outcome] += 1
            else:
                opened.append((name, outcome))
    for name, tls in opened:
        tls.setblocking(False)
        selector.register(tls, selectors.EVENT_READ, name)
    pipe.send(("opened", len(opened), dict(failed)))
    closed: dict[str, float] = {}
    while not pipe.poll():
        for key, _ in selector.select(0.05):
            tls = _socket(key)
            try:
                if tls.recv(4096):
                    continue
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
            except (OSError, ssl.SSLError):
                pass
            closed[key.data] = time.monotonic()
            selector.unregister(tls)
            tls.close()
    pipe.recv()
    pipe.send(closed)
    for key in list(selector.get_map().values()):
        tls = _socket(key)
        with contextlib.suppress(OSError, ssl.SSLError):
            tls.setblocking(True)
            tls.settimeout(1.0)
            tls.sendall(DISCONNECT)
        tls.close()
