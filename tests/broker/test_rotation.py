"""The broker across an issuing CA rotation, with real paho clients: devices of both issuing
CAs connect during the overlap, a revoked old-CA certificate is dropped and refused, a device
renewed to the new CA connects, and once the old CA is retired its certificates are refused
(in the handshake, and at the issuer check when the client sends the retired CA along)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from fleet.authority import Authority
from fleet.ca import Paths

from .conftest import Enroll, StartBroker, rekey
from .helpers import Clients, Credentials, audit_events, wait_until

NOT_AUTHORIZED = 5
NEW_CA = "CN=Fleet Issuing CA 2,O=Fleet"


def test_during_the_overlap_devices_of_both_issuing_cas_connect(
        enroll: Enroll, sqlite_authority: Authority, start_broker: StartBroker) -> None:
    old = enroll("d-old")
    sqlite_authority.rotate_issuing(actor="operator")
    new = enroll("d-new")
    broker = start_broker()
    with Clients(broker) as clients:
        old_client = clients.connect(old)
        new_client = clients.connect(new)
        new_client.subscribe("devices/d-new/commands/#")
        old_client.publish("devices/d-old/telemetry", b"still here", qos=1)
        renewed = rekey(sqlite_authority, old)  # the next renewal moves it to the new CA
        clients.connect(renewed, client_id="d-old")


def test_a_revoked_old_ca_certificate_is_on_its_crl_dropped_and_refused(
        enroll: Enroll, sqlite_authority: Authority, start_broker: StartBroker) -> None:
    old = enroll("d-old")
    sqlite_authority.rotate_issuing(actor="operator")
    new = enroll("d-new")
    broker = start_broker()
    with Clients(broker) as clients:
        old_client = clients.connect(old)
        new_client = clients.connect(new)
        sqlite_authority.revoke_certificate(serial=old.serial, reason="keyCompromise",
                                            actor="operator")
        assert old_client.disconnected.wait(2)
        clients.connect(old, expect=NOT_AUTHORIZED)
        assert not new_client.disconnected.is_set()
    old_crl = sqlite_authority.current_crl(1)
    assert old_crl.get_revoked_certificate_by_serial_number(int(old.serial, 16)) is not None
    assert sqlite_authority.current_crl(2).get_revoked_certificate_by_serial_number(
        int(old.serial, 16)) is None


def test_after_retirement_an_old_ca_certificate_is_refused(
        enroll: Enroll, sqlite_authority: Authority, start_broker: StartBroker,
        sqlite_engine: Engine) -> None:
    old = enroll("d-old")
    sqlite_authority.rotate_issuing(actor="operator")
    running = start_broker()
    with Clients(running) as clients:
        connected = clients.connect(old)
        sqlite_authority.retire_issuing(actor="operator", force=True)
        assert connected.disconnected.wait(2)  # revoked with the retirement: dropped
    restarted = start_broker()  # trusts the issuing CAs on disk: the retired one no more
    with Clients(restarted) as clients:
        clients.connect(old, expect=None)  # the TLS handshake fails
        retired = Paths.of(sqlite_authority.settings).retired(1).read_text()
        bundle = old.cert.with_name("d-old-with-ca.pem")
        bundle.write_text(old.cert.read_text() + retired)
        with_ca = Credentials(name="d-old", cert=bundle, key=old.key, serial=old.serial,
                              ca=old.ca)
        clients.connect(with_ca, expect=NOT_AUTHORIZED)
    assert wait_until(lambda: any(f"not by {NEW_CA}" in (e.reason or "")
                                  for e in audit_events(sqlite_engine, "broker.connect")))
