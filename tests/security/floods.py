"""Flooders that run in their own processes, and the legitimate device that measures them."""

from __future__ import annotations

import multiprocessing
import socket
import ssl
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from broker.helpers import Credentials, connect_packet

SOURCES = tuple(f"127.0.0.{i}" for i in range(2, 52))
"""Flood source addresses; legitimate clients use 127.0.0.1."""


def replay(port: int, payload: bytes, rate: float, duration: float,
           sources: tuple[str, ...]) -> None:
    """Open *rate* connections a second for *duration* seconds, round robin over *sources*,
    send *payload* on each and nothing after it; close them all at the end."""
    held: list[socket.socket] = []
    start = time.monotonic()
    sent = 0
    try:
        while (elapsed := time.monotonic() - start) < duration:
            while sent < int(elapsed * rate) + 1:
                source = sources[sent % len(sources)]
                sent += 1
                with suppress(OSError):
                    sock = socket.create_connection(("127.0.0.1", port), timeout=1.0,
                                                    source_address=(source, 0))
                    held.append(sock)
                    if payload:
                        sock.sendall(payload)
            time.sleep(0.002)
    finally:
        for sock in held:
            sock.close()


@contextmanager
def flooding(target: Callable[..., None], *args: object) -> Iterator[None]:
    """Run a flooder in its own process for the duration of the block."""
    process = multiprocessing.get_context("spawn").Process(target=target, args=args,
                                                            daemon=True)
    process.start()
    time.sleep(1.0)  # let the flood reach its rate before measuring
    try:
        yield
    finally:
        process.terminate()
        process.join(10)


@dataclass
class Attempts:
    latencies: list[float]
    failures: int

    @property
    def success_rate(self) -> float:
        total = len(self.latencies) + self.failures
        return len(self.latencies) / total if total else 0.0

    @property
    def p99(self) -> float:
        if len(self.latencies) < 2:
            return max(self.latencies, default=float("inf"))
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[98]


def device_connects(port: int, device: Credentials, *, seconds: float,
                    timeout: float = 5.0) -> Attempts:
    """Connect (a new mTLS handshake, CONNECT, CONNACK 0) again and again for *seconds*."""
    context = ssl.create_default_context(cafile=str(device.ca))
    context.load_cert_chain(str(device.cert), str(device.key))
    result = Attempts([], 0)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(connect_packet(device.name))
                ok = tls.recv(4) == b"\x20\x02\x00\x00"
        except OSError:
            ok = False
        if ok:
            result.latencies.append(time.monotonic() - started)
        else:
            result.failures += 1
        time.sleep(0.005)
    return result
