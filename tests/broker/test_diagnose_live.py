"""`fleet diagnose --host`: a real TLS handshake and CONNECT against the running broker, and
the reason the broker recorded when it refused."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pki.x509_factory import new_key
from typer.testing import CliRunner

from fleet import pki
from fleet.authority import Authority
from fleet.cli.app import EXIT_REFUSED, app

from .conftest import Enroll, write_credentials
from .helpers import BrokerThread, Credentials


def live(data_dir: Path, port: int, device: Credentials, *extra: str) -> tuple[int, Any, str]:
    result = CliRunner().invoke(app, [
        "--data-dir", str(data_dir), "diagnose", "--cert", str(device.cert), "--key",
        str(device.key), "--host", "127.0.0.1", "--port", str(port), "--timeout", "5", "--json",
        *extra])
    return result.exit_code, json.loads(result.stdout), result.stderr


def test_diagnose_live_admitted(enroll: Enroll, broker: BrokerThread, data_dir: Path) -> None:
    code, report, _ = live(data_dir, broker.port, enroll("d1"))
    assert code == 0
    assert report["admitted"] is True
    assert report["connack"] == "0x00 accepted"
    assert report["audited_reason"] is None


def test_diagnose_live_refused_client_id_names_the_audited_reason(
        enroll: Enroll, broker: BrokerThread, data_dir: Path) -> None:
    code, report, stderr = live(data_dir, broker.port, enroll("d1"), "--client-id", "d2")
    assert code == EXIT_REFUSED
    assert report["connack"] == "0x02 identifier rejected"
    assert "does not match the certificate" in report["audited_reason"]
    assert "refused this certificate (CONNACK 0x02 identifier rejected)" in stderr


def test_diagnose_live_refused_revoked_device(enroll: Enroll, broker: BrokerThread,
                                              data_dir: Path,
                                              sqlite_authority: Authority) -> None:
    device = enroll("d1")
    sqlite_authority.revoke_device(device_id="d1", reason="keyCompromise", actor="operator")
    code, report, _ = live(data_dir, broker.port, device)
    assert code == EXIT_REFUSED
    assert report["connack"] == "0x05 not authorized"
    assert "revoked" in report["audited_reason"]


def test_diagnose_live_refused_foreign_certificate_in_the_handshake(
        broker: BrokerThread, data_dir: Path, tmp_path: Path, chain: Path) -> None:
    key = pki.generate_private_key()
    now = datetime.now(UTC)
    root = pki.issue_certificate(profile=pki.ca_profile("Other Root", lifetime=timedelta(days=1),
                                                        path_length=0),
                                 public_key=key.public_key(), issuer_key=key, issuer=None, now=now)
    leaf_key = new_key()
    leaf = pki.issue_certificate(
        profile=pki.identity_profile(pki.Identity("device", "d1"), trust_domain="fleet.local",
                                     lifetime=timedelta(days=1)),
        public_key=leaf_key.public_key(), issuer_key=key, issuer=root, now=now)
    foreign = write_credentials(tmp_path / "foreign", "d1", leaf_key, pki.certificate_pem(leaf),
                                format(leaf.serial_number, "x"), chain)
    code, report, _ = live(data_dir, broker.port, foreign)
    assert code == EXIT_REFUSED
    assert report["stage"] == "tls"
    assert report["connack"] == "none"


def test_diagnose_live_refused_nothing_listening(enroll: Enroll, data_dir: Path,
                                                 sqlite_authority: Authority) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, report, _ = live(data_dir, port, enroll("d1"))
    assert code == EXIT_REFUSED
    assert f"cannot connect to 127.0.0.1:{port}" in report["detail"]
