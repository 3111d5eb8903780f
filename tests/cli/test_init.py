from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from fleet.ca import PASSPHRASE_ENV
from fleet.cli.app import EXIT_CONFIG, EXIT_REFUSED

from .helpers import Run

INIT_KEYS = {"data_dir", "ca", "ca_created", "root_fingerprint_sha256",
             "issuing_fingerprint_sha256", "passphrase_file", "passphrase_generated",
             "server_certificate", "server_certificate_issued", "hostnames", "database"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_ca_server_certificate_and_registry(empty_fleet: Run,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV)
    result = empty_fleet.ok("init")
    data = empty_fleet.data_dir
    for name in ("ca/chain.pem", "ca/root.pem", "ca/issuing.pem", "server/cert.pem",
                 "server/key.pem", "fleet.db"):
        assert (data / name).is_file(), name
    for secret in ("ca/root.key", "ca/issuing.key", "ca/passphrase", "server/key.pem"):
        assert mode(data / secret) == 0o600, secret
    passphrase = (data / "ca/passphrase").read_text().strip()
    assert passphrase not in result.stdout + result.stderr
    assert f"passphrase file {data / 'ca/passphrase'} (mode 0600)" in result.stdout
    assert "created CA" in result.stdout
    chain = x509.load_pem_x509_certificates((data / "ca/chain.pem").read_bytes())
    assert [c.subject.rfc4514_string() for c in chain] == [
        "CN=Fleet Issuing CA,O=Fleet", "CN=Fleet Root CA,O=Fleet"]


def test_init_is_idempotent_and_keeps_the_root(empty_fleet: Run,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV)
    first = empty_fleet.json("init")
    assert set(first) == INIT_KEYS
    assert first["ca"] == "created"
    assert first["passphrase_generated"] is True
    assert first["server_certificate_issued"] is True
    server_cert = (empty_fleet.data_dir / "server/cert.pem").read_bytes()
    second = empty_fleet.json("init")
    assert second["ca"] == "found"
    assert second["ca_created"] is False
    assert second["root_fingerprint_sha256"] == first["root_fingerprint_sha256"]
    assert second["issuing_fingerprint_sha256"] == first["issuing_fingerprint_sha256"]
    assert second["passphrase_generated"] is False
    assert second["server_certificate_issued"] is False
    assert (empty_fleet.data_dir / "server/cert.pem").read_bytes() == server_cert
    assert "found existing CA" in empty_fleet.ok("init").stdout


def test_init_with_passphrase_from_env_writes_no_passphrase_file(empty_fleet: Run) -> None:
    report = empty_fleet.json("init")
    assert report["passphrase_file"] is None
    assert report["passphrase_generated"] is False
    assert not (empty_fleet.data_dir / "ca/passphrase").exists()


def test_init_hostname_reissues_server_certificate(fleet: Run) -> None:
    report = fleet.json("init", "--hostname", "broker.example", "--hostname", "10.0.0.7")
    assert report["ca"] == "found"
    assert report["server_certificate_issued"] is True
    assert report["hostnames"] == ["broker.example", "10.0.0.7"]
    cert = x509.load_pem_x509_certificate((fleet.data_dir / "server/cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "broker.example" in names.get_values_for_type(x509.DNSName)
    assert mode(fleet.data_dir / "server/key.pem") == 0o600


def test_init_refused_wrong_ca_passphrase(fleet: Run) -> None:
    root_before = (fleet.data_dir / "ca/root.pem").read_bytes()
    result = fleet("init", env={PASSPHRASE_ENV: "not-the-passphrase"})
    assert result.exit_code == EXIT_REFUSED
    assert "cannot unlock the CA key" in result.stderr
    assert "wrong passphrase" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (fleet.data_dir / "ca/root.pem").read_bytes() == root_before


def test_init_refused_missing_passphrase_for_existing_ca(fleet: Run) -> None:
    result = fleet("init", env={PASSPHRASE_ENV: None})
    assert result.exit_code == EXIT_REFUSED
    assert "no CA passphrase" in result.stderr
    assert PASSPHRASE_ENV in result.stderr


def test_bad_config_value_from_env_names_the_key(fleet: Run) -> None:
    result = fleet("token", "list", env={"FLEET_EST_PORT": "eighty"})
    assert result.exit_code == EXIT_CONFIG
    assert result.stderr.strip() == "error: config FLEET_EST_PORT='eighty': not an integer"


def test_bad_config_value_out_of_range_names_the_key(fleet: Run) -> None:
    result = fleet("device", "list", env={"FLEET_BROKER_PORT": "70000"})
    assert result.exit_code == EXIT_CONFIG
    assert "broker.port=70000" in result.stderr
    assert "port number" in result.stderr


def test_bad_config_file_is_named(fleet: Run, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = fleet("--config", str(missing), "device", "list")
    assert result.exit_code == EXIT_CONFIG
    assert str(missing) in result.stderr
    assert "file not found" in result.stderr


def test_init_refused_bad_trust_domain_names_the_key(fleet: Run) -> None:
    result = fleet("init", env={"FLEET_TRUST_DOMAIN": "Not A Domain"})
    assert result.exit_code == EXIT_CONFIG
    assert "fleet.trust_domain" in result.stderr
