"""Hand-made MQTT packets of any size, and a broker in its own process, for the quota tests."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import Engine

from fleet.broker.packets import encode_length

from .helpers import WAIT, Credentials, audit_events, connect_packet, tls_socket, wait_until

CLEAN_SESSION_0 = 0x00


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_length(len(body)) + body


def text(value: str | bytes) -> bytes:
    """A length-prefixed string (1.5.3); bytes are taken as they are, valid UTF-8 or not."""
    data = value.encode() if isinstance(value, str) else value
    return len(data).to_bytes(2, "big") + data


def publish(topic: str, payload: bytes, *, qos: int = 0, packet_id: int = 1,
            retain: bool = False) -> bytes:
    identifier = packet_id.to_bytes(2, "big") if qos else b""
    return packet(0x30 | (qos << 1) | int(retain), text(topic) + identifier + payload)


def pubrel(packet_id: int) -> bytes:
    return b"\x62\x02" + packet_id.to_bytes(2, "big")


def subscribe(*filters: str, qos: int = 1, packet_id: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(text(f) + bytes((qos,)) for f in filters)
    return packet(0x82, body)


def unsubscribe(*filters: str, packet_id: int = 1) -> bytes:
    return packet(0xA2, packet_id.to_bytes(2, "big") + b"".join(text(f) for f in filters))


def read_packet(sock: ssl.SSLSocket) -> bytes:
    """One whole MQTT packet of any length."""
    data = _read(sock, 2)
    while data[-1] & 0x80:
        data += _read(sock, 1)
    length, shift = 0, 0
    for byte in data[1:]:
        length |= (byte & 0x7F) << shift
        shift += 7
    return data + _read(sock, length)


def _read(sock: ssl.SSLSocket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


@contextmanager
def raw_client(port: int, credentials: Credentials, *,
               clean_session: bool = True) -> Iterator[ssl.SSLSocket]:
    """A raw MQTT connection past its CONNACK (which must accept it)."""
    with tls_socket(port, credentials) as sock:
        sock.sendall(connect_packet(credentials.name,
                                    flags=0x02 if clean_session else CLEAN_SESSION_0))
        connack = read_packet(sock)
        assert connack[:2] + connack[3:] == b"\x20\x02\x00", connack
        yield sock


def suback_codes(sock: ssl.SSLSocket) -> list[int]:
    reply = read_packet(sock)
    assert reply[0] == 0x90, reply
    header = 2 if reply[1] < 0x80 else 3
    return list(reply[header + 2:])


def quota_events(engine: Engine, quota: str) -> list[str]:
    """Reasons of the ``broker.quota`` audit events about *quota*."""
    return [e.reason or "" for e in audit_events(engine, "broker.quota")
            if f"broker.{quota}:" in (e.reason or "")]


def wait_for_quota_event(engine: Engine, quota: str) -> list[str]:
    wait_until(lambda: bool(quota_events(engine, quota)))
    time.sleep(0.3)  # a second event, if the broker wrongly sent one, arrives too
    return quota_events(engine, quota)


class BrokerProcess:
    """``fleet.broker.server.serve`` in a process of its own, so its memory can be measured."""

    def __init__(self, data_dir: Path, **overrides: str) -> None:
        env = {**os.environ, "FLEET_DATA_DIR": str(data_dir),
               **{f"FLEET_BROKER_{k.upper()}": v for k, v in overrides.items()}}
        code = ("from fleet.broker.server import serve; from fleet.settings import load_settings;"
                " serve(load_settings(), host='127.0.0.1', port=0)")
        self.process = subprocess.Popen([sys.executable, "-c", code], env=env,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("MQTT listening on mqtts://"), line
        self.port = int(line.rsplit(":", 1)[1])

    def rss(self) -> int:
        """Resident set size in bytes (Linux)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(kib) * 1024

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(WAIT)
