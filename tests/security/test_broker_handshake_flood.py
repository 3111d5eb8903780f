"""Replayed ClientHellos (nothing sent after them) at 300 connections a second, from one source
address and from 50, leave devices on another address connecting: they hold no capacity that
devices need (fleet.broker.pending)."""

from __future__ import annotations

import socket
import time

import pytest
from broker.conftest import Enroll, StartBroker
from broker.helpers import client_hello, wait_until

from .floods import SOURCES, device_connects, flooding, replay

pytestmark = pytest.mark.slow

RATE = 300
SECONDS = 8.0


@pytest.mark.parametrize("sources", [SOURCES[:1], SOURCES], ids=["one-source", "50-sources"])
def test_replayed_client_hellos_do_not_lock_devices_out(
        enroll: Enroll, start_broker: StartBroker, sources: tuple[str, ...]) -> None:
    broker = start_broker()
    device = enroll("d1")
    with flooding(replay, broker.port, client_hello(), RATE, SECONDS + 2, sources):
        attempts = device_connects(broker.port, device, seconds=SECONDS)
    print(f"{len(sources)} source(s): {attempts.success_rate:.1%} of "
          f"{len(attempts.latencies) + attempts.failures} connects, p99 {attempts.p99:.3f}s")
    assert attempts.success_rate >= 0.99
    assert attempts.p99 <= 1.0


def test_stalled_handshakes_are_cut_at_the_handshake_timeout(
        enroll: Enroll, start_broker: StartBroker) -> None:
    """A replayed ClientHello is closed after broker.handshake_timeout, not held."""
    broker = start_broker(handshake_timeout="500ms")
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        sock.sendall(client_hello())
        started = time.monotonic()
        while sock.recv(4096):
            pass
        assert time.monotonic() - started < 2.0
    assert wait_until(lambda: broker.connection_count() == 0)
