"""/ocsp on the running EST service, asked by the real ``openssl ocsp`` client over HTTPS:
good, revoked with its reason, superseded past its grace, unknown, another CA's certificate,
GET requests, malformed requests, caching headers, the bounds, and a registry outage."""

from __future__ import annotations

import base64
import subprocess
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from est_support import Enrolled, Est, EstFactory, Reply, make_csr
from pki.x509_factory import make_ca
from registry_outage import registry_lock

from fleet import pki
from fleet.authority import Authority, TokenCredential
from provisioning.refusals import REGISTRY_RETRY_AFTER

OCSP_REQUEST = {"Content-Type": "application/ocsp-request"}


def write_pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_text("".join(pki.certificate_pem(c) for c in certs))
    return path


class Ocsp:
    """``openssl ocsp`` against one EST service."""

    def __init__(self, est: Est) -> None:
        self.est = est
        self.issuer = write_pem(est.tmp / "issuing.pem", est.authority.ca.issuing)
        self.url = f"https://localhost:{est.port}/ocsp"

    def run(self, cert: x509.Certificate | Path, *args: str, issuer: Path | None = None,
            ca_file: Path | None = None) -> subprocess.CompletedProcess[str]:
        path = cert if isinstance(cert, Path) else write_pem(
            self.est.tmp / f"cert-{cert.serial_number:x}.pem", cert)
        return subprocess.run(
            ["openssl", "ocsp", "-issuer", str(issuer or self.issuer), "-cert", str(path),
             "-CAfile", str(ca_file or self.est.ca_file), "-resp_text", *args],
            capture_output=True, text=True, timeout=30, check=False)

    def ask(self, cert: x509.Certificate, *args: str,
            **kwargs: Path) -> subprocess.CompletedProcess[str]:
        return self.run(cert, "-url", self.url, *args, **kwargs)

    def request_der(self, cert: x509.Certificate) -> bytes:
        """The DER request openssl makes for *cert* without a nonce."""
        out = self.est.tmp / "request.der"
        self.run(cert, "-no_nonce", "-reqout", str(out)).check_returncode()
        return out.read_bytes()

    def check_response(self, cert: x509.Certificate,
                       der: bytes) -> subprocess.CompletedProcess[str]:
        """Verify a response fetched by other means, as openssl does its own."""
        path = self.est.tmp / "response.der"
        path.write_bytes(der)
        return self.run(cert, "-no_nonce", "-respin", str(path))


@pytest.fixture
def est(make_est: EstFactory) -> Est:
    return make_est(FLEET_CERTIFICATES_SUPERSEDED_GRACE="0")


@pytest.fixture
def client(est: Est) -> Ocsp:
    return Ocsp(est)


def verified(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0 and "Response verify OK" in result.stderr


def test_good_with_nonce_signed_by_the_delegated_responder(est: Est, client: Ocsp) -> None:
    device = est.device("dev-1")
    result = client.ask(device.certificate)
    assert verified(result), result.stderr
    assert ": good" in result.stdout
    assert "OCSP Nonce" in result.stdout  # the request's nonce, echoed (openssl checks it)
    # the responder certificate it carries, issued by the issuing CA for OCSP signing
    assert "OCSP Signing" in result.stdout
    assert "OCSP No Check" in result.stdout
    assert "Issuer: O=Fleet, CN=Fleet Issuing CA\n" in result.stdout
    assert "Subject: O=Fleet, CN=Fleet OCSP Responder 1\n" in result.stdout


def test_the_signature_verifies_only_against_the_fleet_chain(est: Est, client: Ocsp) -> None:
    device = est.device("dev-1")
    other = make_ca(now=device.certificate.not_valid_before_utc)
    foreign_root = write_pem(est.tmp / "other-root.pem", other.root)
    # the TLS handshake and the response are checked against -CAfile: TLS with the fleet
    # root, the response with another root
    response = est.tmp / "r.der"
    assert client.ask(device.certificate, "-respout", str(response)).returncode == 0
    result = client.run(device.certificate, "-no_nonce", "-respin", str(response),
                        ca_file=foreign_root)
    assert not verified(result)
    assert "Response Verify Failure" in result.stderr
    assert verified(client.run(device.certificate, "-no_nonce", "-respin", str(response)))


def test_revoked_shows_the_reason_and_time(est: Est, client: Ocsp) -> None:
    device = est.device("dev-1")
    est.authority.revoke_certificate(serial=f"{device.certificate.serial_number:x}",
                                     reason="keyCompromise", actor="ops")
    result = client.ask(device.certificate)
    assert verified(result), result.stderr
    assert ": revoked" in result.stdout
    assert "Reason: keyCompromise" in result.stdout
    assert "Revocation Time:" in result.stdout


def test_superseded_past_its_grace_is_revoked_superseded(est: Est, client: Ocsp) -> None:
    device = est.device("dev-1")
    est.authority.reenroll(client_certificate=device.certificate,
                           csr=make_csr("dev-1", device.key), actor="test")
    result = client.ask(device.certificate)
    assert verified(result), result.stderr
    assert ": revoked" in result.stdout
    assert "Reason: superseded" in result.stdout
    crl = x509.load_der_x509_crl(est.get("/crl").body)
    assert crl.get_revoked_certificate_by_serial_number(device.certificate.serial_number)


def test_a_serial_not_issued_is_unknown(est: Est, client: Ocsp) -> None:
    ca = est.authority.ca
    never_recorded = pki.issue_certificate(
        profile=pki.identity_profile(pki.Identity("device", "ghost"), trust_domain="fleet.local",
                                     lifetime=timedelta(days=1)),
        public_key=pki.generate_private_key().public_key(), issuer_key=ca.issuing_key,
        issuer=ca.issuing, now=est.authority.clock())
    result = client.ask(never_recorded)
    assert verified(result), result.stderr
    assert ": unknown" in result.stdout


def test_a_certificate_of_another_ca_is_unauthorized(est: Est, client: Ocsp) -> None:
    other = make_ca(now=est.authority.clock(), name="Other")
    foreign = other.issue("dev-1", now=est.authority.clock())
    result = client.ask(foreign, issuer=write_pem(est.tmp / "other.pem", other.issuing))
    assert "Responder Error: unauthorized (6)" in result.stdout + result.stderr


def test_without_a_nonce_the_response_is_cacheable(est: Est, client: Ocsp) -> None:
    device = est.device("dev-1")
    result = client.ask(device.certificate, "-no_nonce")
    assert verified(result), result.stderr
    assert ": good" in result.stdout
    assert "OCSP Nonce" not in result.stdout
    der = client.request_der(device.certificate)
    first = est.request("POST", "/ocsp", der, OCSP_REQUEST)
    assert first.status == 200
    assert first.headers["Content-Type"] == "application/ocsp-response"
    response = ocsp.load_der_ocsp_response(first.body)
    max_age = int(first.headers["Cache-Control"].split(",")[0].removeprefix("max-age="))
    next_update = est.settings.ocsp_next_update.total_seconds()
    assert next_update - 5 <= max_age <= next_update
    assert "public" in first.headers["Cache-Control"]
    assert first.headers["ETag"].startswith('"')
    assert response.this_update_utc.strftime("%a, %d %b %Y %H:%M:%S GMT") == \
        first.headers["Last-Modified"]
    assert response.next_update_utc is not None
    assert first.headers["Expires"] == response.next_update_utc.strftime(
        "%a, %d %b %Y %H:%M:%S GMT")
    # served again unchanged (one thisUpdate, one ETag), by POST and by GET
    again = est.get("/ocsp/" + quote(base64.b64encode(der).decode(), safe=""))
    assert (again.body, again.headers["ETag"]) == (first.body, first.headers["ETag"])
    conditional = est.request("GET", "/ocsp/" + quote(base64.b64encode(der).decode(), safe=""),
                              headers={"If-None-Match": first.headers["ETag"]})
    assert (conditional.status, conditional.body) == (304, b"")
    assert conditional.headers["ETag"] == first.headers["ETag"]


def test_a_response_with_a_nonce_is_not_stored(est: Est, client: Ocsp) -> None:
    device = est.device("dev-1")
    der = ocsp.OCSPRequestBuilder().add_certificate(
        device.certificate, est.authority.ca.issuing, hashes.SHA1()).add_extension(
        x509.OCSPNonce(b"n" * 16), critical=False).build().public_bytes(
        serialization.Encoding.DER)
    reply = est.request("POST", "/ocsp", der, OCSP_REQUEST)
    assert reply.headers["Cache-Control"] == "no-store"
    assert "ETag" not in reply.headers
    assert ocsp.load_der_ocsp_response(reply.body).certificate_status == \
        ocsp.OCSPCertStatus.GOOD


@pytest.mark.parametrize("encoding", ["percent-encoded base64", "base64url", "unpadded"])
def test_get_requests_per_rfc_6960_appendix_a(est: Est, client: Ocsp, encoding: str) -> None:
    device = est.device("dev-1")
    est.authority.revoke_certificate(serial=f"{device.certificate.serial_number:x}",
                                     reason="cessationOfOperation", actor="ops")
    der = client.request_der(device.certificate)
    path = {
        "percent-encoded base64": quote(base64.b64encode(der).decode(), safe=""),
        "base64url": base64.urlsafe_b64encode(der).decode(),
        "unpadded": base64.urlsafe_b64encode(der).decode().rstrip("="),
    }[encoding]
    reply = est.get(f"/ocsp/{path}")
    assert reply.status == 200
    result = client.check_response(device.certificate, reply.body)
    assert verified(result), result.stderr
    assert ": revoked" in result.stdout
    assert "Reason: cessationOfOperation" in result.stdout


def malformed(client: Ocsp, reply: Reply, device: Enrolled) -> None:
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"] == "application/ocsp-response"
    assert reply.headers["Cache-Control"] == "no-store"
    assert ocsp.load_der_ocsp_response(reply.body).response_status == \
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    result = client.check_response(device.certificate, reply.body)
    assert "Responder Error: malformedrequest (1)" in result.stdout + result.stderr


@pytest.mark.parametrize("case", ["garbage body", "empty body", "truncated request",
                                  "wrong content type", "GET not base64", "GET empty"])
def test_malformed_requests_get_malformed_request(est: Est, client: Ocsp, case: str) -> None:
    device = est.device("dev-1")
    der = client.request_der(device.certificate)
    reply = {
        "garbage body": lambda: est.request("POST", "/ocsp", b"\x00garbage", OCSP_REQUEST),
        "empty body": lambda: est.request("POST", "/ocsp", b"", OCSP_REQUEST),
        "truncated request": lambda: est.request("POST", "/ocsp", der[:-3], OCSP_REQUEST),
        "wrong content type": lambda: est.request("POST", "/ocsp", der,
                                                  {"Content-Type": "application/pkcs10"}),
        "GET not base64": lambda: est.get("/ocsp/%25%25not*base64"),
        "GET empty": lambda: est.get("/ocsp/"),
    }[case]()
    malformed(client, reply, device)


def test_refused_body_over_max_body_bytes_413(est: Est) -> None:
    limit = est.settings.est_max_body_bytes
    reply = est.request("POST", "/ocsp", b"\x30" * (limit + 1), OCSP_REQUEST)
    assert reply.status == 413, reply.text


def test_the_aia_of_issued_certificates_names_the_responder(est: Est, client: Ocsp) -> None:
    base = f"https://localhost:{est.port}"
    authority = Authority(settings=est.settings.with_overrides(public_base_url=base),
                          engine=est.engine, ca=est.authority.ca)
    key = pki.generate_private_key()
    issued = authority.enroll(credential=TokenCredential(est.token()),
                              csr=make_csr("dev-aia", key), actor="test")
    device = Enrolled("dev-aia", key, issued.certificate, est.tmp)
    uri = subprocess.run(["openssl", "x509", "-noout", "-ocsp_uri", "-in",
                          str(device.cert_file)], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert uri == f"{base}/ocsp"
    result = client.run(device.certificate, "-url", uri)
    assert verified(result), result.stderr
    assert ": good" in result.stdout


def test_registry_unavailable_is_try_later(make_est: EstFactory, data_dir: Path) -> None:
    """The first request needs a responder certificate, whose issuance is audited: with the
    registry locked beyond database.busy_timeout, tryLater + Retry-After; then good."""
    est = make_est(FLEET_DATABASE_BUSY_TIMEOUT="300ms")
    client = Ocsp(est)
    device = est.device("dev-1")
    der = client.request_der(device.certificate)
    with registry_lock(data_dir / "fleet.db"):
        reply = est.request("POST", "/ocsp", der, OCSP_REQUEST)
    assert reply.status == 200
    assert reply.headers["Retry-After"] == str(REGISTRY_RETRY_AFTER)
    assert ocsp.load_der_ocsp_response(reply.body).response_status == \
        ocsp.OCSPResponseStatus.TRY_LATER
    after = est.request("POST", "/ocsp", der, OCSP_REQUEST)
    assert ocsp.load_der_ocsp_response(after.body).certificate_status == \
        ocsp.OCSPCertStatus.GOOD
