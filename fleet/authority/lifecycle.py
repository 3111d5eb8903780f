"""The lifecycle operators drive: revocation, suspension, service certificates."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from sqlmodel import Session

from fleet import pki
from fleet.authority.core import SERIAL_PATTERN, AuthorityCore, Issued
from fleet.errors import ConflictError, NotFoundError
from fleet.pki import Identity
from fleet.registry import certificates as certs_db
from fleet.registry import devices as devices_db
from fleet.registry import events as events_db
from fleet.registry import names as names_db
from fleet.registry import tokens as tokens_db
from fleet.registry.models import Certificate, CertificateStatus, Device, DeviceStatus

KEY_COMPROMISE = "keyCompromise"
DELETABLE = (DeviceStatus.PENDING, DeviceStatus.REVOKED)
"""Devices ``fleet device delete`` removes: never enrolled, or revoked."""
DETAIL_SERIALS = 20
"""Serials a device.delete audit event names (it counts them all)."""


class LifecyclePolicy(AuthorityCore):
    """Operators revoke, suspend and resume devices, revoke certificates, issue services."""

    def revoke_device(self, *, device_id: str, reason: str, actor: str) -> Device:
        """Revoke every certificate and unused token of a device; it can never enroll again."""
        with self._audited("device.revoke", actor=actor, device_id=device_id) as session:
            pki.check_reason(reason)
            device = self._device(session, device_id)
            if device.status == DeviceStatus.REVOKED:
                raise ConflictError(f"device {device_id} is already revoked",
                                    device_id=device_id)
            now = self.clock()
            serials = certs_db.unrevoked_serials(session=session, device_id=device_id)
            certs_db.revoke_certificates(session=session, serials=serials, reason=reason, now=now)
            token_ids = tokens_db.unused_tokens_for_device(session=session, device_id=device_id)
            tokens_db.revoke_tokens(session=session, token_ids=token_ids, now=now)
            devices_db.set_device_status(session=session, device=device,
                                         status=DeviceStatus.REVOKED, reason=reason, now=now)
            events_db.record_revocation(session=session, now=now, kind="revoked",
                                        device_id=device_id)
            self.audit(session, action="device.revoke", outcome="ok", actor=actor,
                       device_id=device_id, reason=reason,
                       detail={"serials": serials, "tokens": token_ids})
        self._crl_cache = None
        return device

    def revoke_certificate(self, *, serial: str, reason: str, actor: str) -> Certificate:
        serial = serial.lower().replace(":", "")
        with self._audited("cert.revoke", actor=actor, serial=serial) as session:
            pki.check_reason(reason)
            # Locked: of concurrent revocations of one certificate only the first is made.
            record = certs_db.get_certificate(session=session, serial=serial, for_update=True) \
                if SERIAL_PATTERN.fullmatch(serial) else None
            if record is None:
                raise NotFoundError(f"unknown certificate serial {serial!r}", serial=serial)
            if record.status == CertificateStatus.REVOKED:
                raise ConflictError(f"certificate {serial} is already revoked", serial=serial)
            now = self.clock()
            revoked = [record]
            if reason == KEY_COMPROMISE and record.spki_sha256:
                # Every certificate of the key, active or superseded, is as compromised.
                revoked += [other for other in certs_db.unrevoked_with_key(
                    session=session, spki_sha256=record.spki_sha256) if other.serial != serial]
            serials = [row.serial for row in revoked]
            certs_db.revoke_certificates(session=session, serials=serials, reason=reason,
                                         now=now)
            for row in revoked:
                events_db.record_revocation(session=session, now=now, kind="revoked",
                                            serial=row.serial, device_id=row.device_id)
            self.audit(session, action="cert.revoke", outcome="ok", actor=actor,
                       device_id=record.device_id, serial=serial, reason=reason,
                       detail={"same_key": serials[1:]} if len(serials) > 1 else None)
            record.status, record.revoked_at, record.revocation_reason = (
                CertificateStatus.REVOKED, now, reason)
        self._crl_cache = None
        return record

    def suspend_device(self, *, device_id: str, actor: str, reason: str | None = None) -> Device:
        with self._audited("device.suspend", actor=actor, device_id=device_id) as session:
            device = self._device(session, device_id)
            if device.status != DeviceStatus.ACTIVE:
                raise ConflictError(f"device {device_id} is {device.status}, not active",
                                    device_id=device_id)
            now = self.clock()
            devices_db.set_device_status(session=session, device=device,
                                         status=DeviceStatus.SUSPENDED, reason=reason, now=now)
            events_db.record_revocation(session=session, now=now, kind="suspended",
                                        device_id=device_id)
            self.audit(session, action="device.suspend", outcome="ok", actor=actor,
                       device_id=device_id, reason=reason)
        return device

    def resume_device(self, *, device_id: str, actor: str) -> Device:
        with self._audited("device.resume", actor=actor, device_id=device_id) as session:
            device = self._device(session, device_id)
            if device.status != DeviceStatus.SUSPENDED:
                raise ConflictError(f"device {device_id} is {device.status}, not suspended",
                                    device_id=device_id)
            devices_db.set_device_status(session=session, device=device,
                                         status=DeviceStatus.ACTIVE, reason=None,
                                         now=self.clock())
            self.audit(session, action="device.resume", outcome="ok", actor=actor,
                       device_id=device_id)
        return device

    def delete_device(self, *, device_id: str, actor: str) -> Device:
        """Remove a device that never enrolled (pending) or is revoked from the registry.

        Its certificates stay (the CRL lists the revoked ones until they expire, a key revoked
        for keyCompromise stays refused), and so do its audit events; tokens bound to it that
        could still enroll it are revoked. Its id is free again: a later enrollment under it
        makes a new device, which inherits the old certificates' history.
        """
        with self._audited("device.delete", actor=actor, device_id=device_id) as session:
            device = self._device(session, device_id)
            if device.status not in DELETABLE:
                raise ConflictError(
                    f"device {device_id} is {device.status}: only a device that never enrolled "
                    f"or is revoked can be deleted; revoke it first (fleet device revoke "
                    f"{device_id} --reason REASON)", device_id=device_id)
            token_ids = tokens_db.unused_tokens_for_device(session=session, device_id=device_id)
            tokens_db.revoke_tokens(session=session, token_ids=token_ids, now=self.clock())
            kept = [c.serial for c in certs_db.list_certificates(session=session,
                                                                 device_id=device_id)]
            devices_db.delete_device(session=session, device_id=device_id)
            self.audit(session, action="device.delete", outcome="ok", actor=actor,
                       device_id=device_id,
                       detail={"group": device.group, "status": device.status,
                               "tokens": token_ids, "certificates_kept": len(kept),
                               "serials": kept[:DETAIL_SERIALS]})
        return device

    def _device(self, session: Session, device_id: str) -> Device:
        # An id that cannot exist is not looked up (PostgreSQL refuses NUL bytes in a query).
        device = devices_db.get_device(session=session, device_id=device_id, for_update=True) \
            if pki.DEVICE_ID_PATTERN.fullmatch(device_id) else None
        if device is None:
            raise NotFoundError(f"unknown device {device_id!r}", device_id=device_id)
        return device

    def issue_service_certificate(
        self, *, name: str, public_key: CertificatePublicKeyTypes, actor: str,
    ) -> Issued:
        """A certificate for a backend service (``spiffe://<domain>/service/<name>``)."""
        with self._audited("service.issue", actor=actor) as session:
            identity = Identity("service", pki.check_service_name(name))
            key_name = pki.check_key_policy(public_key)
            names_db.require_disjoint(session=session, identity=identity)
            now = self.clock()
            cert = self._sign(identity, public_key, self.settings.service_lifetime, now)
            row = self._record(session, cert, identity, now)
            self.audit(session, action="service.issue", outcome="ok", actor=actor,
                       serial=row.serial, detail={"service": name, "key": key_name})
        return Issued(cert, row)
