"""`fleet ca rotate-issuing`, `retire-issuing`, `export-root-key`, `fleet init --export-root-key`,
`fleet ca show` and `fleet crl` with two issuing CAs: what an operator sees and every refusal."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography import x509

from fleet.cli.app import EXIT_NOT_FOUND, EXIT_REFUSED
from fleet.pki import fingerprint_sha256

from .helpers import Enroll, Run, write_pem


def tree(data_dir: Path) -> dict[str, str]:
    """The CA material and the server certificate (a refusal changes only the audit log and
    the checkpoints that anchor it)."""
    return {p.relative_to(data_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for directory in ("ca", "server") for p in sorted((data_dir / directory).rglob("*"))
            if p.is_file()}


def test_rotate_then_show_lists_both_issuing_cas(fleet: Run, enroll: Enroll) -> None:
    old = enroll("dev-old").certificate
    out = fleet.ok("ca", "rotate-issuing").stdout
    assert "issuing CA 2 is active: CN=Fleet Issuing CA 2,O=Fleet" in out
    assert "issuing CA 1 stays trusted in its overlap" in out
    assert "fleet ca retire-issuing 1" in out
    assert "restart `fleet serve est` and `fleet serve broker`" in out
    shown = fleet.json("ca", "show")
    active, retiring = shown["issuing_cas"]
    assert (active["number"], active["state"], active["crl"]) == (2, "active", "/crl/2")
    assert (retiring["number"], retiring["state"], retiring["crl"]) == (1, "retiring", "/crl")
    assert retiring["usable_certificates"] == 1
    assert retiring["usable_until"] == old.not_valid_after_utc.isoformat().replace("+00:00",
                                                                                 "Z")
    assert shown["issuing"]["fingerprint_sha256"] == active["fingerprint_sha256"]
    new = x509.load_pem_x509_certificate((fleet.data_dir / "ca/issuing.pem").read_bytes())
    assert active["fingerprint_sha256"] == fingerprint_sha256(new)
    text = fleet.ok("ca", "show").stdout
    assert "issuing CA 2 (active)" in text
    assert "issuing CA 1 (retiring)" in text
    assert "when its last certificate expires (fleet ca retire-issuing 1)" in text


def test_crl_prints_one_pem_block_per_issuing_ca(fleet: Run, enroll: Enroll,
                                                 tmp_path: Path) -> None:
    old = enroll("dev-old")
    fleet.ok("ca", "rotate-issuing")
    fleet.ok("cert", "revoke", old.record.serial, "--reason", "keyCompromise")
    pem = fleet.ok("crl").stdout_bytes
    assert pem.count(b"-----BEGIN X509 CRL-----") == 2
    first, second = (x509.load_pem_x509_crl(b"-----BEGIN X509 CRL-----" + block)
                     for block in pem.split(b"-----BEGIN X509 CRL-----")[1:])
    assert first.issuer.rfc4514_string() == "CN=Fleet Issuing CA 2,O=Fleet"
    assert second.issuer.rfc4514_string() == "CN=Fleet Issuing CA,O=Fleet"
    assert [e.serial_number for e in second] == [old.certificate.serial_number]
    assert len(first) == 0
    out = tmp_path / "crl.pem"
    result = fleet.ok("crl", "--out", str(out))
    assert "wrote 2 CRL(s)" in result.stderr
    assert "issuing CA 2: 0 revoked, issuing CA 1: 1 revoked" in result.stderr
    only = x509.load_der_x509_crl(fleet.ok("crl", "--der", "--issuer", "1").stdout_bytes)
    assert only.issuer == second.issuer


def test_crl_der_refused_while_two_issuing_cas_are_in_use(fleet: Run) -> None:
    fleet.ok("ca", "rotate-issuing")
    result = fleet("crl", "--der")
    assert result.exit_code == EXIT_REFUSED
    assert "issuing CAs 2 and 1 are in use" in result.stderr
    assert "--issuer N" in result.stderr
    unknown = fleet("crl", "--issuer", "9")
    assert unknown.exit_code == EXIT_NOT_FOUND
    assert "no issuing CA 9 in use (in use: 2, 1)" in unknown.stderr


def test_retire_refused_while_certificates_of_it_live_then_forced(fleet: Run,
                                                                  enroll: Enroll) -> None:
    old = enroll("dev-old")
    fleet.ok("ca", "rotate-issuing")
    before = tree(fleet.data_dir)
    result = fleet("ca", "retire-issuing")
    assert result.exit_code == EXIT_REFUSED
    assert "issuing CA 1 still has 1 usable certificate(s)" in result.stderr
    assert "force it" in result.stderr
    assert tree(fleet.data_dir) == before
    assert fleet.json("cert", "show", old.record.serial)["status"] == "active"
    forced = fleet.json("ca", "retire-issuing", "1", "--force")
    assert (forced["number"], forced["state"], forced["revoked"]) == (
        1, "retired", [old.record.serial])
    assert fleet.json("cert", "show", old.record.serial)["status"] == "revoked"
    states = [(c["number"], c["state"]) for c in fleet.json("ca", "show")["issuing_cas"]]
    assert states == [(2, "active"), (1, "retired")]
    assert not (fleet.data_dir / "ca/issuing-1.key").exists()
    assert (fleet.data_dir / "ca/retired/issuing-1.pem").exists()
    audit = fleet.json("audit", "--action", "ca.retire")
    assert [(e["outcome"]) for e in audit] == ["refused", "ok"]


@pytest.mark.parametrize(("args", "says"), [
    pytest.param(("ca", "retire-issuing"), "no issuing CA is in its overlap",
                 id="nothing-to-retire"),
    pytest.param(("ca", "retire-issuing", "1"), "issuing CA 1 is the active one",
                 id="the-active-one"),
])
def test_retire_refused_without_an_overlap(fleet: Run, args: tuple[str, ...], says: str) -> None:
    before = tree(fleet.data_dir)
    result = fleet(*args)
    assert result.exit_code == EXIT_REFUSED
    assert says in result.stderr
    assert tree(fleet.data_dir) == before


def test_init_with_the_root_key_exported_then_rotation_asks_for_it(empty_fleet: Run,
                                                                  tmp_path: Path) -> None:
    offline = tmp_path / "offline-root.key"
    out = empty_fleet.ok("init", "--export-root-key", str(offline)).stdout
    data_dir = empty_fleet.data_dir
    assert f"moved the root CA key to {offline}" in out
    assert not (data_dir / "ca/root.key").exists()
    assert offline.stat().st_mode & 0o777 == 0o600
    assert empty_fleet.json("ca", "show")["root_key"] == "offline"

    before = tree(data_dir)
    refused = empty_fleet("ca", "rotate-issuing")
    assert refused.exit_code == EXIT_REFUSED
    assert refused.stderr.strip().splitlines() == [
        f"error: the root CA key is not in {data_dir / 'ca'} (it is kept offline): give it "
        "with --root-key FILE"]
    assert tree(data_dir) == before

    rotated = empty_fleet.json("ca", "rotate-issuing", "--root-key", str(offline))
    assert rotated["active"]["subject"] == "CN=Fleet Issuing CA 2,O=Fleet"
    assert not (data_dir / "ca/root.key").exists()
    assert [e["action"] for e in empty_fleet.json("audit", "--action", "ca")] == [
        "ca.export-root-key", "ca.rotate", "ca.rotate"]


def test_init_export_refused_into_an_existing_file_creates_nothing(empty_fleet: Run,
                                                                   tmp_path: Path) -> None:
    existing = tmp_path / "root.key"
    existing.write_text("keep me")
    result = empty_fleet("init", "--export-root-key", str(existing))
    assert result.exit_code == EXIT_REFUSED
    assert "exists; use --force" in result.stderr
    assert existing.read_text() == "keep me"
    assert not empty_fleet.data_dir.exists()


def test_export_root_key_command_and_a_wrong_root_key_file(fleet: Run, tmp_path: Path) -> None:
    offline = tmp_path / "root.key"
    secret = tmp_path / "root.pass"
    secret.write_text("the root key's own passphrase\n")
    fleet.ok("ca", "export-root-key", "--out", str(offline), "--remove",
             "--root-key-passphrase-file", str(secret))
    assert not (fleet.data_dir / "ca/root.key").exists()
    before = tree(fleet.data_dir)
    wrong = fleet("ca", "rotate-issuing", "--root-key", str(offline))  # CA passphrase
    assert wrong.exit_code == EXIT_REFUSED
    assert f"cannot unlock the root CA key {offline}: wrong passphrase" in wrong.stderr
    server = fleet.data_dir / "server/cert.pem"
    assert tree(fleet.data_dir) == before
    fleet.ok("ca", "rotate-issuing", "--root-key", str(offline),
             "--root-key-passphrase-file", str(secret))
    assert x509.load_pem_x509_certificates(server.read_bytes())[1].subject.rfc4514_string() \
        == "CN=Fleet Issuing CA 2,O=Fleet"
    inside = fleet("ca", "export-root-key", "--out", str(fleet.data_dir / "root.copy"))
    assert inside.exit_code == EXIT_REFUSED


def test_diagnose_admits_an_old_ca_certificate_in_the_overlap_not_after_retirement(
        fleet: Run, enroll: Enroll, tmp_path: Path) -> None:
    cert = write_pem(tmp_path / "old.pem", enroll("dev-old").certificate)
    fleet.ok("ca", "rotate-issuing")
    report = fleet.json("diagnose", str(cert), "--client-id", "dev-old")
    assert report["admitted"] is True
    assert report["checks"][0] == {"check": "issuer", "stage": "tls", "result": "ok",
                                   "detail": "signed by CN=Fleet Issuing CA,O=Fleet"}
    fleet.ok("ca", "retire-issuing", "--force")
    refused = fleet("diagnose", str(cert))
    assert refused.exit_code == EXIT_REFUSED
    assert "at the issuer check: issued by CN=Fleet Issuing CA,O=Fleet, not by CN=Fleet " \
        "Issuing CA 2,O=Fleet" in refused.stderr
