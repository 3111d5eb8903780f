"""Vendors and enrollment with a manufacturer certificate (IDevID), on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import http.server
import json
import re
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import AttributeOID, NameOID
from pki.x509_factory import device_csr, new_key

from device_sim.manufacturer import Idevid, VendorCA
from fleet import pki
from fleet.authority import ManufacturerCredential
from fleet.authority.vendors import parse_allow_list
from fleet.errors import (
    AuthenticationError,
    ConflictError,
    DeviceNotActiveError,
    ForbiddenError,
    IdentityError,
    ManufacturerCertificateError,
    NotFoundError,
    PKIError,
    UnknownGroupError,
)
from fleet.registry import vendors as vendors_db
from fleet.registry.models import Vendor

from .conftest import Fleet


@pytest.fixture(scope="module")
def acme() -> VendorCA:
    return VendorCA("Acme")


def register(fleet: Fleet, vendor: VendorCA, name: str = "acme", **kwargs: object) -> Vendor:
    return fleet.authority.add_vendor(name=name, ca_pem=vendor.pem().encode(), group="sensors",
                                      actor="operator", **kwargs)  # type: ignore[arg-type]


def enroll(fleet: Fleet, idevid: Idevid, device_id: str | None = None, *,
           csr: bytes | None = None, tls_unique: bytes | None = None,
           group: str | None = None) -> x509.Certificate:
    if csr is None:
        assert device_id is not None
        csr = fleet.csr(device_id)
    issued = fleet.authority.enroll_manufacturer(
        credential=ManufacturerCredential(idevid.certificate, tls_unique), csr=csr,
        actor="est", group=group)
    return issued.certificate


def bound_csr(device_id: str, password: bytes) -> bytes:
    request = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
               .add_attribute(AttributeOID.CHALLENGE_PASSWORD, password))
    return request.sign(new_key(), hashes.SHA256()).public_bytes(serialization.Encoding.DER)


# -- vendors --------------------------------------------------------------------------------

def test_vendor_add_is_audited_and_listed(fleet: Fleet, acme: VendorCA) -> None:
    vendor = register(fleet, acme, allowed=["SN-1", "SN-2"], channel_binding=True)
    assert (vendor.group, vendor.device_id_from, vendor.allow_listed) == (
        "sensors", "serialNumber", True)
    assert vendor.fingerprint_sha256 == pki.fingerprint_sha256(acme.certificate)
    with fleet.session() as session:
        assert [v.name for v in vendors_db.list_vendors(session=session)] == ["acme"]
        assert vendors_db.allowed_count(session=session, vendor="acme") == 2
    event = fleet.audit()[-1]
    assert (event.action, event.outcome) == ("vendor.add", "ok")
    detail = json.loads(event.detail or "{}")
    assert detail["fingerprints_sha256"] == [vendor.fingerprint_sha256]
    assert detail["allowed"] == 2


def test_vendor_ca_that_is_not_a_ca_is_refused(fleet: Fleet, acme: VendorCA) -> None:
    leaf = acme.issue("SN-1").certificate
    with fleet.refused(PKIError, "vendor.add", match="not a CA certificate"):
        fleet.authority.add_vendor(name="acme", ca_pem=pki.certificate_pem(leaf).encode(),
                                   group="sensors", actor="operator")


def test_vendor_ca_without_its_root_is_refused(fleet: Fleet, acme: VendorCA) -> None:
    other = VendorCA("Other")
    # A CA certificate for Other's key signed by Acme, without Acme's root in the file.
    sub = (x509.CertificateBuilder().subject_name(other.certificate.subject)
           .issuer_name(acme.certificate.subject).public_key(other.key.public_key())
           .serial_number(x509.random_serial_number())
           .not_valid_before(other.certificate.not_valid_before_utc)
           .not_valid_after(other.certificate.not_valid_after_utc))
    for extension in other.certificate.extensions:
        sub = sub.add_extension(extension.value, extension.critical)
    pem = pki.certificate_pem(sub.sign(acme.key, hashes.SHA256()))
    with fleet.refused(PKIError, "vendor.add", match="give the vendor's root"):
        fleet.authority.add_vendor(name="acme", ca_pem=pem.encode(), group="sensors",
                                   actor="operator")


def test_fleet_ca_is_refused_as_a_vendor_ca(fleet: Fleet) -> None:
    pem = pki.certificate_pem(fleet.authority.ca.root).encode()
    with fleet.refused(ConflictError, "vendor.add", match="Fleet CA"):
        fleet.authority.add_vendor(name="fleet", ca_pem=pem, group="sensors", actor="operator")


def test_vendor_into_an_undeclared_group_is_refused(fleet: Fleet, acme: VendorCA) -> None:
    with fleet.refused(UnknownGroupError, "vendor.add"):
        fleet.authority.add_vendor(name="acme", ca_pem=acme.pem().encode(), group="pumps",
                                   actor="operator")


def test_one_ca_is_one_vendor(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme)
    with fleet.refused(ConflictError, "vendor.add", match="already registered"):
        register(fleet, acme)
    with fleet.refused(ConflictError, "vendor.add", match="is vendor acme's CA already"):
        register(fleet, acme, name="acme2")


def test_vendor_remove_is_audited(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme, allowed=["SN-1"])
    fleet.authority.remove_vendor(name="acme", actor="operator")
    assert fleet.audit()[-1].action == "vendor.remove"
    with fleet.session() as session:
        assert vendors_db.list_vendors(session=session) == []
        assert vendors_db.allowed_count(session=session, vendor="acme") == 0
    with fleet.refused(NotFoundError, "vendor.remove"):
        fleet.authority.remove_vendor(name="acme", actor="operator")


def test_allow_list_csv() -> None:
    assert parse_allow_list(b"device_id,batch\nSN-1,7\n\nSN-2,7\nSN-1,8\n") == ["SN-1", "SN-2"]
    with pytest.raises(ConflictError, match="row 2"):
        parse_allow_list(b"SN-1\nnot an id\n")
    with pytest.raises(ConflictError, match="names no device id"):
        parse_allow_list(b"device_id\n")


# -- enrollment -----------------------------------------------------------------------------

def test_manufacturer_certificate_enrolls_its_device(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme)
    idevid = acme.issue("SN-1001")
    cert = enroll(fleet, idevid, "SN-1001")
    assert pki.identity_from_certificate(cert, fleet.authority.settings.trust_domain) == \
        pki.Identity("device", "SN-1001")
    assert cert.issuer == fleet.authority.ca.issuing.subject  # Fleet's own certificate
    device = fleet.device("SN-1001")
    assert device is not None
    assert (device.group, device.status) == ("sensors", "active")
    with fleet.session() as session:
        (record,) = vendors_db.records_of_device(session=session, device_id="SN-1001")
    assert record.fingerprint_sha256 == pki.fingerprint_sha256(idevid.certificate)
    assert record.serial == format(idevid.certificate.serial_number, "x")
    assert record.issuer == acme.certificate.subject.rfc4514_string()
    assert (record.vendor, record.armed, record.rearm_count) == ("acme", False, 0)
    event = fleet.audit()[-1]
    assert (event.action, event.outcome, event.device_id) == ("enroll", "ok", "SN-1001")
    assert json.loads(event.detail or "{}")["vendor"] == "acme"


@pytest.mark.parametrize(("field", "kwargs", "device_id"), [
    ("cn", {"common_name": "cam-7"}, "cam-7"),
    ("san-uri", {"uri": "urn:dev:ops:acme-cam-8"}, "acme-cam-8"),
    ("san-uri", {"uri": "https://acme.example/devices/cam-9"}, "cam-9"),
])
def test_device_id_from_each_field(fleet: Fleet, acme: VendorCA, field: str,
                                   kwargs: dict[str, str], device_id: str) -> None:
    register(fleet, acme, device_id_from=field)
    enroll(fleet, acme.issue("SN-0", **kwargs), device_id)
    assert fleet.device(device_id) is not None


def test_unknown_vendor_is_refused(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme)
    stranger = VendorCA("Stranger").issue("SN-1")
    with fleet.refused(ManufacturerCertificateError, "enroll", match="no registered vendor"):
        enroll(fleet, stranger, "SN-1")


def test_chain_failure_is_refused(fleet: Fleet, acme: VendorCA) -> None:
    """A CA of Acme's name but another key (a forgery) does not chain to Acme's CA."""
    register(fleet, acme)
    impostor = VendorCA("Acme")
    with fleet.refused(ManufacturerCertificateError, "enroll", match="does not chain"):
        enroll(fleet, impostor.issue("SN-1"), "SN-1")


def test_expired_manufacturer_certificate_is_refused(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme)
    old = acme.issue("SN-1", not_before=fleet.clock.now - timedelta(days=30),
                     lifetime=timedelta(days=1))
    with fleet.refused(ManufacturerCertificateError, "enroll", match="expired"):
        enroll(fleet, old, "SN-1")


def test_manufacturer_certificate_without_digital_signature_is_refused(
    fleet: Fleet, acme: VendorCA,
) -> None:
    register(fleet, acme)
    with fleet.refused(ManufacturerCertificateError, "enroll", match="digitalSignature"):
        enroll(fleet, acme.issue("SN-1", digital_signature=False), "SN-1")


def test_revoked_by_the_vendor_crl_is_refused(fleet: Fleet, acme: VendorCA,
                                              tmp_path: Path) -> None:
    revoked, good = acme.issue("SN-1"), acme.issue("SN-2")
    crl = tmp_path / "acme.crl"
    crl.write_bytes(acme.crl([revoked.certificate], next_update=timedelta(days=7)))
    register(fleet, acme, crl_file=str(crl))
    with fleet.refused(ManufacturerCertificateError, "enroll", match="revoked by vendor acme"):
        enroll(fleet, revoked, "SN-1")
    enroll(fleet, good, "SN-2")


@pytest.fixture
def crl_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A real HTTP server on 127.0.0.1 publishing CRLs: (base URL, path -> DER it serves)."""
    published: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = published.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "application/pkix-crl")
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", published
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_revoked_by_the_vendor_crl_at_its_url_is_refused(
    fleet: Fleet, acme: VendorCA, crl_server: tuple[str, dict[str, bytes]],
) -> None:
    base, published = crl_server
    revoked, good = acme.issue("SN-1"), acme.issue("SN-2")
    published["/acme.crl"] = acme.crl([revoked.certificate], next_update=timedelta(days=7))
    register(fleet, acme, crl_url=f"{base}/acme.crl")
    with fleet.refused(ManufacturerCertificateError, "enroll", match="revoked by vendor acme"):
        enroll(fleet, revoked, "SN-1")
    enroll(fleet, good, "SN-2")


def test_unreachable_vendor_crl_url_refuses_the_enrollment(fleet: Fleet,
                                                           acme: VendorCA) -> None:
    """Fail closed: a CRL that cannot be fetched vouches for nothing."""
    with socket.socket() as reserved:  # bound, not listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{reserved.getsockname()[1]}/acme.crl"
        register(fleet, acme, crl_url=url)
        with fleet.refused(ManufacturerCertificateError, "enroll", match=(
                rf"^vendor acme's CRL cannot be read from {re.escape(url)}: "
                r"\[Errno 111\] Connection refused$")):
            enroll(fleet, acme.issue("SN-1"), "SN-1")
    assert fleet.device("SN-1") is None


def test_vendor_crl_url_serving_no_crl_refuses_the_enrollment(
    fleet: Fleet, acme: VendorCA, crl_server: tuple[str, dict[str, bytes]],
) -> None:
    base, _ = crl_server
    register(fleet, acme, crl_url=f"{base}/missing.crl")
    with fleet.refused(ManufacturerCertificateError, "enroll",
                       match=r"CRL cannot be read from .*/missing\.crl: HTTP 404 Not Found$"):
        enroll(fleet, acme.issue("SN-1"), "SN-1")


def test_out_of_date_vendor_crl_is_refused(fleet: Fleet, acme: VendorCA,
                                           tmp_path: Path) -> None:
    crl = tmp_path / "acme.crl"
    crl.write_bytes(acme.crl([], next_update=timedelta(hours=1)))
    register(fleet, acme, crl_file=str(crl))
    fleet.clock.advance(hours=2)
    with fleet.refused(ManufacturerCertificateError, "enroll", match="out of date"):
        enroll(fleet, acme.issue("SN-1"), "SN-1")


def test_id_not_on_the_allow_list_is_refused(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme, allowed=["SN-1"])
    with fleet.refused(ForbiddenError, "enroll", match="allow list"):
        enroll(fleet, acme.issue("SN-2"), "SN-2")
    enroll(fleet, acme.issue("SN-1"), "SN-1")


def test_device_id_field_missing_is_refused(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme)
    with fleet.refused(ForbiddenError, "enroll", match="holds 0 times"):
        enroll(fleet, acme.issue(None, common_name="cam-1"), "cam-1")


def test_device_id_field_invalid_is_refused(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme)
    with fleet.refused(ForbiddenError, "enroll", match="not a valid device id"):
        enroll(fleet, acme.issue("SN 1/2"), "SN-1")


def test_csr_naming_another_device_is_refused(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme)
    with fleet.refused(IdentityError, "enroll", match="SN-2"):
        enroll(fleet, acme.issue("SN-1"), csr=device_csr("SN-2", new_key()))


def test_already_enrolled_is_refused(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme)
    idevid = acme.issue("SN-1")
    enroll(fleet, idevid, "SN-1")
    with fleet.refused(ForbiddenError, "enroll", match="already enrolled device SN-1"):
        enroll(fleet, idevid, "SN-1")


def test_another_certificate_for_an_enrolled_id_is_refused(fleet: Fleet,
                                                           acme: VendorCA) -> None:
    register(fleet, acme)
    enroll(fleet, acme.issue("SN-1"), "SN-1")
    with fleet.refused(ForbiddenError, "enroll", match="already registered"):
        enroll(fleet, acme.issue("SN-1"), "SN-1")


def test_rearm_lets_the_certificate_enroll_once_more(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme)
    idevid = acme.issue("SN-1")
    first = enroll(fleet, idevid, "SN-1")
    (record,) = fleet.authority.rearm_device(device_id="SN-1", actor="operator")
    assert (record.armed, record.rearm_count) == (True, 1)
    assert fleet.audit()[-1].action == "device.rearm"
    with fleet.refused(ConflictError, "device.rearm", match="armed already"):
        fleet.authority.rearm_device(device_id="SN-1", actor="operator")
    second = enroll(fleet, idevid, "SN-1")
    statuses = {c.serial: c.status for c in fleet.certificates("SN-1")}
    assert statuses == {format(first.serial_number, "x"): "superseded",
                        format(second.serial_number, "x"): "active"}
    with fleet.refused(ForbiddenError, "enroll", match="already enrolled"):
        enroll(fleet, idevid, "SN-1")


def test_rearm_of_a_device_that_never_used_one_is_refused(fleet: Fleet) -> None:
    fleet.enroll("dev-1")
    with fleet.refused(NotFoundError, "device.rearm"):
        fleet.authority.rearm_device(device_id="dev-1", actor="operator")


def test_revoked_device_comes_back_only_when_rearmed(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme)
    idevid = acme.issue("SN-1")
    enroll(fleet, idevid, "SN-1")
    fleet.authority.revoke_device(device_id="SN-1", reason="keyCompromise", actor="operator")
    with fleet.refused(ForbiddenError, "enroll", match="already enrolled"):
        enroll(fleet, idevid, "SN-1")
    fleet.authority.rearm_device(device_id="SN-1", actor="operator")
    enroll(fleet, idevid, csr=device_csr("SN-1", new_key()))  # the compromised key is not
    device = fleet.device("SN-1")
    assert device is not None
    assert device.status == "active"


def test_deleted_device_comes_back_only_when_rearmed(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme)
    idevid = acme.issue("SN-1")
    enroll(fleet, idevid, "SN-1")
    fleet.authority.revoke_device(device_id="SN-1", reason="cessationOfOperation",
                                  actor="operator")
    fleet.authority.delete_device(device_id="SN-1", actor="operator")
    with fleet.refused(ForbiddenError, "enroll", match="already enrolled"):
        enroll(fleet, idevid, "SN-1")
    fleet.authority.rearm_device(device_id="SN-1", actor="operator")
    enroll(fleet, idevid, "SN-1")
    assert fleet.device("SN-1") is not None


def test_suspended_device_is_refused_even_when_rearmed(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme)
    idevid = acme.issue("SN-1")
    enroll(fleet, idevid, "SN-1")
    fleet.authority.suspend_device(device_id="SN-1", actor="operator")
    fleet.authority.rearm_device(device_id="SN-1", actor="operator")
    with fleet.refused(DeviceNotActiveError, "enroll", match="suspended"):
        enroll(fleet, idevid, "SN-1")


def test_removed_vendor_no_longer_enrolls(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme)
    fleet.authority.remove_vendor(name="acme", actor="operator")
    with fleet.refused(ManufacturerCertificateError, "enroll", match="no registered vendor"):
        enroll(fleet, acme.issue("SN-1"), "SN-1")


def test_label_of_another_group_is_refused(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme)
    fleet.authority.create_group(name="pumps", actor="operator")
    with fleet.refused(ForbiddenError, "enroll", match="not 'pumps'"):
        enroll(fleet, acme.issue("SN-1"), "SN-1", group="pumps")


# -- channel binding (RFC 7030 3.5) ---------------------------------------------------------

def test_channel_bound_csr_enrolls(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme, channel_binding=True)
    tls_unique = b"\x01" * 12
    enroll(fleet, acme.issue("SN-1"), csr=bound_csr("SN-1", base64.b64encode(tls_unique)),
           tls_unique=tls_unique)
    assert json.loads(fleet.audit()[-1].detail or "{}")["channel_bound"] is True


def test_csr_bound_to_another_session_is_refused(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme)
    with fleet.refused(AuthenticationError, "enroll", match="another session"):
        enroll(fleet, acme.issue("SN-1"), csr=bound_csr("SN-1", base64.b64encode(b"x" * 12)),
               tls_unique=b"\x01" * 12)


def test_binding_without_tls_unique_is_refused(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme)
    with fleet.refused(AuthenticationError, "enroll", match="TLS 1.3"):
        enroll(fleet, acme.issue("SN-1"), csr=bound_csr("SN-1", b"AAAA"), tls_unique=None)


def test_vendor_requiring_binding_refuses_an_unbound_csr(fleet: Fleet, acme: VendorCA) -> None:
    register(fleet, acme, channel_binding=True)
    with fleet.refused(AuthenticationError, "enroll", match="requires channel binding"):
        enroll(fleet, acme.issue("SN-1"), "SN-1", tls_unique=b"\x01" * 12)
