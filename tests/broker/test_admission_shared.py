"""The CONNECT gate and ``fleet diagnose`` decide with the same admission checks: for each case
the CONNACK a real client gets is the one the core's decision names."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography import x509

from fleet import acl
from fleet.authority import Authority, ConnectReturnCode
from fleet.settings import Settings

from .conftest import Enroll
from .helpers import Client, Credentials


def decided(authority: Authority, settings: Settings, device: Credentials, *,
            client_id: str, will_topic: str | None) -> ConnectReturnCode:
    certificate = x509.load_pem_x509_certificate(device.cert.read_bytes())
    return authority.assess(certificate, client_id=client_id, will_topic=will_topic,
                            policy=acl.load_policy(settings.acl_file)).connack


@pytest.mark.parametrize(("case", "client_id", "will_topic", "expected"), [
    ("accepted", "d1", None, ConnectReturnCode.ACCEPTED),
    ("allowed will", "d1", "devices/d1/state", ConnectReturnCode.ACCEPTED),
    ("client id of another device", "d2", None, ConnectReturnCode.IDENTIFIER_REJECTED),
    ("forbidden will", "d1", "devices/d2/commands/x", ConnectReturnCode.NOT_AUTHORIZED),
    ("suspended device", "d1", None, ConnectReturnCode.NOT_AUTHORIZED),
])
def test_gate_answers_what_the_admission_decides(
        case: str, client_id: str, will_topic: str | None, expected: ConnectReturnCode,
        enroll: Enroll, sqlite_authority: Authority, settings: Settings,
        connect: Callable[..., Client]) -> None:
    device = enroll("d1")
    if case == "suspended device":
        sqlite_authority.suspend_device(device_id="d1", actor="operator")
    code = decided(sqlite_authority, settings, device, client_id=client_id,
                   will_topic=will_topic)
    assert code is expected
    will = (will_topic, b"gone", 0, False) if will_topic is not None else None
    connect(device, client_id=client_id, will=will, expect=int(code))
