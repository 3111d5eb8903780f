"""EST across an issuing CA rotation, with curl and openssl as a device would: both issuing CAs
in /cacerts and in the client-certificate trust, an old-CA device renews to a new-CA
certificate, a new device gets a new-CA certificate, each CA's CRL at /crl/<n>; after the old
CA is retired its certificates are refused, even sent with the old CA's certificate."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from est_support import EST, Est, EstFactory
from pki.x509_factory import device_csr, new_key

from fleet import pki
from fleet.authority import Authority, TokenCredential
from fleet.ca import Paths

pytestmark = pytest.mark.slow

NEW_CA = "CN=Fleet Issuing CA 2,O=Fleet"
OLD_CA = "CN=Fleet Issuing CA,O=Fleet"


def curl(est: Est, path: str, *args: str, data: bytes | None = None,
         cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--fail-with-body", "--cacert", str(est.ca_file),
         *args, *(["-H", "Content-Type: application/pkcs10", "--data-binary", "@-"]
                  if data is not None else []), f"https://localhost:{est.port}{path}"],
        input=data, capture_output=True, timeout=30, cwd=cwd, check=False)


def issued(result: subprocess.CompletedProcess[bytes]) -> x509.Certificate:
    assert result.returncode == 0, result.stdout + result.stderr
    (cert,) = pki.load_certs_only(base64.b64decode(result.stdout))
    return cert


def openssl_csr(key: Path, device_id: str) -> bytes:
    der = subprocess.run(["openssl", "req", "-new", "-key", str(key), "-subj", f"/CN={device_id}",
                          "-outform", "DER"], check=True, capture_output=True).stdout
    return base64.encodebytes(der)


@pytest.fixture
def old_device(sqlite_authority: Authority, tmp_path: Path,
               tool: Callable[[str], str]) -> Path:
    """dev-old enrolled by issuing CA 1, then the rotation; its files in a directory."""
    tool("curl")
    tool("openssl")
    key = new_key()
    sqlite_authority.create_group(name="sensors", actor="operator")
    token = sqlite_authority.create_tokens(group="sensors", actor="factory")[0]
    cert = sqlite_authority.enroll(credential=TokenCredential(str(token.token)),
                                   csr=device_csr("dev-old", key), actor="factory").certificate
    assert cert.issuer.rfc4514_string() == OLD_CA
    directory = tmp_path / "dev-old"
    directory.mkdir()
    (directory / "dev.key").write_bytes(pki.private_key_pem(key))
    (directory / "dev.pem").write_text(pki.certificate_pem(cert))
    sqlite_authority.rotate_issuing(actor="operator")
    return directory


def test_after_rotation_an_old_device_renews_to_the_new_ca_and_a_new_device_enrolls(
        old_device: Path, make_est: EstFactory, sqlite_authority: Authority) -> None:
    est = make_est()
    chain = est.get(f"{EST}/cacerts").certificates()
    assert {c.subject.rfc4514_string() for c in chain} == {NEW_CA, OLD_CA,
                                                           "CN=Fleet Root CA,O=Fleet"}
    renewed = issued(curl(est, f"{EST}/simplereenroll", "--cert", "dev.pem", "--key", "dev.key",
                          data=openssl_csr(old_device / "dev.key", "dev-old"), cwd=old_device))
    assert renewed.issuer.rfc4514_string() == NEW_CA
    renewed.verify_directly_issued_by(sqlite_authority.ca.issuing)

    token = sqlite_authority.create_tokens(group="sensors", actor="factory")[0]
    (old_device / "new.key").write_bytes(pki.private_key_pem(new_key()))
    new = issued(curl(est, f"{EST}/simpleenroll", "-u", f"dev-new:{token.token}",
                      data=openssl_csr(old_device / "new.key", "dev-new"), cwd=old_device))
    assert new.issuer.rfc4514_string() == NEW_CA


def test_each_issuing_ca_publishes_its_crl_and_a_revoked_old_certificate_is_refused(
        old_device: Path, make_est: EstFactory, sqlite_authority: Authority) -> None:
    est = make_est()
    old = x509.load_pem_x509_certificate((old_device / "dev.pem").read_bytes())
    sqlite_authority.revoke_certificate(serial=format(old.serial_number, "x"),
                                        reason="keyCompromise", actor="operator")
    crls = {path: x509.load_der_x509_crl(est.get(path).body) for path in ("/crl/1", "/crl/2")}
    assert crls["/crl/1"].issuer.rfc4514_string() == OLD_CA
    assert crls["/crl/1"].get_revoked_certificate_by_serial_number(old.serial_number)
    assert crls["/crl/2"].issuer.rfc4514_string() == NEW_CA
    assert len(crls["/crl/2"]) == 0
    assert x509.load_der_x509_crl(est.get("/crl").body).issuer.rfc4514_string() == OLD_CA
    assert est.get("/crl/3").status == 404
    refused = curl(est, f"{EST}/simplereenroll", "--cert", "dev.pem", "--key", "dev.key",
                   data=openssl_csr(old_device / "dev.key", "dev-old"), cwd=old_device)
    assert refused.returncode == 22  # --fail-with-body: HTTP status >= 400
    assert b"is revoked" in refused.stdout


def test_after_retirement_an_old_ca_certificate_is_refused(
        old_device: Path, make_est: EstFactory, sqlite_authority: Authority) -> None:
    sqlite_authority.retire_issuing(actor="operator", force=True)
    est = make_est()
    csr = openssl_csr(old_device / "dev.key", "dev-old")
    handshake = curl(est, f"{EST}/simplereenroll", "--cert", "dev.pem", "--key", "dev.key",
                     data=csr, cwd=old_device)
    # The TLS handshake fails (TLS 1.3: the client learns it from the closed connection).
    assert handshake.returncode in (35, 52, 56), handshake
    est.record_refusals()
    assert any("unable to get local issuer certificate" in (e.reason or "")
               for e in est.refusals("connect"))
    # Sent with the retired CA's certificate, TLS can build a chain to the root: EST itself
    # refuses the certificate, at the issuer, before the registry is asked.
    retired = Paths.of(est.settings).retired(1).read_text()
    (old_device / "with-ca.pem").write_text((old_device / "dev.pem").read_text() + retired)
    refused = curl(est, f"{EST}/simplereenroll", "--cert", "with-ca.pem", "--key", "dev.key",
                   data=csr, cwd=old_device)
    assert refused.returncode == 22, refused
    assert f"not by {NEW_CA}".encode() in refused.stdout
