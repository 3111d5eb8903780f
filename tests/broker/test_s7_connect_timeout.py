"""S7: a client that completes TLS but sends no CONNECT is dropped after connect_timeout."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from .conftest import Enroll, StartBroker
from .helpers import audit_events, closed_within, tls_socket, wait_until


def test_s7_no_connect_dropped_after_timeout(enroll: Enroll, start_broker: StartBroker,
                                             sqlite_engine: Engine) -> None:
    broker = start_broker(connect_timeout="1s")
    with tls_socket(broker.port, enroll("d1")) as sock:
        elapsed = closed_within(sock, 4)
    assert elapsed is not None
    assert 0.8 <= elapsed <= 2.5
    assert wait_until(lambda: any("no CONNECT within 1s" in (e.reason or "")
                                  for e in audit_events(sqlite_engine, "broker.connect")))


def test_s7_partial_connect_dropped_after_timeout(enroll: Enroll,
                                                  start_broker: StartBroker) -> None:
    broker = start_broker(connect_timeout="1s")
    with tls_socket(broker.port, enroll("d1")) as sock:
        sock.sendall(bytes((0x10, 0x20, 0x00)))  # a CONNECT that never completes
        assert closed_within(sock, 4) is not None
