"""Certificates that fail in the TLS handshake: no MQTT byte reaches the broker."""

from __future__ import annotations

import contextlib
import socket
from datetime import timedelta
from pathlib import Path

import pytest
from pki.x509_factory import make_ca, new_key
from sqlalchemy.engine import Engine

from fleet import pki
from fleet.registry import utcnow

from .conftest import Enroll, write_credentials
from .helpers import BrokerThread, Client, Credentials, audit_events, wait_until


def handshake_refusals(engine: Engine, fragment: str) -> bool:
    return any(fragment in (event.reason or "")
               for event in audit_events(engine, "broker.handshake"))


def assert_refused_in_handshake(broker: BrokerThread, credentials: Credentials | None,
                                chain: Path, engine: Engine, fragment: str) -> None:
    client = Client(broker.port, credentials, ca=chain)
    assert client.connect() is None  # no CONNACK: the connection ended in the handshake
    client.close()
    assert wait_until(lambda: handshake_refusals(engine, fragment)), fragment
    assert broker.session_ids() == set()


def test_handshake_refused_without_certificate(broker: BrokerThread, chain: Path,
                                               sqlite_engine: Engine) -> None:
    assert_refused_in_handshake(broker, None, chain, sqlite_engine,
                                "PEER_DID_NOT_RETURN_A_CERTIFICATE")


def test_handshake_refused_foreign_ca(broker: BrokerThread, chain: Path, tmp_path: Path,
                                      sqlite_engine: Engine) -> None:
    foreign = make_ca(now=utcnow(), name="Other")
    key = new_key()
    cert = foreign.issue("d1", now=utcnow(), key=key)
    credentials = write_credentials(tmp_path, "d1", key, pki.certificate_pem(cert),
                                    format(cert.serial_number, "x"), chain)
    assert_refused_in_handshake(broker, credentials, chain, sqlite_engine,
                                "unable to get local issuer certificate")


def test_handshake_refused_expired_certificate(broker: BrokerThread, enroll: Enroll,
                                               chain: Path, sqlite_engine: Engine) -> None:
    expired = enroll("d1", now=utcnow() - timedelta(days=40))
    assert_refused_in_handshake(broker, expired, chain, sqlite_engine,
                                "certificate has expired")


@pytest.mark.parametrize("payload", [b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00",
                                     b"GET / HTTP/1.1\r\n\r\n"])
def test_plaintext_refused(broker: BrokerThread, sqlite_engine: Engine, payload: bytes) -> None:
    """MQTT or anything else without TLS on the TLS port is closed at once."""
    with socket.create_connection(("127.0.0.1", broker.port), timeout=5) as sock:
        sock.sendall(payload)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(16) == b""
    assert wait_until(lambda: any("not a TLS ClientHello" in (e.reason or "")
                                  for e in audit_events(sqlite_engine, "broker.handshake")))
