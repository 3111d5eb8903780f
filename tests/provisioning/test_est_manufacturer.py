"""simpleenroll with a manufacturer certificate (RFC 7030 3.3.2): real TLS, real registry.

The device presents its IDevID in the TLS handshake and sends no Authorization header; a
vendor registered while the service runs is trusted in its handshakes within seconds.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import time
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import AttributeOID, NameOID
from est_support import (
    EST,
    PKCS10,
    Est,
    EstFactory,
    Reply,
    b64,
    baseline,
    expect_refusal,
    make_csr,
    simultaneously,
)

from device_sim.manufacturer import Idevid, VendorCA
from fleet import pki
from fleet.registry import certificates as certs_db
from fleet.registry import vendors as vendors_db
from fleet.registry.engine import session as new_session
from fleet.registry.models import Device
from provisioning.server import VENDOR_REFRESH_SECONDS

TRUSTED_WITHIN = 10 * VENDOR_REFRESH_SECONDS


@pytest.fixture(scope="module")
def acme() -> VendorCA:
    return VendorCA("Acme")


def register(est: Est, vendor: VendorCA, *, ca_pem: str | None = None,
             **kwargs: object) -> None:
    est.authority.ensure_group(name="cameras", actor="operator")
    est.authority.add_vendor(name="acme", ca_pem=(ca_pem or vendor.pem()).encode(),
                             group="cameras", actor="operator",
                             **kwargs)  # type: ignore[arg-type]


def idevid_context(est: Est, idevid: Idevid, *, tls12: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(est.ca_file))
    cert_file, key_file = idevid.write(est.tmp, f"idevid-{idevid.certificate.serial_number:x}")
    context.load_cert_chain(cert_file, key_file)
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def post(est: Est, idevid: Idevid, csr: bytes, operation: str = "simpleenroll") -> Reply:
    connection = http.client.HTTPSConnection("localhost", est.port,
                                             context=idevid_context(est, idevid), timeout=30)
    try:
        connection.request("POST", f"{EST}/{operation}", b64(csr), dict(PKCS10))
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


def trusted(est: Est, idevid: Idevid) -> None:
    """Wait until the service's handshake accepts the vendor's certificates."""
    deadline = time.monotonic() + TRUSTED_WITHIN
    while True:
        try:
            connection = http.client.HTTPSConnection(
                "localhost", est.port, context=idevid_context(est, idevid), timeout=30)
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            connection.close()
            return
        except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def enrolled(est: Est, device_id: str) -> Device | None:
    with new_session(est.engine) as session:
        return session.get(Device, device_id)


def test_manufacturer_certificate_enrolls_over_est(est_any_db: Est, acme: VendorCA) -> None:
    est = est_any_db
    register(est, acme)
    idevid = acme.issue("SN-100")
    trusted(est, idevid)
    key = pki.generate_private_key()
    reply = post(est, idevid, make_csr("SN-100", key))
    assert reply.status == 200, reply.text
    (certificate,) = reply.certificates()
    assert certificate.issuer == est.authority.ca.issuing.subject
    assert certificate.public_key() == key.public_key()
    device = enrolled(est, "SN-100")
    assert device is not None
    assert (device.group, device.status) == ("cameras", "active")
    with new_session(est.engine) as session:
        (record,) = vendors_db.records_of_device(session=session, device_id="SN-100")
    assert record.fingerprint_sha256 == pki.fingerprint_sha256(idevid.certificate)


def handshake_refused(est: Est, idevid: Idevid, device_id: str, says: str) -> None:
    """An enrollment the handshake refuses (under TLS 1.3 the client learns it at its first
    read), with the reason the service audits (aggregated, as for any stranger)."""
    est.record_refusals()
    before = {e.id for e in est.refusals("connect")}
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        post(est, idevid, make_csr(device_id))
    assert enrolled(est, device_id) is None
    deadline = time.monotonic() + 10
    while True:
        est.record_refusals()
        new = [e.reason or "" for e in est.refusals("connect") if e.id not in before]
        if any(says in reason for reason in new):
            return
        assert time.monotonic() < deadline, new
        time.sleep(0.05)


def test_unknown_vendor_fails_in_the_handshake(est: Est, acme: VendorCA) -> None:
    register(est, acme)
    trusted(est, acme.issue("SN-1"))
    handshake_refused(est, VendorCA("Stranger").issue("SN-1"), "SN-1",
                      says="unable to get local issuer certificate")


def test_removed_vendor_is_refused_as_unknown(est: Est, acme: VendorCA) -> None:
    register(est, acme)
    idevid = acme.issue("SN-1")
    trusted(est, idevid)  # the handshake keeps trusting its CA until a restart
    est.authority.remove_vendor(name="acme", actor="operator")
    before = baseline(est, "enroll")
    expect_refusal(est, post(est, idevid, make_csr("SN-1")), 401, before,
                   says="no registered vendor")


def ca_certificate(name: str, key: pki.PrivateKey, *, issuer: VendorCA | None,
                   path_length: int | None) -> x509.Certificate:
    """A CA certificate; an intermediate (with *issuer*) marks basicConstraints non-critical,
    against RFC 5280 4.2.1.9."""
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder().subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length),
                       critical=issuer is None)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(issuer.key if issuer else key, hashes.SHA256()))


def test_chain_failure_is_refused(est: Est) -> None:
    """The handshake (OpenSSL) accepts an intermediate whose basicConstraints is not
    critical; the policy's path validation (cryptography's, RFC 5280 with the CA/B profile's
    CA rules) does not."""
    root, line4 = VendorCA("Acme"), VendorCA("Acme")
    root.certificate = ca_certificate("Acme Root", root.key, issuer=None, path_length=1)
    line4.certificate = ca_certificate("Acme Line 4", line4.key, issuer=root, path_length=0)
    register(est, root, ca_pem=root.pem() + line4.pem())
    idevid = line4.issue("SN-4")
    trusted(est, idevid)
    before = baseline(est, "enroll")
    expect_refusal(est, post(est, idevid, make_csr("SN-4")), 401, before,
                   says="does not chain")


def test_expired_manufacturer_certificate_fails_in_the_handshake(est: Est,
                                                                 acme: VendorCA) -> None:
    register(est, acme)
    trusted(est, acme.issue("SN-1"))
    old = acme.issue("SN-2", not_before=datetime.now(UTC) - timedelta(days=30),
                     lifetime=timedelta(days=1))
    handshake_refused(est, old, "SN-2", says="certificate has expired")


def test_id_not_on_the_allow_list_is_refused(est: Est, acme: VendorCA) -> None:
    register(est, acme, allowed=["SN-1"])
    idevid = acme.issue("SN-2")
    trusted(est, idevid)
    before = baseline(est, "enroll")
    expect_refusal(est, post(est, idevid, make_csr("SN-2")), 403, before, says="allow list")


def test_already_enrolled_is_refused(est: Est, acme: VendorCA) -> None:
    register(est, acme)
    idevid = acme.issue("SN-1")
    trusted(est, idevid)
    assert post(est, idevid, make_csr("SN-1")).status == 200
    before = baseline(est, "enroll")
    expect_refusal(est, post(est, idevid, make_csr("SN-1")), 403, before,
                   says="already enrolled")


@pytest.mark.parametrize(("serial_number", "says"), [
    (None, "holds 0 times"), ("SN 1/2", "not a valid device id")])
def test_device_id_field_missing_or_invalid_is_refused(est: Est, acme: VendorCA,
                                                       serial_number: str | None,
                                                       says: str) -> None:
    register(est, acme)
    idevid = acme.issue(serial_number, common_name="cam-1")
    trusted(est, idevid)
    before = baseline(est, "enroll")
    expect_refusal(est, post(est, idevid, make_csr("cam-1")), 403, before, says=says)


def test_csr_naming_another_device_is_refused(est: Est, acme: VendorCA) -> None:
    register(est, acme)
    idevid = acme.issue("SN-1")
    trusted(est, idevid)
    before = baseline(est, "enroll")
    expect_refusal(est, post(est, idevid, make_csr("SN-2")), 400, before, says="SN-2")


def test_manufacturer_certificate_cannot_renew(est: Est, acme: VendorCA) -> None:
    register(est, acme)
    idevid = acme.issue("SN-1")
    trusted(est, idevid)
    assert post(est, idevid, make_csr("SN-1")).status == 200
    before = baseline(est, "reenroll")
    expect_refusal(est, post(est, idevid, make_csr("SN-1"), "simplereenroll"), 403, before,
                   says="not by")


def test_one_enrollment_per_certificate_under_concurrent_requests(
    make_est: EstFactory, postgres_database: str, acme: VendorCA,
) -> None:
    """Two replicas on one PostgreSQL, the same manufacturer certificate sent to both at
    once, several times: one device, one certificate, the rest refused."""
    replicas = [make_est(postgres_database), make_est(postgres_database)]
    register(replicas[0], acme)
    idevid = acme.issue("SN-9")
    for replica in replicas:
        trusted(replica, idevid)
    requests = [(replica.port, f"{EST}/simpleenroll", b64(make_csr("SN-9")), dict(PKCS10),
                 idevid_context(replica, idevid)) for replica in replicas * 4]
    assert simultaneously(requests) == {200: 1, 403: 7}
    with new_session(replicas[0].engine) as session:
        (record,) = vendors_db.records_of_device(session=session, device_id="SN-9")
        certificates = certs_db.list_certificates(session=session, device_id="SN-9")
    assert record.armed is False
    assert len(certificates) == 1


# -- channel binding (RFC 7030 3.5) ---------------------------------------------------------

def bound_csr(device_id: str, key: pki.PrivateKey, password: bytes) -> bytes:
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
               .add_attribute(AttributeOID.CHALLENGE_PASSWORD, password))
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def post_bound(est: Est, idevid: Idevid, device_id: str, *, tls12: bool,
               tamper: bool = False) -> Reply:
    """Connect, read the session's tls-unique, then send a CSR carrying it."""
    connection = http.client.HTTPSConnection(
        "localhost", est.port, context=idevid_context(est, idevid, tls12=tls12), timeout=30)
    try:
        connection.connect()
        assert isinstance(connection.sock, ssl.SSLSocket)
        binding = connection.sock.get_channel_binding("tls-unique") or b"none"
        if tamper:
            binding = bytes(b ^ 1 for b in binding)
        csr = bound_csr(device_id, pki.generate_private_key(), base64.b64encode(binding))
        connection.request("POST", f"{EST}/simpleenroll", b64(csr), dict(PKCS10))
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        connection.close()


def test_channel_bound_enrollment_over_tls12(est: Est, acme: VendorCA) -> None:
    register(est, acme, channel_binding=True)
    idevid = acme.issue("SN-1")
    trusted(est, idevid)
    reply = post_bound(est, idevid, "SN-1", tls12=True)
    assert reply.status == 200, reply.text


def test_csr_bound_to_another_session_is_refused(est: Est, acme: VendorCA) -> None:
    register(est, acme)
    idevid = acme.issue("SN-1")
    trusted(est, idevid)
    before = baseline(est, "enroll")
    expect_refusal(est, post_bound(est, idevid, "SN-1", tls12=True, tamper=True), 401, before,
                   says="another session")


def test_channel_binding_over_tls13_is_refused(est: Est, acme: VendorCA) -> None:
    register(est, acme)
    idevid = acme.issue("SN-1")
    trusted(est, idevid)
    before = baseline(est, "enroll")
    expect_refusal(est, post_bound(est, idevid, "SN-1", tls12=False), 401, before,
                   says="TLS 1.3")


def test_vendor_requiring_binding_refuses_an_unbound_csr(est: Est, acme: VendorCA) -> None:
    register(est, acme, channel_binding=True)
    idevid = acme.issue("SN-1")
    trusted(est, idevid)
    before = baseline(est, "enroll")
    expect_refusal(est, post(est, idevid, make_csr("SN-1")), 401, before,
                   says="requires channel binding")
