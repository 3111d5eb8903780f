"""Nothing a revoked or suspended device left on the broker outlives the revocation: its
retained messages (wills retained included) are not served to a new subscriber, no will of
it is published afterwards, and a device resumed after a suspension starts clean.

Revocations go through the Authority, as ``fleet device revoke`` does; the broker polls every
250 ms."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from broker.conftest import Enroll, StartBroker
from broker.helpers import (
    BrokerThread,
    Clients,
    Credentials,
    connect_packet,
    read_connack,
    tls_socket,
    wait_until,
)

from fleet.authority import Authority

pytestmark = pytest.mark.slow

STATE = "devices/d1/state"
COMMANDS = "devices/d1/commands/#"
WHAT_D1_RETAINS = (STATE, "devices/d1/events/#")  # what a service may subscribe to


def retained_gone(broker: BrokerThread, topic: str) -> float | None:
    """Seconds until *topic* has no retained message any more, or None."""
    assert broker.server is not None
    retained = broker.server.broker.retained_messages
    start = time.monotonic()
    if wait_until(lambda: broker.run(lambda: topic not in retained)):
        return time.monotonic() - start
    return None


def assert_nothing_retained(clients: Clients, monitor: Credentials, client_id: str) -> None:
    """A subscriber arriving now receives no retained message of d1."""
    late = clients.connect(monitor, client_id=client_id)
    assert late.subscribe(*WHAT_D1_RETAINS) == [1, 1]
    assert late.receive(timeout=0.5) is None


def test_revoked_device_retained_message_not_served_to_a_new_subscriber(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker, sqlite_authority: Authority) -> None:
    broker = start_broker()
    monitor = issue_service("monitor")
    with Clients(broker) as clients:
        device = clients.connect(enroll("d1"))
        device.publish(STATE, b"firmware=1.0; door=open", qos=1, retain=True)
        before = clients.connect(monitor, client_id="monitor-before")
        before.subscribe(*WHAT_D1_RETAINS)
        message = before.receive()
        assert message is not None
        assert message.retain
        sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
        elapsed = retained_gone(broker, STATE)
        assert elapsed is not None
        assert elapsed < 1.0
        assert_nothing_retained(clients, monitor, "monitor-after")


def test_revoked_device_will_not_published_after_the_revocation(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker, sqlite_authority: Authority) -> None:
    """A retained will from an earlier broken connection goes, and the live connection's will
    is withheld when the revocation drops it."""
    broker = start_broker()
    credentials, monitor = enroll("d1"), issue_service("monitor")
    with Clients(broker) as clients:
        watcher = clients.connect(monitor, client_id="monitor-live")
        watcher.subscribe(*WHAT_D1_RETAINS)
        with tls_socket(broker.port, credentials) as sock:  # dies without a DISCONNECT
            sock.sendall(connect_packet("d1", will=(STATE, b"lost")))
            assert read_connack(sock) == 0
        earlier = watcher.receive()
        assert earlier is not None
        assert earlier.payload == b"lost"  # published before any revocation: as it should be
        clients.connect(credentials, will=(STATE, b"offline", 1, True))
        sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
        assert retained_gone(broker, STATE) is not None
        assert watcher.receive(timeout=0.5) is None
        assert_nothing_retained(clients, monitor, "monitor-after")


def test_suspended_device_retained_messages_purged(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker, sqlite_authority: Authority) -> None:
    broker = start_broker()
    with Clients(broker) as clients:
        device = clients.connect(enroll("d1"), will=(STATE, b"offline", 1, True))
        device.publish("devices/d1/events/alarm", b"tamper", qos=1, retain=True)
        sqlite_authority.suspend_device(device_id="d1", actor="operator", reason="rogue")
        assert device.disconnected.wait(1.0)
        assert retained_gone(broker, "devices/d1/events/alarm") is not None
        assert_nothing_retained(clients, issue_service("monitor"), "monitor")


def test_resumed_device_starts_clean(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        start_broker: StartBroker, sqlite_authority: Authority) -> None:
    """No subscription, queued message or retained message from before the suspension."""
    broker = start_broker()
    credentials = enroll("d1")
    with Clients(broker) as clients:
        control = clients.connect(issue_service("control"))
        device = clients.connect(credentials, clean_session=False)
        device.subscribe(COMMANDS)
        device.publish(STATE, b"before", qos=1, retain=True)
        device.close()
        control.publish("devices/d1/commands/reboot", b"queued", qos=1)  # kept for d1
        sqlite_authority.suspend_device(device_id="d1", actor="operator")
        assert retained_gone(broker, STATE) is not None
        assert wait_until(lambda: "d1" not in broker.session_ids())
        sqlite_authority.resume_device(device_id="d1", actor="operator")
        resumed = clients.connect(credentials, clean_session=False)
        assert resumed.session_present is False
        assert resumed.receive(timeout=0.5) is None  # neither the queued command
        control.publish("devices/d1/commands/reboot", b"new", qos=1)
        assert resumed.receive(timeout=0.5) is None  # nor the old subscription
        assert_nothing_retained(clients, issue_service("monitor"), "monitor")
