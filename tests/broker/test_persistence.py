"""Persistent sessions and retained messages survive a restart (fleet.broker.persistence).

Each test stops a broker as a shutdown does and starts another on the same data dir; the
kill -9 test is in test_persistence_crash.py.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fleet.authority import Authority
from fleet.registry import AuditEvent

from .conftest import Enroll, StartBroker, rekey
from .helpers import (
    BrokerThread,
    Client,
    Clients,
    Credentials,
    audit_events,
    connect_packet,
    tls_socket,
    wait_until,
)
from .test_08_qos1_redelivery import FILTER, TOPIC, read_packet, read_publish, subscribe_packet
from .test_09_qos2_delivery import pubrec, pubrel

STATE = "devices/+/state"
NOT_AUTHORIZED = 5


def state_file(broker: BrokerThread) -> Path:
    return broker.settings.data_dir / "broker" / "state.json"


def leave_persistent_session(broker: BrokerThread, credentials: Credentials) -> None:
    """The device connects with clean_session=0, subscribes to its commands, and goes."""
    device = Client(broker.port, credentials, clean_session=False)
    assert device.connect() == 0
    assert device.subscribe(f"devices/{credentials.name}/commands/#", qos=1) == [1]
    device.close()
    wait_left(broker, credentials.name)


def retain_state(broker: BrokerThread, credentials: Credentials, payload: bytes) -> None:
    with Clients(broker) as clients:  # clean_session=0: a session it left stays
        device = clients.connect(credentials, clean_session=False)
        device.publish(f"devices/{credentials.name}/state", payload, qos=1, retain=True)


def wait_left(broker: BrokerThread, client_id: str) -> None:
    """Until the session of *client_id* has no connection."""
    assert wait_until(lambda: broker.run(
        lambda: not broker.server.broker.sessions[client_id][0]  # type: ignore[union-attr]
        .transitions.is_connected()))


def retain_events(broker: BrokerThread, credentials: Credentials, count: int) -> None:
    """The device sets *count* retained events and leaves its session again."""
    with Clients(broker) as clients:
        device = clients.connect(credentials, clean_session=False)
        for n in range(count):
            device.publish(f"devices/{credentials.name}/events/{n}", b"x", qos=1, retain=True)
    wait_left(broker, credentials.name)


def retained_states(broker: BrokerThread, service: Credentials) -> dict[str, bytes]:
    """The retained messages a new subscriber to every device's state receives."""
    with Clients(broker) as clients:
        subscriber = clients.connect(service)
        assert subscriber.subscribe(STATE, qos=1) == [1]
        received = {}
        while (message := subscriber.receive(timeout=0.5)) is not None:
            assert message.retain
            received[message.topic] = message.payload
        return received


def purges(authority: Authority) -> list[AuditEvent]:
    return [event for event in audit_events(authority.engine, "broker.purge")
            if event.device_id == "d1"]


def test_restart_resumes_sessions_with_queued_messages_and_keeps_retained(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker) -> None:
    d1, d2, control = enroll("d1"), enroll("d2"), issue_service("control")
    first = start_broker()
    leave_persistent_session(first, d1)
    retain_state(first, d2, b"on")
    with Clients(first) as clients:
        sender = clients.connect(control)
        for payload in (b"1", b"2", b"3"):
            sender.publish(TOPIC, payload, qos=1)
    first.stop()
    path = state_file(first)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    second = start_broker()
    with Clients(second) as clients:
        device = clients.connect(d1, clean_session=False)
        assert device.session_present is True
        received = [device.receive() for _ in range(3)]
        assert [(m.payload, m.qos) for m in received if m is not None] == [
            (b"1", 1), (b"2", 1), (b"3", 1)]
        assert device.receive(timeout=0.5) is None
        clients.connect(control).publish(TOPIC, b"after", qos=1)  # the subscription too
        message = device.receive()
        assert message is not None
        assert message.payload == b"after"
    assert retained_states(second, control) == {"devices/d2/state": b"on"}


def test_clean_sessions_are_not_kept(enroll: Enroll, start_broker: StartBroker) -> None:
    credentials = enroll("d1")
    first = start_broker()
    with Clients(first) as clients:
        clients.connect(credentials, clean_session=True).subscribe(FILTER, qos=1)
        clients.connect(enroll("d2"), clean_session=False)  # still connected at shutdown
    first.stop()
    saved = json.loads(state_file(first).read_text())
    assert [s["client_id"] for s in saved["sessions"]] == ["d2"]
    second = start_broker()
    assert second.session_ids() == {"d2"}


@pytest.mark.parametrize("withdraw", ["revoke", "suspend"])
def test_device_withdrawn_while_the_broker_was_down_is_refused_and_purged(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker, sqlite_authority: Authority, withdraw: str) -> None:
    d1, d2, control = enroll("d1"), enroll("d2"), issue_service("control")
    first = start_broker()
    leave_persistent_session(first, d1)
    retain_state(first, d1, b"d1 on")
    retain_state(first, d2, b"d2 on")
    first.stop()
    if withdraw == "revoke":
        sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
    else:
        sqlite_authority.suspend_device(device_id="d1", actor="operator")

    second = start_broker()
    assert second.session_ids() == {"d2"}  # d1's session was purged at start
    with Clients(second) as clients:
        clients.connect(d1, clean_session=False, expect=NOT_AUTHORIZED)
    assert retained_states(second, control) == {"devices/d2/state": b"d2 on"}
    assert wait_until(lambda: len(purges(sqlite_authority)) == 2)
    assert sorted((json.loads(e.detail or "{}")["sessions"], json.loads(e.detail or "{}")[
        "retained"]) for e in purges(sqlite_authority)) == [(0, 1), (1, 0)]
    status = "revoked" if withdraw == "revoke" else "suspended"
    assert {e.reason for e in purges(sqlite_authority)} == {
        f"device d1 {status} while the broker was down"}


def test_certificate_revoked_while_the_broker_was_down_loses_its_session_not_retained(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker, sqlite_authority: Authority) -> None:
    old, control = enroll("d1"), issue_service("control")
    first = start_broker()
    leave_persistent_session(first, old)
    retain_state(first, old, b"on")
    first.stop()
    renewed = rekey(sqlite_authority, old)
    sqlite_authority.revoke_certificate(serial=old.serial, reason="superseded", actor="operator")

    second = start_broker()
    with Clients(second) as clients:
        clients.connect(old, clean_session=False, expect=NOT_AUTHORIZED)
        device = clients.connect(renewed, clean_session=False)
        assert device.session_present is False
    assert retained_states(second, control) == {"devices/d1/state": b"on"}


def test_deliveries_in_flight_resume_after_a_restart(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker) -> None:
    # A QoS 1 PUBLISH not acknowledged is sent again with DUP and its packet identifier; a
    # QoS 2 delivery whose PUBREC came gets its PUBREL again, not the PUBLISH.
    credentials, control = enroll("d1"), issue_service("control")
    first = start_broker()
    with Clients(first) as clients, tls_socket(first.port, credentials) as sock:
        sock.sendall(connect_packet("d1", flags=0x00))
        assert read_packet(sock)[:2] == b"\x20\x02"
        sock.sendall(subscribe_packet(FILTER, qos=2))
        assert read_packet(sock)[0] == 0x90
        sender = clients.connect(control)
        sender.publish(TOPIC, b"qos1", qos=1)
        qos1_id = read_publish(sock)[2]
        sender.publish(TOPIC, b"qos2", qos=2)
        qos2_id = read_publish(sock)[2]
        sock.sendall(pubrec(qos2_id))
        assert read_packet(sock) == pubrel(qos2_id)
    first.stop()

    second = start_broker()
    with tls_socket(second.port, credentials) as sock:
        sock.sendall(connect_packet("d1", flags=0x00))
        assert read_packet(sock) == b"\x20\x02\x01\x00"  # session present
        assert read_publish(sock) == (0x3A, TOPIC, qos1_id, b"qos1")  # QoS 1, DUP
        assert read_packet(sock) == pubrel(qos2_id)


def test_unreleased_inbound_qos2_is_released_after_a_restart(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker) -> None:
    credentials, control = enroll("d1"), issue_service("control")
    first = start_broker()
    with tls_socket(first.port, credentials) as sock:
        sock.sendall(connect_packet("d1", flags=0x00))
        assert read_packet(sock)[:2] == b"\x20\x02"
        topic = b"devices/d1/telemetry"
        body = len(topic).to_bytes(2, "big") + topic + (7).to_bytes(2, "big") + b"held"
        sock.sendall(bytes((0x34, len(body))) + body)  # QoS 2 PUBLISH, packet id 7
        assert read_packet(sock) == pubrec(7)
    first.stop()

    second = start_broker()
    with Clients(second) as clients, tls_socket(second.port, credentials) as sock:
        service = clients.connect(control)
        assert service.subscribe("devices/+/telemetry", qos=2) == [2]
        sock.sendall(connect_packet("d1", flags=0x00))
        assert read_packet(sock) == b"\x20\x02\x01\x00"
        sock.sendall(pubrel(7))
        assert read_packet(sock) == b"\x70\x02\x00\x07"  # PUBCOMP
        message = service.receive()
        assert message is not None
        assert message.payload == b"held"


def test_session_expiry_counts_the_time_the_broker_was_down(
        enroll: Enroll, start_broker: StartBroker) -> None:
    credentials = enroll("d1")
    first = start_broker(session_expiry="1s")
    leave_persistent_session(first, credentials)
    left = time.monotonic()
    first.stop()
    assert wait_until(lambda: time.monotonic() - left > 1.2, timeout=3)
    second = start_broker(session_expiry="1s")
    assert second.session_ids() == set()


def test_a_restart_takes_in_only_what_todays_quotas_allow(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker) -> None:
    credentials, control = enroll("d1"), issue_service("control")
    first = start_broker()
    leave_persistent_session(first, credentials)
    retain_events(first, credentials, 3)
    with Clients(first) as clients:  # queued for the session d1 left
        sender = clients.connect(control)
        for payload in (b"1", b"2", b"3", b"4"):
            sender.publish(TOPIC, payload, qos=1)
    first.stop()

    second = start_broker(max_queued_messages="2", max_retained_messages="1")
    with Clients(second) as clients:
        device = clients.connect(credentials, clean_session=False)
        received = [device.receive(), device.receive()]
        assert [m.payload for m in received if m is not None] == [b"1", b"2"]
        assert device.receive(timeout=0.5) is None
        subscriber = clients.connect(control)
        assert subscriber.subscribe("devices/+/events/#", qos=1) == [1]
        assert subscriber.receive() is not None
        assert subscriber.receive(timeout=0.5) is None  # one retained message for d1


@pytest.mark.parametrize("content", [
    b"not json{", b"\xff\xfe", b'{"format": 2, "sessions": []}',
    b'{"format": 1, "saved_at": "2026-01-01T00:00:00", "sessions": [], "retained": []}',
    b'{"format": 1, "saved_at": "2026-01-01T00:00:00Z", "sessions": [], "retained": ['
    b'{"topic": "a/+", "payload": "eA==", "qos": 0, "owner": null}]}',
    b'{"format": 1, "saved_at": "2026-01-01T00:00:00Z", "retained": [], "sessions": [{'
    b'"client_id": "d2", "kind": "device", "name": "d1", "serial": "ab", "grants": {'
    b'"publish": [], "subscribe": [], "no_dollar": true}, "subscriptions": [], "inflight": [],'
    b' "unreleased": [], "queued": [], "away_for": 0}]}',
], ids=["garbage", "binary", "other-format", "time-without-zone", "wildcard-topic",
        "client-id-of-another-device"])
def test_an_unreadable_state_file_is_set_aside_and_the_broker_starts_empty(
        enroll: Enroll, start_broker: StartBroker, caplog: pytest.LogCaptureFixture,
        content: bytes) -> None:
    first = start_broker()
    leave_persistent_session(first, enroll("d1"))
    first.stop()
    path = state_file(first)
    path.write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="fleet.broker.persistence"):
        second = start_broker()
    assert second.session_ids() == set()
    [aside] = path.parent.glob("state.json.unreadable-*")
    assert aside.read_bytes() == content
    assert any(f"broker state file {path} is unreadable" in r.getMessage()
               and str(aside) in r.getMessage() for r in caplog.records)
    second.stop()
    assert json.loads(path.read_text())["sessions"] == []  # a new file; the old one kept


def test_the_state_is_saved_every_interval(enroll: Enroll, start_broker: StartBroker) -> None:
    broker = start_broker(persistence_interval="200ms")
    leave_persistent_session(broker, enroll("d1"))
    path = state_file(broker)

    def saved() -> list[str]:
        try:
            return [s["client_id"] for s in json.loads(path.read_text())["sessions"]]
        except (FileNotFoundError, ValueError):
            return []

    assert wait_until(lambda: saved() == ["d1"])


def test_persistence_off_reads_and_writes_no_file(
        enroll: Enroll, start_broker: StartBroker) -> None:
    off = start_broker(persistence="false")
    leave_persistent_session(off, enroll("d1"))
    off.stop()
    path = state_file(off)
    assert not path.parent.exists()
    on = start_broker()
    on.stop()
    saved = path.read_bytes()
    assert json.loads(saved)["sessions"] == []  # d1's session was not kept
    again = start_broker(persistence="false")
    leave_persistent_session(again, enroll("d2"))
    again.stop()
    assert path.read_bytes() == saved


def test_an_unreadable_state_file_that_cannot_be_set_aside_is_never_overwritten(
        enroll: Enroll, start_broker: StartBroker, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    first = start_broker()
    first.stop()
    path = state_file(first)
    path.write_bytes(b"not json{")

    def read_only(source: object, target: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as patch, \
            caplog.at_level(logging.ERROR, logger="fleet.broker.persistence"):
        patch.setattr(os, "replace", read_only)  # a rename fails, as on a read-only mount
        second = start_broker(persistence_interval="100ms")
    leave_persistent_session(second, enroll("d1"))
    second.stop()
    assert path.read_bytes() == b"not json{"
    assert any("could not be set aside" in r.getMessage() for r in caplog.records)
