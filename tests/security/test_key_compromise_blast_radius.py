"""A keyCompromise revocation of one certificate drops every live connection of every
certificate with the same key, within a second, and none of them connects again."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from broker.conftest import StartBroker, write_credentials
from broker.helpers import Client
from pki.x509_factory import device_csr, new_key

from fleet import pki
from fleet.authority import Authority, TokenCredential

pytestmark = pytest.mark.slow


def test_key_compromise_drops_every_certificate_of_the_key(
        sqlite_authority: Authority, start_broker: StartBroker, tmp_path: Path,
        chain: Path) -> None:
    broker = start_broker()
    stolen = new_key()
    sqlite_authority.create_group(name="g1", actor="operator")
    token = sqlite_authority.create_tokens(group="g1", actor="factory")[0]
    first = sqlite_authority.enroll(credential=TokenCredential(str(token.token)),
                                    csr=device_csr("d1", stolen), actor="factory")
    renewed = sqlite_authority.reenroll(client_certificate=first.certificate,
                                        csr=device_csr("d1", stolen), actor="factory")
    services = [sqlite_authority.issue_service_certificate(
        name="ingest", public_key=stolen.public_key(), actor="operator") for _ in range(2)]
    credentials = [
        write_credentials(tmp_path / "old", "d1", stolen, pki.certificate_pem(first.certificate),
                          first.record.serial, chain),
        *(dataclasses.replace(write_credentials(
            tmp_path / f"svc{i}", "ingest", stolen, pki.certificate_pem(s.certificate),
            s.record.serial, chain), name=f"ingest-{i}") for i, s in enumerate(services)),
    ]
    clients = [Client(broker.port, c, client_id=c.name) for c in credentials]
    try:
        for client in clients:
            assert client.connect() == 0  # the superseded one too: within its grace
        revoked_at = time.monotonic()
        sqlite_authority.revoke_certificate(serial=renewed.record.serial,
                                            reason="keyCompromise", actor="operator")
        for client in clients:
            assert client.disconnected.wait(1.0)
        dropped_after = time.monotonic() - revoked_at
        print(f"keyCompromise of 1 serial: {len(clients)} connections of 3 other "
              f"certificates dropped within {dropped_after * 1000:.0f} ms")
    finally:
        for client in clients:
            client.close()
    for credential in credentials:
        again = Client(broker.port, credential, client_id=credential.name)
        try:
            assert again.connect() in (None, 5)  # refused in the handshake or not authorized
        finally:
            again.close()
