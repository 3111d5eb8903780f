from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography import x509

from fleet.ca import PASSPHRASE_ENV
from fleet.cli.app import EXIT_REFUSED
from fleet.pki import fingerprint_sha256

from .helpers import Run

CERT_KEYS = {"subject", "serial", "fingerprint_sha256", "not_before", "not_after", "key_type"}


def test_ca_show_json(fleet: Run) -> None:
    shown = fleet.json("ca", "show")
    assert set(shown) == {"root", "issuing", "issuing_cas", "root_key", "chain"}
    root = x509.load_pem_x509_certificate((fleet.data_dir / "ca/root.pem").read_bytes())
    assert set(shown["root"]) == CERT_KEYS
    assert set(shown["issuing"]) == CERT_KEYS
    assert shown["root"]["fingerprint_sha256"] == fingerprint_sha256(root)
    assert shown["root"]["serial"] == format(root.serial_number, "x")
    assert shown["issuing"]["subject"] == "CN=Fleet Issuing CA,O=Fleet"
    assert shown["issuing"]["key_type"] == "EC P-256"
    assert shown["root"]["not_after"].endswith("Z")
    [only] = shown["issuing_cas"]
    assert (only["number"], only["state"], only["crl"]) == (1, "active", "/crl")
    assert only["fingerprint_sha256"] == shown["issuing"]["fingerprint_sha256"]
    assert only["usable_certificates"] == 0
    assert shown["root_key"] == "data dir"


def test_ca_show_table(fleet: Run) -> None:
    out = fleet.ok("ca", "show").stdout
    assert "root CA" in out
    assert "issuing CA" in out
    assert "EC P-256" in out


def test_ca_show_does_not_need_the_passphrase(fleet: Run) -> None:
    fleet.ok("ca", "show", env={PASSPHRASE_ENV: "wrong"})


def test_ca_show_refused_without_ca(empty_fleet: Run) -> None:
    result = empty_fleet("ca", "show")
    assert result.exit_code == EXIT_REFUSED
    assert "run `fleet init`" in result.stderr


@pytest.fixture
def enterprise_ca(data_dir: Path, tmp_path: Path) -> dict[str, Path]:
    """An existing CA to adopt: the fixture's issuing CA + root, its encrypted key."""
    bundle = tmp_path / "enterprise.pem"
    bundle.write_bytes((data_dir / "ca/issuing.pem").read_bytes()
                       + (data_dir / "ca/root.pem").read_bytes())
    secret = tmp_path / "enterprise.pass"
    secret.write_text(os.environ[PASSPHRASE_ENV] + "\n")  # what the fixture CA uses
    return {"cert": bundle, "key": data_dir / "ca/issuing.key", "pass": secret,
            "leaf_cert": data_dir / "server/cert.pem", "leaf_key": data_dir / "server/key.pem"}


def test_ca_import_adopts_existing_ca(empty_fleet: Run, enterprise_ca: dict[str, Path],
                                     data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV)
    result = empty_fleet.json("ca", "import", "--cert", str(enterprise_ca["cert"]),
                              "--key", str(enterprise_ca["key"]),
                              "--key-passphrase-file", str(enterprise_ca["pass"]))
    assert result["init"]["ca"] == "imported"
    assert result["init"]["passphrase_generated"] is True
    original = x509.load_pem_x509_certificate((data_dir / "ca/issuing.pem").read_bytes())
    assert result["issuing"]["fingerprint_sha256"] == fingerprint_sha256(original)
    assert fleet_show_root(empty_fleet) == result["root"]["fingerprint_sha256"]
    # The adopted CA signs: a CRL can be produced with the newly generated passphrase file.
    assert b"BEGIN X509 CRL" in empty_fleet.ok("crl").stdout_bytes
    assert (empty_fleet.data_dir / "server/cert.pem").exists()


def fleet_show_root(run: Run) -> str:
    return str(run.json("ca", "show")["root"]["fingerprint_sha256"])


def test_ca_import_refused_non_ca_certificate(empty_fleet: Run,
                                              enterprise_ca: dict[str, Path]) -> None:
    result = empty_fleet("ca", "import", "--cert", str(enterprise_ca["leaf_cert"]),
                         "--key", str(enterprise_ca["leaf_key"]))
    assert result.exit_code == EXIT_REFUSED
    assert "not a CA" in result.stderr
    assert not (empty_fleet.data_dir / "ca/issuing.pem").exists()


def test_ca_import_refused_wrong_key_passphrase(empty_fleet: Run, enterprise_ca: dict[str, Path],
                                                tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("nope\n")
    result = empty_fleet("ca", "import", "--cert", str(enterprise_ca["cert"]),
                         "--key", str(enterprise_ca["key"]), "--key-passphrase-file", str(wrong))
    assert result.exit_code == EXIT_REFUSED
    assert "wrong passphrase" in result.stderr
    assert not (empty_fleet.data_dir / "ca/issuing.pem").exists()


def test_ca_import_refused_key_of_another_certificate(empty_fleet: Run,
                                                      enterprise_ca: dict[str, Path]) -> None:
    result = empty_fleet("ca", "import", "--cert", str(enterprise_ca["cert"]),
                         "--key", str(enterprise_ca["leaf_key"]))
    assert result.exit_code == EXIT_REFUSED
    assert "does not belong" in result.stderr


def test_ca_import_refused_when_a_ca_exists(fleet: Run, enterprise_ca: dict[str, Path]) -> None:
    before = (fleet.data_dir / "ca/issuing.key").read_bytes()
    result = fleet("ca", "import", "--cert", str(enterprise_ca["cert"]),
                   "--key", str(enterprise_ca["key"]),
                   "--key-passphrase-file", str(enterprise_ca["pass"]))
    assert result.exit_code == EXIT_REFUSED
    assert "already exists" in result.stderr
    assert (fleet.data_dir / "ca/issuing.key").read_bytes() == before


def test_ca_import_refused_missing_file(empty_fleet: Run, tmp_path: Path) -> None:
    result = empty_fleet("ca", "import", "--cert", str(tmp_path / "none.pem"),
                         "--key", str(tmp_path / "none.key"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
