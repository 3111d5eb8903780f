"""One fleet for every system of a run: a data dir with the CA, N enrolled devices and a service.

The devices are written straight into the registry in one transaction (the certificates are
the ones the Authority issues; this set-up is not measured). Every system under test gets the
same CA chain, server certificate and device certificates from here.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleet import pki
from fleet.authority import Authority
from fleet.ca import Paths, ensure_server_certificate, init_ca
from fleet.pki import Identity
from fleet.registry import DeviceStatus, make_engine, migrate, utcnow
from fleet.registry import devices as devices_db
from fleet.settings import Settings, load_settings

GROUP = "bench"


@dataclass(frozen=True)
class Credential:
    """A client identity on disk: the CN is the device id or service name."""

    name: str
    cert: Path
    key: Path


@dataclass
class Fixture:
    work: Path
    settings: Settings
    authority: Authority
    devices: list[Credential]
    service: Credential
    paths: Paths
    env: dict[str, str]

    @property
    def chain(self) -> Path:
        return self.paths.chain


def fleet_env(data_dir: Path) -> dict[str, str]:
    """The environment every Fleet process of the run gets (metrics on free ports, so that a
    run never collides with a Fleet already listening on the defaults)."""
    return {**os.environ, "FLEET_DATA_DIR": str(data_dir),
            "FLEET_CA_PASSPHRASE": os.environ.get("FLEET_CA_PASSPHRASE")
            or secrets.token_urlsafe(16),
            "FLEET_BROKER_METRICS_PORT": "0", "FLEET_EST_METRICS_PORT": "0"}


def provision(count: int, work: Path) -> Fixture:
    env = fleet_env(work / "data")
    os.environ["FLEET_CA_PASSPHRASE"] = env["FLEET_CA_PASSPHRASE"]
    settings = load_settings(environ=env)
    ca, _ = init_ca(settings, now=utcnow())
    ensure_server_certificate(settings, ca, now=utcnow())
    engine = make_engine(settings.effective_database_url, create=True)
    migrate(engine)
    authority = Authority(settings=settings, engine=engine, ca=ca)
    authority.create_group(name=GROUP, actor="bench")
    keys = work / "clients"
    keys.mkdir()
    devices = []
    now = utcnow()
    with authority.transaction() as session:  # one transaction for the whole fleet
        for index in range(count):
            name = f"dev-{index:05d}"
            key = pki.generate_private_key("p256")
            devices_db.create_device(session=session, device_id=name, group=GROUP,
                                     status=DeviceStatus.ACTIVE, now=now)
            cert = authority._sign(Identity("device", name), key.public_key(),
                                   settings.device_lifetime, now)
            authority._record(session, cert, Identity("device", name), now)
            devices.append(_write(keys, name, key, cert))
    service_key = pki.generate_private_key("p256")
    issued = authority.issue_service_certificate(name="ingest", public_key=service_key.public_key(),
                                                 actor="bench")
    service = _write(keys, "ingest", service_key, issued.certificate)
    return Fixture(work=work, settings=settings, authority=authority, devices=devices,
                   service=service, paths=Paths.of(settings), env=env)


def _write(directory: Path, name: str, key: pki.PrivateKey, cert: x509.Certificate
           ) -> Credential:
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(pki.private_key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Credential(name, cert_path, key_path)
