from __future__ import annotations

import stat
import subprocess
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fleet import pki
from fleet.authority import Authority
from fleet.cli.app import EXIT_NOT_FOUND, EXIT_REFUSED, EXIT_USAGE

from .helpers import Enroll, Run, csr_for

SHOW_KEYS = {"serial", "status", "not_before", "not_after", "fingerprint_sha256"}


def serial_of(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def test_cert_show_json(fleet: Run, enroll: Enroll) -> None:
    issued = enroll("dev-1")
    serial = serial_of(issued.certificate)
    shown = fleet.json("cert", "show", serial)
    assert SHOW_KEYS | {"device_id"} <= set(shown)
    assert "service" not in shown
    assert shown["serial"] == serial
    assert shown["device_id"] == "dev-1"
    assert shown["status"] == "active"
    assert shown["fingerprint_sha256"] == pki.fingerprint_sha256(issued.certificate)
    assert shown["not_before"] == issued.certificate.not_valid_before_utc.strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    assert serial in fleet.ok("cert", "show", serial).stdout


def test_cert_show_accepts_openssl_spelling_of_serial(fleet: Run, enroll: Enroll) -> None:
    serial = serial_of(enroll("dev-1").certificate)
    spelled = ":".join(("0" + serial.upper())[i:i + 2] for i in range(0, len(serial) + 1, 2))
    assert fleet.json("cert", "show", spelled)["serial"] == serial


def test_cert_show_pem(fleet: Run, enroll: Enroll) -> None:
    issued = enroll("dev-1")
    pem = fleet.ok("cert", "show", serial_of(issued.certificate), "--pem").stdout
    assert x509.load_pem_x509_certificate(pem.encode()) == issued.certificate


def test_cert_show_refused_unknown_serial(fleet: Run) -> None:
    result = fleet("cert", "show", "abc123")
    assert result.exit_code == EXIT_NOT_FOUND
    assert result.stderr == "error: unknown certificate serial abc123\n"


def test_cert_show_refused_malformed_serial(fleet: Run) -> None:
    result = fleet("cert", "show", "not-hex")
    assert result.exit_code == EXIT_USAGE
    assert "not a hexadecimal serial number" in result.stderr


def test_cert_list_json(fleet: Run, enroll: Enroll, tmp_path: Path) -> None:
    enroll("dev-1")
    enroll("dev-2")
    fleet.ok("cert", "issue-service", "backend", "--out-dir", str(tmp_path))
    listed = fleet.json("cert", "list")
    assert len(listed) == 3
    for cert in listed:
        assert set(cert) >= SHOW_KEYS
        assert ("device_id" in cert) != ("service" in cert)
    assert [c["service"] for c in listed if "service" in c] == ["backend"]
    only = fleet.json("cert", "list", "--device", "dev-2")
    assert [c["device_id"] for c in only] == ["dev-2"]
    assert [c["service"] for c in fleet.json("cert", "list", "--service", "backend")] == [
        "backend"]
    assert "service/backend" in fleet.ok("cert", "list").stdout


def test_cert_list_refused_unknown_device(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    result = fleet("cert", "list", "--device", "ghost")
    assert result.exit_code == EXIT_NOT_FOUND
    assert result.stderr == "error: unknown device 'ghost'\n"
    assert result.stdout == ""


def test_cert_list_of_a_device_without_certificates_is_empty(fleet: Run) -> None:
    fleet.ok("group", "create", "sensors")
    fleet.ok("token", "create", "--group", "sensors", "--device", "dev-9")  # pending
    assert fleet.json("cert", "list", "--device", "dev-9") == []


def test_cert_list_refused_unknown_service(fleet: Run) -> None:
    result = fleet("cert", "list", "--service", "ghost")
    assert result.exit_code == EXIT_NOT_FOUND
    assert result.stderr == "error: unknown service 'ghost'\n"


def test_cert_list_status_filter(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    serial = serial_of(enroll("dev-2").certificate)
    fleet.ok("cert", "revoke", serial, "--reason", "keyCompromise")
    assert [c["serial"] for c in fleet.json("cert", "list", "--status", "revoked")] == [serial]
    assert len(fleet.json("cert", "list", "--status", "active")) == 1


def test_cert_revoke(fleet: Run, enroll: Enroll) -> None:
    serial = serial_of(enroll("dev-1").certificate)
    result = fleet.ok("cert", "revoke", serial, "--reason", "superseded")
    assert f"revoked certificate {serial} of dev-1 (superseded)" in result.stdout
    shown = fleet.json("cert", "show", serial)
    assert shown["status"] == "revoked"
    assert shown["revocation_reason"] == "superseded"
    assert fleet.json("device", "show", "dev-1")["status"] == "active"


def test_cert_revoke_json(fleet: Run, enroll: Enroll) -> None:
    serial = serial_of(enroll("dev-1").certificate)
    revoked = fleet.json("cert", "revoke", serial, "--reason", "keyCompromise")
    assert set(revoked) >= SHOW_KEYS
    assert (revoked["serial"], revoked["device_id"], revoked["status"]) == (
        serial, "dev-1", "revoked")
    assert revoked["revocation_reason"] == "keyCompromise"
    assert revoked == fleet.json("cert", "show", serial)


def test_cert_revoke_refused_already_revoked(fleet: Run, enroll: Enroll) -> None:
    serial = serial_of(enroll("dev-1").certificate)
    fleet.ok("cert", "revoke", serial, "--reason", "keyCompromise")
    result = fleet("cert", "revoke", serial, "--reason", "keyCompromise")
    assert result.exit_code == EXIT_REFUSED
    assert result.stderr == f"error: certificate {serial} is already revoked\n"


def test_cert_revoke_refused_unknown_serial(fleet: Run) -> None:
    result = fleet("cert", "revoke", "abcdef", "--reason", "keyCompromise")
    assert result.exit_code == EXIT_NOT_FOUND


def test_cert_revoke_refused_invalid_reason(fleet: Run, enroll: Enroll) -> None:
    serial = serial_of(enroll("dev-1").certificate)
    result = fleet("cert", "revoke", serial, "--reason", "removeFromCRL")
    assert result.exit_code == EXIT_USAGE
    assert "not an RFC 5280 reason" in result.stderr
    assert fleet.json("cert", "show", serial)["status"] == "active"


def test_cert_revoke_refused_missing_reason(fleet: Run, enroll: Enroll) -> None:
    serial = serial_of(enroll("dev-1").certificate)
    result = fleet("cert", "revoke", serial)
    assert result.exit_code == EXIT_USAGE
    assert "unspecified, keyCompromise" in result.stderr


def test_cert_issue_service_writes_key_cert_and_chain(fleet: Run, tmp_path: Path) -> None:
    out = tmp_path / "svc"
    issued = fleet.json("cert", "issue-service", "backend", "--out-dir", str(out))
    key_file, cert_file, chain_file = out / "backend.key", out / "backend.pem", out / "ca.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = pki.load_private_key_pem(key_file.read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert cert.public_key() == key.public_key()
    assert issued["serial"] == serial_of(cert)
    assert issued["service"] == "backend"
    assert issued["uri"] == "spiffe://fleet.local/service/backend"
    assert chain_file.read_bytes() == (fleet.data_dir / "ca/chain.pem").read_bytes()
    shown = fleet.json("cert", "show", issued["serial"])
    assert shown["service"] == "backend"
    assert "device_id" not in shown


def test_cert_issue_service_verifies_with_openssl(fleet: Run, tmp_path: Path) -> None:
    fleet.ok("cert", "issue-service", "backend", "--out-dir", str(tmp_path))
    ca = fleet.data_dir / "ca"
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca / "root.pem"), "-untrusted",
         str(ca / "issuing.pem"), "-purpose", "sslclient", str(tmp_path / "backend.pem")],
        capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.strip().endswith(": OK")


def test_cert_issue_service_refused_existing_files(fleet: Run, tmp_path: Path) -> None:
    fleet.ok("cert", "issue-service", "backend", "--out-dir", str(tmp_path))
    key_before = (tmp_path / "backend.key").read_bytes()
    result = fleet("cert", "issue-service", "backend", "--out-dir", str(tmp_path))
    assert result.exit_code == EXIT_REFUSED
    assert "use --force" in result.stderr
    assert (tmp_path / "backend.key").read_bytes() == key_before
    assert len(fleet.json("cert", "list")) == 1
    fleet.ok("cert", "issue-service", "backend", "--out-dir", str(tmp_path), "--force")
    assert (tmp_path / "backend.key").read_bytes() != key_before


def test_cert_issue_service_refused_invalid_name(fleet: Run, tmp_path: Path) -> None:
    out = tmp_path / "svc"
    result = fleet("cert", "issue-service", "../escape", "--out-dir", str(out))
    assert result.exit_code == EXIT_REFUSED
    assert "invalid service name" in result.stderr
    assert not out.exists()
    assert fleet.json("cert", "list") == []


def test_cert_list_shows_a_superseded_certificate_with_its_cutoff(
        fleet: Run, enroll: Enroll, sqlite_authority: Authority) -> None:
    old = enroll("dev-1")
    key = pki.generate_private_key()
    renewed = sqlite_authority.reenroll(client_certificate=old.certificate,
                                        csr=csr_for("dev-1", key), actor="device")
    listed = {c["serial"]: c for c in fleet.json("cert", "list", "--device", "dev-1")}
    superseded = listed[old.record.serial]
    assert superseded["status"] == "superseded"
    grace = sqlite_authority.settings.superseded_grace
    cutoff = datetime.fromisoformat(superseded["superseded_at"].replace("Z", "+00:00")) + grace
    assert superseded["usable_until"] == cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert listed[renewed.record.serial]["usable_until"] == listed[
        renewed.record.serial]["not_after"]
    assert "usable until" in fleet.ok("cert", "list", "--device", "dev-1").stdout
