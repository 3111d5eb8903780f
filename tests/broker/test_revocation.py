"""The revocation watcher drops live connections of revoked and suspended identities.

Revocations are made through the Authority, as `fleet device revoke` does, while the
client is connected; the broker polls every 250 ms and must drop the client within 1 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.engine import Engine

from fleet.authority import Authority
from fleet.registry import utcnow

from .conftest import Enroll, StartBroker, rekey
from .helpers import (
    BrokerThread,
    Client,
    Credentials,
    audit_events,
    connect_packet,
    read_connack,
    tls_socket,
    wait_until,
)

NOT_AUTHORIZED = 5


def dropped_within(client: Client, seconds: float) -> float | None:
    start = time.monotonic()
    if client.disconnected.wait(seconds):
        return time.monotonic() - start
    return None


def session_gone(broker: BrokerThread, client_id: str) -> bool:
    return broker.wait_for(lambda: client_id not in broker.server.broker.sessions)  # type: ignore[union-attr]


def test_revoked_device_dropped_within_one_second_and_session_purged(
        enroll: Enroll, sqlite_authority: Authority, connect: Callable[..., Client],
        broker: BrokerThread, sqlite_engine: Engine) -> None:
    credentials = enroll("d1")
    device = connect(credentials, clean_session=False)
    device.subscribe("devices/d1/commands/#")
    sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
    assert dropped_within(device, 1.0) is not None
    assert session_gone(broker, "d1")
    connect(credentials, clean_session=False, expect=NOT_AUTHORIZED)
    assert wait_until(lambda: any("device d1 revoked" in (e.reason or "")
                                  for e in audit_events(sqlite_engine, "broker.disconnect")))


def test_revoked_certificate_dropped_others_stay(enroll: Enroll, sqlite_authority: Authority,
                                                 connect: Callable[..., Client]) -> None:
    d1_credentials = enroll("d1")
    d1, d2 = connect(d1_credentials), connect(enroll("d2"))
    sqlite_authority.revoke_certificate(serial=d1_credentials.serial, reason="keyCompromise",
                                        actor="operator")
    assert dropped_within(d1, 1.0) is not None
    assert not d2.disconnected.is_set()


def test_revoking_superseded_certificate_keeps_current_connection(
        enroll: Enroll, sqlite_authority: Authority, connect: Callable[..., Client]) -> None:
    old = enroll("d1")
    device = connect(rekey(sqlite_authority, old))
    sqlite_authority.revoke_certificate(serial=old.serial, reason="superseded", actor="operator")
    assert dropped_within(device, 1.0) is None


def test_suspended_device_dropped_then_readmitted_after_resume(
        enroll: Enroll, sqlite_authority: Authority, connect: Callable[..., Client],
        broker: BrokerThread) -> None:
    credentials = enroll("d1")
    device = connect(credentials)
    sqlite_authority.suspend_device(device_id="d1", actor="operator", reason="maintenance")
    assert dropped_within(device, 1.0) is not None
    connect(credentials, expect=NOT_AUTHORIZED)
    sqlite_authority.resume_device(device_id="d1", actor="operator")
    connect(credentials)


def test_suspension_lifted_before_the_poll_still_drops_older_connections(
        enroll: Enroll, sqlite_authority: Authority, connect: Callable[..., Client]) -> None:
    """Suspend and resume within one poll interval: the connection made before the
    suspension is dropped, a connection made after the resume is kept."""
    credentials = enroll("d1")
    device = connect(credentials)
    sqlite_authority.suspend_device(device_id="d1", actor="operator")
    sqlite_authority.resume_device(device_id="d1", actor="operator")
    assert dropped_within(device, 1.0) is not None
    again = connect(credentials)
    assert dropped_within(again, 0.6) is None


def test_connection_not_yet_admitted_is_left_to_the_gate_and_refused_with_connack(
        enroll: Enroll, sqlite_authority: Authority, broker: BrokerThread,
        sqlite_engine: Engine) -> None:
    """Revoked between its TLS handshake and its CONNECT: the watcher leaves it to the gate,
    which asks the registry after the revocation and answers 0x05 (not a silent close)."""
    credentials = enroll("d1")
    with tls_socket(broker.port, credentials) as sock:
        sqlite_authority.revoke_certificate(serial=credentials.serial, reason="keyCompromise",
                                            actor="operator")
        assert wait_until(lambda: any(e.serial == credentials.serial
                                      for e in audit_events(sqlite_engine, "broker.purge")))
        sock.sendall(connect_packet("d1"))
        assert read_connack(sock) == NOT_AUTHORIZED


def test_revoked_device_will_not_published(enroll: Enroll, sqlite_authority: Authority,
                                           issue_service: Callable[[str], Credentials],
                                           connect: Callable[..., Client]) -> None:
    watcher = connect(issue_service("monitor"))
    watcher.subscribe("devices/+/state")
    device = connect(enroll("d1"), will=("devices/d1/state", b"offline", 1, False))
    sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
    assert dropped_within(device, 1.0) is not None
    assert watcher.receive(timeout=0.5) is None


def test_certificate_expiring_while_connected_is_dropped(
        enroll: Enroll, sqlite_authority: Authority, connect: Callable[..., Client],
        sqlite_engine: Engine) -> None:
    short = Authority(settings=sqlite_authority.settings.with_overrides(
        device_lifetime=timedelta(seconds=3)), engine=sqlite_authority.engine,
        ca=sqlite_authority.ca)
    credentials = enroll("d1", authority=short)
    device = connect(credentials)
    issued_at = utcnow()
    elapsed = dropped_within(device, 5.0)
    assert elapsed is not None
    assert utcnow() - issued_at < timedelta(seconds=4)
    assert wait_until(lambda: any("expired" in (e.reason or "")
                                  for e in audit_events(sqlite_engine, "broker.disconnect")))


def test_revocation_on_both_databases(authority: Authority, start_broker: StartBroker,
                                      enroll: Enroll) -> None:
    """The watcher polls SQLite and PostgreSQL registries alike."""
    broker = start_broker(
        database_url=authority.engine.url.render_as_string(hide_password=False))
    credentials = enroll("d1", authority=authority)
    device = Client(broker.port, credentials)
    try:
        assert device.connect() == 0
        authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
        assert dropped_within(device, 1.0) is not None
    finally:
        device.close()
