"""Enrollment with a manufacturer certificate (RFC 7030 3.3.2 simpleenroll authenticated by
the TLS client certificate, an IEEE 802.1AR IDevID), and re-arming one.

A registered vendor vouches for the certificate (fleet.authority.vendors); the device id is
the one it names, on the vendor's allow list when it has one; the CSR must name that id, as
with a token, and may bind itself to the TLS session (RFC 7030 3.5). The device joins the
vendor's group with a certificate of Fleet's own for the CSR's key, and the manufacturer
certificate is recorded against it: it enrolls once, and again only after an operator re-arms
it (``fleet device rearm``), so neither a second request nor a revoked or deleted device
comes back with it unasked.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from fleet import pki
from fleet.authority.core import (
    Issued,
    require_key_not_compromised,
    serial_hex,
)
from fleet.authority.groups import require_group
from fleet.authority.vendors import VendorPolicy, Vouched
from fleet.errors import (
    ConflictError,
    DeviceNotActiveError,
    FleetError,
    ForbiddenError,
    ManufacturerCertificateError,
    NotFoundError,
)
from fleet.pki import Identity
from fleet.pki.manufacturer import check_channel_binding
from fleet.registry import certificates as certs_db
from fleet.registry import devices as devices_db
from fleet.registry import events as events_db
from fleet.registry import names as names_db
from fleet.registry import vendors as vendors_db
from fleet.registry.models import DeviceStatus, ManufacturerCertificate
from fleet.registry.models import Vendor as VendorRow

ACTION = "enroll"
"""Audited as any enrollment; the detail names the vendor and the manufacturer certificate."""


@dataclass(frozen=True, slots=True)
class ManufacturerCredential:
    """What the EST edge read from the TLS session: the client certificate the handshake
    accepted and the session's tls-unique (None under TLS 1.3, which has none)."""

    certificate: x509.Certificate
    tls_unique: bytes | None = None

    def __repr__(self) -> str:
        return (f"ManufacturerCredential(serial={self.certificate.serial_number:x}, "
                f"tls_unique={'***' if self.tls_unique else None})")


class ManufacturerPolicy(VendorPolicy):
    """simpleenroll with a manufacturer certificate; operators re-arm one."""

    def enroll_manufacturer(self, *, credential: ManufacturerCredential, csr: bytes,
                            actor: str, group: str | None = None) -> Issued:
        """Enroll the device a vendor-vouched manufacturer certificate names.

        *group* is the group an EST label maps to; it must be the vendor's.
        """
        certificate = credential.certificate
        try:
            vouched = self.vouch(certificate)
        except ManufacturerCertificateError as error:  # nothing is verified: aggregated
            self.refused_unverified(ACTION, error, actor=actor)
            raise
        except FleetError as error:  # a vendor vouches, but it names no device
            error.context["fingerprint_sha256"] = pki.fingerprint_sha256(certificate)
            self.audit_refusal(ACTION, error, actor=actor)
            raise
        detail = _detail(vouched)
        device_id = vouched.device_id
        try:
            request = pki.inspect_csr(pki.load_csr(csr))
            ident = Identity("device", device_id)
            pki.check_requested_identity(request, ident, self.settings.trust_domain)
            bound = check_channel_binding(request.csr, tls_unique=credential.tls_unique,
                                          required=vouched.vendor.channel_binding,
                                          vendor=vouched.vendor.name)
        except FleetError as error:
            error.context.update(detail)
            self.audit_refusal(ACTION, error, actor=actor, device_id=device_id)
            raise
        with self._audited(ACTION, actor=actor, device_id=device_id) as session:
            try:
                now = self.clock()
                vendor = self._current(session, vouched, group)
                require_group(session, vendor.group, lock="share")
                if vendor.allow_listed and not vendors_db.is_allowed(
                        session=session, vendor=vendor.name, device_id=device_id):
                    raise ForbiddenError(f"device id {device_id} is not on vendor "
                                         f"{vendor.name}'s allow list")
                record = vendors_db.get_record(session=session, fingerprint=vouched.fingerprint)
                if record is not None and not record.armed:
                    raise ForbiddenError(
                        f"this manufacturer certificate already enrolled device "
                        f"{record.device_id} at {record.enrolled_at.isoformat()}; an operator "
                        f"re-arms it with fleet device rearm {record.device_id}")
                device = devices_db.get_device(session=session, device_id=device_id,
                                               for_update=True)
                superseded: list[str] = []
                if device is None:
                    names_db.require_disjoint(session=session, identity=ident)
                    try:  # a concurrent enrollment of the same id may have committed meanwhile
                        with session.begin_nested():
                            device = devices_db.create_device(
                                session=session, device_id=device_id, group=vendor.group,
                                status=DeviceStatus.ACTIVE, now=now)
                    except IntegrityError as exc:
                        raise _already_registered(device_id) from exc
                else:
                    if record is None or record.device_id != device.id:
                        raise _already_registered(device.id)
                    if device.status == DeviceStatus.SUSPENDED:
                        raise DeviceNotActiveError(f"device {device.id} is suspended")
                    if device.group != vendor.group:
                        raise ForbiddenError(f"device {device.id} is in group {device.group!r}, "
                                             f"not vendor {vendor.name}'s {vendor.group!r}")
                    # Re-armed: the device comes back (revoked ones too) on its new key.
                    devices_db.set_device_status(session=session, device=device,
                                                 status=DeviceStatus.ACTIVE, reason=None,
                                                 now=now)
                    superseded = certs_db.supersede_active(session=session, device_id=device.id,
                                                           now=now)
                if record is None:
                    try:  # one enrollment per certificate, also when two race
                        with session.begin_nested():
                            vendors_db.add_record(session=session, record=ManufacturerCertificate(
                                fingerprint_sha256=vouched.fingerprint,
                                issuer=certificate.issuer.rfc4514_string()[:1024],
                                serial=serial_hex(certificate.serial_number)[:64],
                                vendor=vendor.name, device_id=device_id, enrolled_at=now,
                                armed=False, rearm_count=0))
                    except IntegrityError as exc:
                        raise ForbiddenError("this manufacturer certificate has just enrolled "
                                             "a device (a concurrent request)") from exc
                elif not vendors_db.disarm(session=session, fingerprint=vouched.fingerprint,
                                           now=now):
                    raise ForbiddenError("this manufacturer certificate has just enrolled a "
                                         "device (a concurrent request)")
                require_key_not_compromised(session, request.csr.public_key(), device_id)
            except FleetError as error:
                error.context.update(detail)
                raise
            cert = self._sign(ident, request.csr.public_key(), self.settings.device_lifetime,
                              now)
            row = self._record(session, cert, ident, now)
            for old in superseded:
                events_db.record_revocation(session=session, now=now, kind="superseded",
                                            serial=old, device_id=device_id)
            self.audit(session, action=ACTION, outcome="ok", actor=actor, device_id=device_id,
                       serial=row.serial,
                       detail={**detail, "group": vendor.group, "key": request.key_name,
                               "rearmed": record is not None, "channel_bound": bound,
                               "superseded": superseded})
        return Issued(cert, row)

    def rearm_device(self, *, device_id: str, actor: str) -> list[ManufacturerCertificate]:
        """Let the manufacturer certificate(s) *device_id* enrolled with enroll once more
        (a factory reset, a device revoked or deleted by mistake)."""
        with self._audited("device.rearm", actor=actor, device_id=device_id) as session:
            records = vendors_db.records_of_device(session=session, device_id=device_id) \
                if pki.DEVICE_ID_PATTERN.fullmatch(device_id) else []
            if not records:
                raise NotFoundError(f"device {device_id!r} never enrolled with a manufacturer "
                                    "certificate", device_id=device_id)
            if all(record.armed for record in records):
                raise ConflictError(f"the manufacturer certificate of device {device_id} is "
                                    "armed already", device_id=device_id)
            now = self.clock()
            vendors_db.rearm(session=session, device_id=device_id, now=now)
            rearmed = vendors_db.records_of_device(session=session, device_id=device_id)
            self.audit(session, action="device.rearm", outcome="ok", actor=actor,
                       device_id=device_id, detail={"manufacturer_certificates": [
                           {"fingerprint_sha256": r.fingerprint_sha256, "vendor": r.vendor,
                            "serial": r.serial, "rearm_count": r.rearm_count}
                           for r in rearmed]})
        return list(rearmed)

    def _current(self, session: Session, vouched: Vouched, group: str | None) -> VendorRow:
        """The vendor as the registry holds it now (not removed meanwhile), and the group an
        EST label selects being its group."""
        vendor = vendors_db.get_vendor(session=session, name=vouched.vendor.name)
        if vendor is None or vendor.fingerprint_sha256 != vouched.vendor.fingerprint_sha256:
            raise ManufacturerCertificateError(f"vendor {vouched.vendor.name} was removed",
                                               verdict="unknown-vendor")
        if group is not None and group != vendor.group:
            raise ForbiddenError(f"vendor {vendor.name} enrolls into group {vendor.group!r}, "
                                 f"not {group!r} (the EST label's)")
        return vendor


def _detail(vouched: Vouched) -> dict[str, object]:
    certificate = vouched.certificate
    return {"vendor": vouched.vendor.name, "manufacturer_certificate": {
        "fingerprint_sha256": vouched.fingerprint,
        "issuer": certificate.issuer.rfc4514_string(),
        "serial": serial_hex(certificate.serial_number)}}


def _already_registered(device_id: str) -> ForbiddenError:
    return ForbiddenError(
        f"device {device_id} is already registered and this manufacturer certificate is not "
        "armed for it", device_id=device_id)
