"""A manufacturer certificate (IDevID) is for enrollment only: the broker refuses it in the
TLS handshake even when its vendor is registered, since vendor CAs are never broker trust."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from device_sim.manufacturer import VendorCA
from fleet.authority import Authority

from .helpers import BrokerThread, Credentials
from .test_02_tls_refused import assert_refused_in_handshake


def test_manufacturer_certificate_is_refused_by_the_broker(
    broker: BrokerThread, sqlite_authority: Authority, chain: Path, tmp_path: Path,
    sqlite_engine: Engine,
) -> None:
    acme = VendorCA("Acme")
    sqlite_authority.ensure_group(name="cameras", actor="operator")
    sqlite_authority.add_vendor(name="acme", ca_pem=acme.pem().encode(), group="cameras",
                                actor="operator")
    idevid = acme.issue("SN-1", common_name="SN-1")
    cert, key = idevid.write(tmp_path, "SN-1")
    credentials = Credentials(name="SN-1", cert=cert, key=key,
                              serial=format(idevid.certificate.serial_number, "x"), ca=chain)
    assert_refused_in_handshake(broker, credentials, chain, sqlite_engine,
                                "unable to get local issuer certificate")
