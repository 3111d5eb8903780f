"""Broker fixtures: devices enrolled through the Authority, a broker per test, real clients."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from pki.x509_factory import device_csr, new_key

from fleet import pki
from fleet.authority import Authority, TokenCredential
from fleet.ca import Paths
from fleet.settings import Settings, load_settings

from .helpers import BrokerThread, Client, Clients, Credentials

Enroll = Callable[..., Credentials]
StartBroker = Callable[..., BrokerThread]


def write_credentials(directory: Path, name: str, key: pki.PrivateKey, cert_pem: str,
                      serial: str, ca: Path) -> Credentials:
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(pki.private_key_pem(key))
    key_path.chmod(0o600)
    cert_path.write_text(cert_pem)
    return Credentials(name=name, cert=cert_path, key=key_path, serial=serial, ca=ca)


@pytest.fixture
def chain(settings: Settings) -> Path:
    return Paths.of(settings).chain


@pytest.fixture
def enroll(sqlite_authority: Authority, tmp_path: Path, chain: Path) -> Enroll:
    """Enroll a device with a one-time token and a CSR, as EST simpleenroll does."""

    def enroll(device_id: str, group: str = "g1", *, authority: Authority | None = None,
               now: datetime | None = None) -> Credentials:
        authority = authority or sqlite_authority
        if now is not None:
            authority = Authority(settings=authority.settings, engine=authority.engine,
                                  ca=authority.ca, clock=lambda: now)
        authority.ensure_group(name=group, actor="operator")
        token = authority.create_tokens(group=group, actor="factory")[0]
        key = new_key()
        issued = authority.enroll(credential=TokenCredential(str(token.token)),
                                  csr=device_csr(device_id, key), actor="factory")
        return write_credentials(tmp_path / "devices", device_id, key,
                                 pki.certificate_pem(issued.certificate), issued.record.serial,
                                 chain)

    return enroll


@pytest.fixture
def issue_service(sqlite_authority: Authority, tmp_path: Path,
                  chain: Path) -> Callable[[str], Credentials]:
    def issue(name: str) -> Credentials:
        key = new_key()
        issued = sqlite_authority.issue_service_certificate(name=name,
                                                            public_key=key.public_key(),
                                                            actor="operator")
        return write_credentials(tmp_path / "services", name, key,
                                 pki.certificate_pem(issued.certificate), issued.record.serial,
                                 chain)

    return issue


@pytest.fixture
def start_broker(data_dir: Path, sqlite_authority: Authority) -> Iterator[StartBroker]:
    """Start a broker on a free port with setting overrides, e.g. connect_timeout="1s"."""
    started: list[BrokerThread] = []

    def start(*, database_url: str | None = None, superseded_grace: str | None = None,
              busy_timeout: str | None = None, **overrides: str) -> BrokerThread:
        env = {f"FLEET_BROKER_{key.upper()}": value for key, value in overrides.items()}
        env.setdefault("FLEET_AUDIT_REFUSAL_INTERVAL", "100ms")  # aggregates show up at once
        env.setdefault("FLEET_BROKER_METRICS_PORT", "-1")  # off; a test of /metrics asks for 0
        if database_url:
            env["FLEET_DATABASE_URL"] = database_url
        if superseded_grace:
            env["FLEET_CERTIFICATES_SUPERSEDED_GRACE"] = superseded_grace
        if busy_timeout:
            env["FLEET_DATABASE_BUSY_TIMEOUT"] = busy_timeout
        broker = BrokerThread(load_settings(environ={"FLEET_DATA_DIR": str(data_dir), **env}))
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def broker(start_broker: StartBroker) -> BrokerThread:
    return start_broker()


@pytest.fixture
def connect(broker: BrokerThread) -> Iterator[Callable[..., Client]]:
    """Connect a paho client to the broker; asserts CONNACK 0 unless expect= says otherwise."""
    with Clients(broker) as clients:
        yield clients.connect


def rekey(authority: Authority, old: Credentials) -> Credentials:
    """Re-enroll with *old* and a new key, as EST simplereenroll does; *old* is superseded."""
    key = new_key()
    renewed = authority.reenroll(
        client_certificate=x509.load_pem_x509_certificate(old.cert.read_bytes()),
        csr=device_csr(old.name, key), actor=old.name)
    return write_credentials(old.cert.parent / "renewed", old.name, key,
                             pki.certificate_pem(renewed.certificate), renewed.record.serial,
                             old.ca)


@pytest.fixture
def started_mosquitto(tmp_path: Path, tool: Callable[[str], str]
                      ) -> Iterator[Callable[[Path, int], subprocess.Popen[bytes]]]:
    """Start the real Mosquitto on a configuration and wait until it listens on port;
    stopped at the end of the test (a process stopped earlier is left as it is)."""
    processes: list[subprocess.Popen[bytes]] = []
    binary = tool("mosquitto")

    def start(conf: Path, port: int) -> subprocess.Popen[bytes]:
        log = (tmp_path / "mosquitto.log").open("ab")
        process = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
        processes.append(process)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "mosquitto.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return process
            except OSError:
                time.sleep(0.05)
        pytest.fail("mosquitto did not listen")

    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()
            process.wait(10)
