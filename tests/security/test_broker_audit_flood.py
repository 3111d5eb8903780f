"""Junk connections cannot drown the broker's audit: refusals without a verified identity are
one aggregated event per source and interval, while a verified device's spoof attempt and a
revocation drop are each recorded, whatever strangers do."""

from __future__ import annotations

import json
import socket
from contextlib import suppress

import pytest
from broker.conftest import Enroll, StartBroker
from broker.helpers import Client, audit_events, wait_until
from sqlalchemy.engine import Engine

from fleet.authority import Authority

from .floods import SOURCES

pytestmark = pytest.mark.slow

JUNK = 300


def junk_connections(port: int, count: int, sources: tuple[str, ...]) -> None:
    for index in range(count):
        with suppress(OSError), socket.create_connection(
                ("127.0.0.1", port), timeout=2,
                source_address=(sources[index % len(sources)], 0)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
            with suppress(OSError):
                sock.recv(16)


def test_junk_connections_are_aggregated_and_spoof_is_still_recorded(
        enroll: Enroll, start_broker: StartBroker, sqlite_engine: Engine,
        sqlite_authority: Authority) -> None:
    broker = start_broker()
    junk_connections(broker.port, JUNK, SOURCES[:3])
    spoofer = Client(broker.port, enroll("d1"), client_id="d2")
    assert spoofer.connect() == 2  # identifier rejected
    spoofer.close()
    victim = Client(broker.port, enroll("d3"))
    assert victim.connect() == 0
    sqlite_authority.revoke_device(device_id="d3", reason="keyCompromise", actor="operator")
    assert victim.disconnected.wait(5)
    victim.close()

    def aggregated() -> list[dict[str, object]]:
        return [json.loads(e.detail or "{}") for e in audit_events(sqlite_engine,
                                                                   "broker.handshake")]
    assert wait_until(lambda: sum(int(d["count"]) for d in aggregated()) >= JUNK, 10)
    assert len(aggregated()) <= JUNK // 10  # per source and interval, not per connection
    connects = audit_events(sqlite_engine, "broker.connect")
    assert any(e.device_id == "d1" and "'d2'" in (e.reason or "") for e in connects)
    assert wait_until(lambda: any(e.device_id == "d3"
                                  for e in audit_events(sqlite_engine, "broker.disconnect")))
