"""Broker admission: may this certificate be connected right now."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from fleet import pki
from fleet.authority.core import AuthorityCore, require_registered, serial_hex
from fleet.errors import CertificateNotActiveError, DeviceNotActiveError
from fleet.pki import Identity
from fleet.registry import certificates as certs_db
from fleet.registry import events as events_db
from fleet.registry.engine import session as new_session
from fleet.registry.engine import unavailable_as_error
from fleet.registry.models import CertificateStatus, DeviceStatus, RevocationEvent


@dataclass(frozen=True, slots=True)
class Admission:
    """Who a live TLS connection is, as the broker needs it."""

    identity: Identity
    group: str | None
    serial: str
    usable_until: datetime
    """notAfter, or for a superseded certificate the end of its grace, if sooner."""
    superseded: bool = False


class AdmissionPolicy(AuthorityCore):
    """Whether a certificate may be on the broker, and the revocation feed brokers follow."""

    def admit(self, *, certificate: x509.Certificate, chain_verified: bool = False) -> Admission:
        """May this certificate be on the broker right now?

        *chain_verified*: the TLS handshake already checked the signature chain to the fleet
        CA, so it is not verified again; the registry must still know this exact certificate.
        """
        now = self.clock()
        verdict = pki.verify_leaf(certificate, issuer=self.trust.issuing,
                                  trust_domain=self.settings.trust_domain, now=now,
                                  signature_verified=chain_verified)
        serial = serial_hex(certificate.serial_number)
        if not verdict.ok or verdict.identity is None:
            raise CertificateNotActiveError(verdict.detail, serial=serial,
                                            verdict=verdict.reason.value)
        identity = verdict.identity
        with unavailable_as_error(), new_session(self.engine) as session:
            facts = certs_db.admission_facts(session=session, serial=serial)
        require_registered(certificate, identity, facts.fingerprint_sha256 if facts else None,
                           facts.status if facts else None)
        assert facts is not None
        if identity.kind == "device" and (facts.device_id != identity.name
                                          or facts.device_status != DeviceStatus.ACTIVE):
            status = facts.device_status or "unknown"
            raise DeviceNotActiveError(f"device {identity.name} is {status}",
                                       device_id=identity.name, serial=serial)
        if identity.kind == "service" and facts.service != identity.name:
            raise CertificateNotActiveError(f"certificate {serial} is not {identity}'s",
                                            serial=serial)
        usable_until, superseded = facts.not_after, facts.status == CertificateStatus.SUPERSEDED
        if superseded:
            cutoff = self.superseded_cutoff(facts.superseded_at or now)
            if now >= cutoff:
                raise CertificateNotActiveError(
                    f"certificate {serial} was superseded by a renewal; its grace ended at "
                    f"{cutoff.isoformat()}", serial=serial, device_id=facts.device_id)
            usable_until = min(usable_until, cutoff)
        return Admission(identity=identity, group=facts.device_group, serial=serial,
                         usable_until=usable_until, superseded=superseded)

    def superseded_cutoff(self, superseded_at: datetime) -> datetime:
        """Until when a certificate superseded at *superseded_at* stays usable."""
        return superseded_at + self.settings.superseded_grace

    def revocations_after(self, after_id: int, *, limit: int = 1000) -> Sequence[RevocationEvent]:
        with unavailable_as_error(), new_session(self.engine) as session:
            return events_db.revocations_after(session=session, after_id=after_id, limit=limit)

    def last_revocation_id(self) -> int:
        with unavailable_as_error(), new_session(self.engine) as session:
            return events_db.last_revocation_id(session=session)
