"""Re-enrollment with the current certificate (RFC 7030 simplereenroll)."""

from __future__ import annotations

from cryptography import x509
from sqlmodel import Session

from fleet import pki
from fleet.authority.core import (
    AuthorityCore,
    Issued,
    key_compromised,
    require_enrollable,
    require_registered,
    serial_hex,
)
from fleet.errors import CertificateNotActiveError, FleetError, ForbiddenError, IdentityError
from fleet.registry import certificates as certs_db
from fleet.registry import devices as devices_db
from fleet.registry import events as events_db
from fleet.registry.models import CertificateStatus


class RenewalPolicy(AuthorityCore):
    """simplereenroll (RFC 7030): the current certificate authorizes its renewal or rekey."""

    def reenroll(self, *, client_certificate: x509.Certificate, csr: bytes, actor: str) -> Issued:
        """simplereenroll: the current certificate authorizes its own renewal or rekey."""
        serial = serial_hex(client_certificate.serial_number)
        # Parsed before the transaction; a refusal of the CSR is raised in it, in its turn.
        request: pki.CSRRequest | None = None
        csr_refused: FleetError | None = None
        try:
            request = pki.inspect_csr(pki.load_csr(csr))
        except FleetError as error:
            csr_refused = error
        spki = pki.spki_sha256(request.csr.public_key()) if request is not None else ""

        def apply(session: Session) -> Issued:
            now = self.clock()
            verdict = pki.verify_leaf(client_certificate,
                                      issuers=self.trust.issuer_certificates,
                                      trust_domain=self.settings.trust_domain, now=now)
            if not verdict.ok or verdict.identity is None:
                raise CertificateNotActiveError(f"client certificate refused: {verdict.detail}",
                                                serial=serial, verdict=verdict.reason.value)
            identity = verdict.identity
            if identity.kind != "device":
                raise ForbiddenError(f"{identity} cannot re-enroll over EST", serial=serial)
            record = certs_db.renewal_facts(session=session, serial=serial, spki_sha256=spki)
            require_registered(client_certificate, identity,
                               record.fingerprint_sha256 if record else None,
                               record.status if record else None)
            assert record is not None
            if record.status != CertificateStatus.ACTIVE:
                raise CertificateNotActiveError(
                    f"certificate {serial} is {record.status}; only the current certificate "
                    "can be renewed", serial=serial, device_id=identity.name)
            device = devices_db.get_device(session=session, device_id=identity.name,
                                           for_update=True)
            if device is None:
                raise CertificateNotActiveError(f"device {identity.name} is not registered",
                                                device_id=identity.name)
            require_enrollable(device)
            if csr_refused is not None:
                raise csr_refused
            assert request is not None
            if not pki.same_subject_and_san(request.csr, client_certificate):
                raise IdentityError(
                    "CSR subject and subjectAltName must be identical to the certificate being "
                    f"renewed (CN={identity.name})", device_id=identity.name, serial=serial)
            if record.key_compromised:
                raise key_compromised(identity.name)
            # Only one renewal can win per certificate, even under concurrent requests.
            if not certs_db.supersede_if_active(session=session, serial=serial, now=now):
                raise CertificateNotActiveError(f"certificate {serial} was already renewed",
                                                serial=serial, device_id=identity.name)
            cert = self._sign(identity, request.csr.public_key(),
                              self.settings.device_lifetime, now)
            row = self._record(session, cert, identity, now, replaces=serial)
            # Brokers drop the superseded certificate's connections when its grace ends.
            events_db.record_revocation(session=session, now=now, kind="superseded",
                                        serial=serial, device_id=identity.name)
            rekey = request.csr.public_key() != client_certificate.public_key()
            self.audit(session, action="reenroll", outcome="ok", actor=actor,
                       device_id=identity.name, serial=row.serial,
                       detail={"replaces": serial, "mode": "rekey" if rekey else "renew",
                               "key": request.key_name})
            return Issued(cert, row)

        return self._apply("reenroll", apply, actor=actor, serial=serial)
