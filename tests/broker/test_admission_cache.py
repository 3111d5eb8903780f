"""The admission cache (fleet.broker.admission_cache): a cache hit reads nothing from the
registry, and a revoked or suspended certificate is refused at its next CONNECT once the
watcher has dropped its connections, as without the cache; the trust rules on a real
registry."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from fleet.authority import Authority
from fleet.broker.admission_cache import AdmissionCache
from fleet.registry import utcnow
from fleet.registry.models import RevocationEvent

from .conftest import Enroll
from .helpers import BrokerThread, Client

NOT_AUTHORIZED = 5


@pytest.fixture
def certificate_reads() -> Iterator[list[str]]:
    """Every statement any engine of this process sends that reads the certificates table."""
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM certificates" in statement:
            statements.append(statement)

    event.listen(Engine, "before_cursor_execute", seen)
    yield statements
    event.remove(Engine, "before_cursor_execute", seen)


def trusted(broker: BrokerThread, serial: str) -> bool:
    """Has the broker's admission cache a trusted entry for *serial* (waiting for it)?"""
    assert broker.server is not None
    cache = broker.server.watcher.admissions
    return broker.wait_for(lambda: cache.hit(serial) is not None)


def test_cache_hit_does_no_registry_read(enroll: Enroll, broker: BrokerThread,
                                         connect: Callable[..., Client],
                                         certificate_reads: list[str]) -> None:
    credentials = enroll("d1")
    connect(credentials).close()
    assert certificate_reads  # the first CONNECT asked the registry
    assert trusted(broker, credentials.serial)
    certificate_reads.clear()
    connect(credentials)
    assert certificate_reads == []


@pytest.mark.parametrize("revoke", ["certificate", "device", "suspend"])
def test_revoked_cached_certificate_refused_at_its_next_connect_after_the_drop(
        revoke: str, enroll: Enroll, sqlite_authority: Authority, broker: BrokerThread,
        connect: Callable[..., Client]) -> None:
    """The event removes the cache entry before the watcher drops the connection, so the
    reconnect that follows the drop is decided by the registry: refused."""
    credentials = enroll("d1")
    device = connect(credentials)
    assert trusted(broker, credentials.serial)
    if revoke == "certificate":
        sqlite_authority.revoke_certificate(serial=credentials.serial, reason="keyCompromise",
                                            actor="operator")
    elif revoke == "device":
        sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
    else:
        sqlite_authority.suspend_device(device_id="d1", actor="operator")
    assert device.disconnected.wait(1.0)
    connect(credentials, expect=NOT_AUTHORIZED)


# -- the trust rules, on the registry's own reads ------------------------------------------


class Watcher:
    """What the cache asks of the watcher: when it last confirmed (None: failing)."""

    def __init__(self) -> None:
        self.confirmed_at: datetime | None = utcnow() - timedelta(seconds=1)


def cache_on(authority: Authority, watcher: Watcher, **kwargs: Any) -> AdmissionCache:
    return AdmissionCache(read=authority.admission_facts, confirmed_at=lambda: watcher.confirmed_at,
                          clock=utcnow, **kwargs)


def revoked(serial: str | None = None, device_id: str | None = None) -> RevocationEvent:
    return RevocationEvent(kind="revoked", serial=serial, device_id=device_id,
                           created_at=utcnow())


def test_entry_trusted_only_after_a_poll_newer_than_it(enroll: Enroll,
                                                      sqlite_authority: Authority) -> None:
    serial = enroll("d1").serial
    watcher = Watcher()
    cache = cache_on(sqlite_authority, watcher)
    assert cache.read(serial) is not None
    assert cache.hit(serial) is None  # read after the last confirmation
    watcher.confirmed_at = utcnow()
    assert cache.hit(serial) is not None


def test_entry_not_trusted_while_the_latest_poll_failed(enroll: Enroll,
                                                       sqlite_authority: Authority) -> None:
    serial = enroll("d1").serial
    watcher = Watcher()
    cache = cache_on(sqlite_authority, watcher)
    cache.read(serial)
    watcher.confirmed_at = None
    assert cache.hit(serial) is None


def test_read_overtaken_by_an_event_is_not_kept(enroll: Enroll,
                                                sqlite_authority: Authority) -> None:
    serial = enroll("d1").serial
    watcher = Watcher()
    applied = threading.Event()

    def read_then_event(wanted: str) -> Any:
        facts = sqlite_authority.admission_facts(wanted)
        cache.invalidate(revoked(device_id="d1"))  # applied while the read was in flight
        applied.set()
        return facts

    cache = AdmissionCache(read=read_then_event, confirmed_at=lambda: watcher.confirmed_at,
                           clock=utcnow)
    assert cache.read(serial) is not None
    assert applied.is_set()
    watcher.confirmed_at = utcnow()
    assert cache.hit(serial) is None
    assert len(cache) == 0


def test_event_of_the_device_removes_every_certificate_of_it(
        enroll: Enroll, sqlite_authority: Authority) -> None:
    first, second, other = enroll("d1").serial, enroll("d2").serial, enroll("d3").serial
    watcher = Watcher()
    cache = cache_on(sqlite_authority, watcher)
    for serial in (first, second, other):
        cache.read(serial)
    watcher.confirmed_at = utcnow()
    cache.invalidate(revoked(device_id="d1"))
    cache.invalidate(revoked(serial=second, device_id="d2"))
    assert cache.hit(first) is None
    assert cache.hit(second) is None
    assert cache.hit(other) is not None


def test_refusals_are_not_kept(enroll: Enroll, sqlite_authority: Authority) -> None:
    """A suspended device is read again at every CONNECT: its resume records no event."""
    serial = enroll("d1").serial
    sqlite_authority.suspend_device(device_id="d1", actor="operator")
    watcher = Watcher()
    cache = cache_on(sqlite_authority, watcher)
    assert cache.read(serial) is not None
    assert len(cache) == 0


def test_at_most_max_entries_oldest_dropped_first(enroll: Enroll,
                                                  sqlite_authority: Authority) -> None:
    serials = [enroll(f"d{index}").serial for index in range(3)]
    watcher = Watcher()
    cache = cache_on(sqlite_authority, watcher, max_entries=2)
    for serial in serials:
        cache.read(serial)
    watcher.confirmed_at = utcnow()
    assert len(cache) == 2
    assert cache.hit(serials[0]) is None
    assert cache.hit(serials[1]) is not None
    assert cache.hit(serials[2]) is not None
