"""A device and a service whose names collided before the registry kept them apart.

The registry now refuses such pairs (tests/authority/test_namespaces.py); for pairs created
earlier the gate adds no rule of its own: a client id held by one identity, live or as a stored
session, is refused to every other (S6), so neither can take over or wipe the other's session.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fleet.registry import names as names_db

from .conftest import Enroll
from .helpers import BrokerThread, Client, Credentials

IDENTIFIER_REJECTED = 2


@pytest.fixture
def legacy_device(enroll: Enroll, monkeypatch: pytest.MonkeyPatch) -> Enroll:
    """Enroll a device as before the namespaces were kept disjoint."""

    def enroll_unchecked(device_id: str) -> Credentials:
        with monkeypatch.context() as patch:
            patch.setattr(names_db, "require_disjoint", lambda **_: None)
            return enroll(device_id)

    return enroll_unchecked


def test_legacy_collision_first_holder_keeps_its_client_id(
        legacy_device: Enroll, issue_service: Callable[[str], Credentials],
        connect: Callable[..., Client], broker: BrokerThread) -> None:
    service = issue_service("telemetry")
    device = legacy_device("telemetry-0")
    holder = connect(device, clean_session=False)
    assert holder.subscribe("devices/telemetry-0/commands/#", qos=1) == [1]
    holder.close()
    assert "telemetry-0" in broker.session_ids()
    connect(service, client_id="telemetry-0", clean_session=True, expect=IDENTIFIER_REJECTED)
    # Its own name (and its name + any other suffix) stays usable.
    connect(service).publish("devices/telemetry-0/commands/x", b"1", qos=1)
    message = connect(device, clean_session=False).receive()  # the stored session survived
    assert message is not None
    assert message.topic == "devices/telemetry-0/commands/x"
