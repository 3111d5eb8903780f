from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography import x509

from fleet.ca import PASSPHRASE_ENV
from fleet.cli.app import EXIT_REFUSED

from .helpers import Enroll, Run


def test_crl_pem_on_stdout(fleet: Run) -> None:
    result = fleet.ok("crl")
    crl = x509.load_pem_x509_crl(result.stdout_bytes)
    issuing = x509.load_pem_x509_certificate((fleet.data_dir / "ca/issuing.pem").read_bytes())
    assert crl.issuer == issuing.subject
    assert crl.is_signature_valid(issuing.public_key())  # type: ignore[arg-type]
    assert len(crl) == 0
    assert result.stderr == ""


def test_crl_der_and_out_file(fleet: Run, tmp_path: Path) -> None:
    der = x509.load_der_x509_crl(fleet.ok("crl", "--der").stdout_bytes)
    out = tmp_path / "fleet.crl"
    result = fleet.ok("crl", "--der", "--out", str(out))
    assert result.stdout == ""
    from_file = x509.load_der_x509_crl(out.read_bytes())
    assert from_file.issuer == der.issuer


def test_crl_lists_revoked_device_and_verifies_with_openssl(fleet: Run, enroll: Enroll,
                                                            tmp_path: Path) -> None:
    serial = enroll("dev-1").certificate.serial_number
    enroll("dev-2")
    fleet.ok("device", "revoke", "dev-1", "--reason", "keyCompromise")
    out = tmp_path / "crl.pem"
    fleet.ok("crl", "--out", str(out))
    crl = x509.load_pem_x509_crl(out.read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == \
        x509.ReasonFlags.key_compromise
    assert len(crl) == 1
    shown = subprocess.run(
        ["openssl", "crl", "-in", str(out), "-CAfile", str(fleet.data_dir / "ca/chain.pem"),
         "-noout", "-text"], capture_output=True, text=True, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "verify OK" in shown.stderr + shown.stdout
    listed = [int(line.split(":", 1)[1], 16) for line in shown.stdout.splitlines()
              if "Serial Number:" in line]
    assert listed == [serial]
    assert "Key Compromise" in shown.stdout


def test_crl_refused_wrong_ca_passphrase(fleet: Run) -> None:
    result = fleet("crl", env={PASSPHRASE_ENV: "wrong"})
    assert result.exit_code == EXIT_REFUSED
    assert "cannot unlock the CA key" in result.stderr
    assert result.stdout == ""


def test_crl_refused_without_ca(empty_fleet: Run) -> None:
    result = empty_fleet("crl")
    assert result.exit_code == EXIT_REFUSED
    assert "run `fleet init` first" in result.stderr
