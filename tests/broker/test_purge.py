"""What a revoked identity left behind is purged once its connections are gone
(fleet.broker.watcher): revoking a device takes its stored session and every retained message
it set, revoking one certificate only the sessions last held through it. Each purge is one
``broker.purge`` audit event with its counts."""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy.engine import Engine

from fleet.authority import Authority
from fleet.broker.quotas import RetainedLedger

from .conftest import Enroll, rekey
from .helpers import BrokerThread, Client, Credentials, audit_events, wait_until

STATE = "devices/d1/state"


def purges(engine: Engine, device_id: str) -> list[dict[str, int]]:
    """The counts of every broker.purge event about *device_id*."""
    return [json.loads(event.detail or "{}") for event in audit_events(engine, "broker.purge")
            if event.device_id == device_id]


def retained_topics(broker: BrokerThread) -> set[str]:
    assert broker.server is not None
    retained = broker.server.broker.retained_messages
    return broker.run(lambda: set(retained))


def test_ledger_release_forgets_what_the_device_still_holds() -> None:
    ledger = RetainedLedger(max_messages=5, max_bytes=100)
    ledger.set("d1", "a", 10)
    ledger.set("d1", "b", 10)
    ledger.set("d2", "c", 10)
    ledger.set(None, "b", 10)  # a service replaced d1's message on b: no longer d1's
    assert ledger.begins("d1")
    assert ledger.release("d1") == ["a"]
    assert ledger.usage("d1") == (0, 0)
    assert ledger.begins("d1")  # its refusal episode is forgotten too
    assert ledger.release("d1") == []
    ledger.clear("a")  # a released topic has no owner left to free
    assert ledger.usage("d2") == (1, 10)


def test_revoking_a_device_purges_its_session_and_retained_messages(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread, sqlite_authority: Authority,
        sqlite_engine: Engine) -> None:
    control = connect(issue_service("control"))
    control.publish("devices/d1/commands/config", b"by a service", qos=1, retain=True)
    device = connect(enroll("d1"), clean_session=False,
                     will=(STATE, b"offline", 1, True))
    device.subscribe("devices/d1/commands/#")
    device.publish(STATE, b"online", qos=1, retain=True)
    device.publish("devices/d1/events/boot", b"1", qos=1, retain=True)
    assert retained_topics(broker) == {"devices/d1/commands/config", STATE,
                                       "devices/d1/events/boot"}
    sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
    assert wait_until(lambda: purges(sqlite_engine, "d1") == [
        {"sessions": 1, "queued": 0, "retained": 2, "wills": 1}])
    assert retained_topics(broker) == {"devices/d1/commands/config"}
    assert "d1" not in broker.session_ids()


def test_revoking_one_certificate_keeps_the_device_retained_messages(
        enroll: Enroll, connect: Callable[..., Client], broker: BrokerThread,
        sqlite_authority: Authority, sqlite_engine: Engine) -> None:
    """After a rekey the old certificate is revoked: the session it last held goes, what the
    device retained stays (it belongs to the device, still active with its new key)."""
    old = enroll("d1")
    device = connect(old, clean_session=False)
    device.subscribe("devices/d1/commands/#")
    device.publish(STATE, b"v1", qos=1, retain=True)
    device.close()
    assert wait_until(lambda: broker.connection_count() == 0)
    current = rekey(sqlite_authority, old)
    sqlite_authority.revoke_certificate(serial=old.serial, reason="superseded",
                                        actor="operator")
    assert wait_until(lambda: purges(sqlite_engine, "d1") == [
        {"sessions": 1, "queued": 0, "retained": 0, "wills": 0}])
    assert STATE in retained_topics(broker)
    assert not connect(current, clean_session=False).session_present
