"""Trusted manufacturer CAs (vendors): registered by operators, trusted for one thing only.

A vendor's CA vouches for the manufacturer certificates (IEEE 802.1AR IDevIDs) of its devices,
and only so that they enroll into the vendor's group (``fleet.authority.manufacturer``). It
is never a trust anchor for the broker, for renewals or for service certificates: those
verify against Fleet's own CA alone. So that no vendor can pass for Fleet, a CA certificate
whose subject is a Fleet CA's, or that another vendor registered, is refused.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from sqlmodel import Session

from fleet import pki
from fleet.authority.core import AuthorityCore
from fleet.authority.groups import require_group
from fleet.authority.vendor_crl import parse_crl
from fleet.errors import (
    ConflictError,
    ManufacturerCertificateError,
    NotFoundError,
    PKIError,
)
from fleet.pki.manufacturer import (
    DEVICE_ID_FIELDS,
    DeviceIdField,
    check_vendor_cas,
    crl_problem,
    crl_signed_by,
    issuer_named,
    manufacturer_device_id,
    verify_manufacturer_certificate,
)
from fleet.registry import session as new_session
from fleet.registry import unavailable_as_error
from fleet.registry import vendors as vendors_db
from fleet.registry.models import Vendor

URL_MAX = 512
FILE_MAX = 1024
ALLOW_HEADERS = ("device_id", "id", "serial", "serialnumber")
"""A first row of an allow list holding one of these is a header, not an id."""


@dataclass(frozen=True, slots=True)
class Vouched:
    """A manufacturer certificate a registered vendor vouches for, and the device it names."""

    vendor: Vendor
    device_id: str
    certificate: x509.Certificate
    fingerprint: str


def vendor_cas(vendor: Vendor) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(vendor.ca_pem.encode())


def parse_allow_list(data: bytes) -> list[str]:
    """The device ids of an allow list: CSV, the id in the first column, one per row (a
    header row and blank rows are skipped); ConflictError naming the first invalid id."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConflictError(f"the allow list is not UTF-8 text: {exc}") from None
    ids: dict[str, None] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not row[0].strip():
            continue
        value = row[0].strip()
        if number == 1 and value.lower() in ALLOW_HEADERS:
            continue
        if not pki.DEVICE_ID_PATTERN.fullmatch(value):
            raise ConflictError(f"the allow list's row {number} holds {value[:80]!r}, which is "
                                "not a valid device id")
        ids[value] = None
    if not ids:
        raise ConflictError("the allow list names no device id")
    return list(ids)


class VendorPolicy(AuthorityCore):
    """Operators register and remove vendors; enrollment asks which one vouches."""

    def add_vendor(
        self, *, name: str, ca_pem: bytes, group: str, actor: str,
        device_id_from: DeviceIdField = "serialNumber", allowed: Sequence[str] | None = None,
        crl_url: str | None = None, crl_file: str | None = None,
        channel_binding: bool = False,
    ) -> Vendor:
        """Register vendor *name*: its CA certificates (root and intermediates, PEM) vouch
        for its devices' manufacturer certificates, which enroll into *group*."""
        with self._audited("vendor.add", actor=actor) as session:
            pki.check_group_name(name)
            if device_id_from not in DEVICE_ID_FIELDS:
                raise ConflictError(f"the device id comes from one of "
                                    f"{', '.join(DEVICE_ID_FIELDS)}, not {device_id_from!r}")
            try:
                cas = check_vendor_cas(pki.load_certificates(ca_pem))
            except ValueError as exc:
                raise PKIError(f"the vendor CA file holds no certificate: {exc}") from None
            self._require_not_fleet(cas)
            _check_crl_source(crl_url, crl_file, cas)
            require_group(session, group, lock="share")
            if vendors_db.get_vendor(session=session, name=name) is not None:
                raise ConflictError(f"vendor {name} is already registered", vendor=name)
            _require_not_registered(cas, vendors_db.list_vendors(session=session))
            vendor = Vendor(
                name=name, ca_pem="".join(pki.certificate_pem(ca) for ca in cas),
                fingerprint_sha256=pki.fingerprint_sha256(cas[0]), group=group,
                device_id_from=device_id_from, allow_listed=allowed is not None,
                crl_url=crl_url, crl_file=crl_file, channel_binding=channel_binding,
                created_at=self.clock(), created_by=actor)
            vendors_db.add_vendor(session=session, vendor=vendor, allowed=allowed or ())
            self.audit(session, action="vendor.add", outcome="ok", actor=actor, detail={
                "vendor": name, "group": group, "device_id_from": device_id_from,
                "fingerprints_sha256": [pki.fingerprint_sha256(ca) for ca in cas],
                "subjects": [ca.subject.rfc4514_string() for ca in cas],
                "allowed": None if allowed is None else len(allowed),
                "crl": crl_url or crl_file, "channel_binding": channel_binding})
        return vendor

    def remove_vendor(self, *, name: str, actor: str) -> Vendor:
        """Trust vendor *name* no more: its devices' manufacturer certificates no longer
        enroll. Devices it enrolled keep their Fleet certificates."""
        with self._audited("vendor.remove", actor=actor) as session:
            vendor = _vendor(session, name)
            vendors_db.delete_vendor(session=session, name=name)
            self.audit(session, action="vendor.remove", outcome="ok", actor=actor, detail={
                "vendor": name, "group": vendor.group,
                "fingerprint_sha256": vendor.fingerprint_sha256})
        return vendor

    def vendor_ca_certificates(self) -> list[x509.Certificate]:
        """Every registered vendor's CA certificates (what the EST handshake accepts client
        certificates from, besides Fleet's CA)."""
        with unavailable_as_error(), new_session(self.engine) as session:
            return [ca for vendor in vendors_db.list_vendors(session=session)
                    for ca in vendor_cas(vendor)]

    def vouch(self, certificate: x509.Certificate) -> Vouched:
        """The registered vendor whose CA issued *certificate*, after checking it (validity,
        path, key usage, the vendor's CRL), and the device id it names.

        Raises ManufacturerCertificateError when no vendor vouches for it, ForbiddenError
        when it names no valid device id."""
        now = self.clock()
        with unavailable_as_error(), new_session(self.engine) as session:
            vendors = vendors_db.list_vendors(session=session)
        for vendor in vendors:
            cas = vendor_cas(vendor)
            if issuer_named(certificate, cas) is None:
                continue
            issuer = verify_manufacturer_certificate(certificate, cas=cas, vendor=vendor.name,
                                                     now=now)
            if vendor.crl_url or vendor.crl_file:
                crl = self.vendor_crls.crl(vendor=vendor.name, url=vendor.crl_url,
                                           file=vendor.crl_file, now=now)
                crl_problem(certificate, crl=crl, issuer=issuer, vendor=vendor.name, now=now)
            field: DeviceIdField = vendor.device_id_from  # type: ignore[assignment]
            return Vouched(vendor, manufacturer_device_id(certificate, field,
                                                          vendor=vendor.name),
                           certificate, pki.fingerprint_sha256(certificate))
        raise ManufacturerCertificateError(
            f"certificate {format(certificate.serial_number, 'x')} is issued by "
            f"{certificate.issuer.rfc4514_string()}, which is no registered vendor's CA "
            "(fleet vendor list); a Fleet certificate renews with simplereenroll",
            verdict="unknown-vendor")

    def _require_not_fleet(self, cas: Sequence[x509.Certificate]) -> None:
        fleet_cas = self.trust.chain
        fleet_subjects = {ca.subject for ca in fleet_cas}
        fleet_prints = {pki.fingerprint_sha256(ca) for ca in fleet_cas}
        for ca in cas:
            if ca.subject in fleet_subjects or pki.fingerprint_sha256(ca) in fleet_prints:
                raise ConflictError(
                    f"{ca.subject.rfc4514_string()} is (or is named like) a Fleet CA: a vendor "
                    "CA must be the manufacturer's own")


def _vendor(session: Session, name: str) -> Vendor:
    vendor = vendors_db.get_vendor(session=session, name=name) \
        if pki.DEVICE_ID_PATTERN.fullmatch(name) else None
    if vendor is None:
        raise NotFoundError(f"unknown vendor {name!r} (fleet vendor list)", vendor=name)
    return vendor


def _require_not_registered(cas: Sequence[x509.Certificate],
                            vendors: Sequence[Vendor]) -> None:
    """One CA vouches for one vendor: a device certificate always has one vendor."""
    for vendor in vendors:
        theirs = {ca.subject for ca in vendor_cas(vendor)}
        for ca in cas:
            if ca.subject in theirs:
                raise ConflictError(f"{ca.subject.rfc4514_string()} is vendor {vendor.name}'s "
                                    "CA already", vendor=vendor.name)


def _check_crl_source(url: str | None, file: str | None,
                      cas: Sequence[x509.Certificate]) -> None:
    if url is not None and file is not None:
        raise ConflictError("give the vendor's CRL as a URL or as a file, not both")
    if url is not None and (urlsplit(url).scheme not in ("http", "https")
                            or len(url) > URL_MAX):
        raise ConflictError(f"the CRL URL must be http(s) and at most {URL_MAX} "
                                f"characters: {url[:80]!r}")
    if file is not None:
        if len(file) > FILE_MAX:
            raise ConflictError(f"the CRL file's path is longer than {FILE_MAX} characters")
        try:
            crl = parse_crl(Path(file).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConflictError(f"the CRL file {file} cannot be read: {exc}") from None
        if not any(crl_signed_by(crl, ca) for ca in cas):
            raise ConflictError(f"the CRL in {file} is not signed by one of the vendor's CAs")
