"""CONNECT refusals by the gate: CONNACK 0x05, 0x02 or 0x01, each audited."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from pki.x509_factory import new_key
from sqlalchemy.engine import Engine

from fleet import pki
from fleet.authority import Authority
from fleet.registry import utcnow

from .conftest import Enroll, write_credentials
from .helpers import (
    BrokerThread,
    Client,
    Credentials,
    audit_events,
    closed_within,
    connect_packet,
    tls_socket,
    wait_until,
)

NOT_AUTHORIZED, IDENTIFIER_REJECTED, UNACCEPTABLE_PROTOCOL = 5, 2, 1


def refused_with(engine: Engine, fragment: str) -> bool:
    return any(fragment in (e.reason or "") and e.outcome == "refused"
               for e in audit_events(engine, "broker.connect"))


def test_connect_refused_revoked_certificate(enroll: Enroll, sqlite_authority: Authority,
                                             connect: Callable[..., Client],
                                             sqlite_engine: Engine) -> None:
    device = enroll("d1")
    sqlite_authority.revoke_certificate(serial=device.serial, reason="keyCompromise",
                                        actor="operator")
    connect(device, expect=NOT_AUTHORIZED)
    assert wait_until(lambda: refused_with(sqlite_engine, "is revoked"))


def test_connect_refused_revoked_device(enroll: Enroll, sqlite_authority: Authority,
                                        connect: Callable[..., Client]) -> None:
    device = enroll("d1")
    sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
    connect(device, expect=NOT_AUTHORIZED)


def test_connect_refused_suspended_device_then_readmitted(
        enroll: Enroll, sqlite_authority: Authority, connect: Callable[..., Client],
        sqlite_engine: Engine) -> None:
    device = enroll("d1")
    sqlite_authority.suspend_device(device_id="d1", actor="operator")
    connect(device, expect=NOT_AUTHORIZED)
    assert wait_until(lambda: refused_with(sqlite_engine, "device d1 is suspended"))
    sqlite_authority.resume_device(device_id="d1", actor="operator")
    connect(device)


def test_connect_refused_certificate_unknown_to_registry(
        sqlite_authority: Authority, connect: Callable[..., Client], tmp_path: Path,
        chain: Path) -> None:
    """Signed by the fleet CA but never recorded (e.g. a restored backup): not admitted."""
    key = new_key()
    profile = pki.identity_profile(pki.Identity("device", "ghost"), trust_domain="fleet.local",
                                   lifetime=timedelta(days=1))
    ca = sqlite_authority.ca
    cert = pki.issue_certificate(profile=profile, public_key=key.public_key(),
                                 issuer_key=ca.issuing_key, issuer=ca.issuing, now=utcnow())
    ghost = write_credentials(tmp_path, "ghost", key, pki.certificate_pem(cert),
                              format(cert.serial_number, "x"), chain)
    connect(ghost, expect=NOT_AUTHORIZED)


def test_connect_refused_client_id_spoofing(enroll: Enroll, connect: Callable[..., Client],
                                            sqlite_engine: Engine) -> None:
    enroll("d2")
    connect(enroll("d1"), client_id="d2", expect=IDENTIFIER_REJECTED)
    assert wait_until(lambda: refused_with(sqlite_engine, "client id 'd2' does not match"))


def test_connect_refused_empty_client_id(enroll: Enroll, broker: BrokerThread) -> None:
    with tls_socket(broker.port, enroll("d1")) as sock:
        sock.sendall(connect_packet(""))
        assert sock.recv(4) == bytes((0x20, 0x02, 0x00, IDENTIFIER_REJECTED))


@pytest.mark.parametrize(("client_id", "expect"), [
    ("ingest", 0), ("ingest-2", 0), ("ingest:eu", 0),
    ("ingestor", IDENTIFIER_REJECTED), ("d1", IDENTIFIER_REJECTED),
])
def test_service_client_id_rule(issue_service: Callable[[str], Credentials],
                                connect: Callable[..., Client], client_id: str,
                                expect: int) -> None:
    connect(issue_service("ingest"), client_id=client_id, expect=expect)


@pytest.mark.parametrize(("name", "level"), [(b"MQTT", 5), (b"MQIsdp", 3)])
def test_connect_refused_other_protocol_versions(enroll: Enroll, broker: BrokerThread,
                                                 name: bytes, level: int) -> None:
    with tls_socket(broker.port, enroll("d1")) as sock:
        sock.sendall(connect_packet("d1", name=name, level=level))
        assert sock.recv(4) == bytes((0x20, 0x02, 0x00, UNACCEPTABLE_PROTOCOL))
        assert closed_within(sock, 2) is not None


@pytest.mark.parametrize("packet", [
    connect_packet("d1", flags=0x03),            # reserved flag set
    connect_packet("d1", flags=0x42),            # password without user name
    connect_packet("d1", flags=0x1A),            # will QoS without will flag
    connect_packet("d1", tail=b"junk"),          # trailing bytes
    connect_packet("d1", name=b"HTTP"),          # not MQTT at all
    bytes((0xC0, 0x00)),                          # PINGREQ before CONNECT
    bytes((0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F)),  # malformed remaining length
])
def test_connect_refused_malformed_closes_without_connack(
        enroll: Enroll, broker: BrokerThread, sqlite_engine: Engine, packet: bytes) -> None:
    with tls_socket(broker.port, enroll("d1")) as sock:
        sock.sendall(packet)
        assert closed_within(sock, 2) is not None
    assert broker.session_ids() == set()
    assert wait_until(lambda: len(audit_events(sqlite_engine, "broker.connect")) == 1)


def test_connect_refused_oversized_connect(enroll: Enroll, broker: BrokerThread) -> None:
    with tls_socket(broker.port, enroll("d1")) as sock:
        sock.sendall(bytes((0x10, 0x80, 0x80, 0x10)))  # announces 256 KiB
        assert closed_within(sock, 2) is not None
