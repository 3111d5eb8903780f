"""SUBSCRIBE filters are granted only if every topic they match is allowed (containment)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.engine import Engine

from .conftest import Enroll
from .helpers import Client, Credentials, audit_events, wait_until

REFUSED = 0x80


@pytest.mark.parametrize("topic_filter", [
    "devices/+/commands/#", "#", "+/#", "$SYS/#", "$SYS/broker/uptime", "devices/d2/commands/#",
    "groups/+/broadcast/#", "devices/d1/#", "devices/d1/telemetry", "groups/g2/broadcast/#",
])
def test_subscribe_denied_gets_0x80(enroll: Enroll, connect: Callable[..., Client],
                                    topic_filter: str) -> None:
    assert connect(enroll("d1", group="g1")).subscribe(topic_filter) == [REFUSED]


def test_subscribe_mixed_packet_grants_only_allowed(enroll: Enroll,
                                                    connect: Callable[..., Client],
                                                    sqlite_engine: Engine) -> None:
    device = connect(enroll("d1"))
    codes = device.subscribe("devices/d1/commands/+", "devices/+/commands/#",
                             "groups/g1/broadcast/news")
    assert codes == [1, REFUSED, 1]
    assert wait_until(lambda: any("may not subscribe 'devices/+/commands/#'" in (e.reason or "")
                                  for e in audit_events(sqlite_engine, "broker.subscribe")))


def test_subscribe_denied_filter_receives_nothing(
        enroll: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client]) -> None:
    spy = connect(enroll("spy"))
    assert spy.subscribe("devices/+/commands/#") == [REFUSED]
    connect(issue_service("control")).publish("devices/d9/commands/x", b"1", qos=1)
    assert spy.receive(timeout=0.3) is None


def test_service_subscribe_denied_outside_policy(issue_service: Callable[[str], Credentials],
                                                 connect: Callable[..., Client]) -> None:
    service = connect(issue_service("ingest"))
    assert service.subscribe("devices/+/telemetry", "devices/#", "#") == [1, REFUSED, REFUSED]
