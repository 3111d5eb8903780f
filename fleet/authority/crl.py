"""The certificate revocation lists (RFC 5280 section 5): one per issuing CA in use.

Each issuing CA signs the CRL of the certificates it issued (RFC 5280 5.1.2.3: a CRL's issuer
is the issuer of the certificates it lists), so while a rotation overlaps there are two.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from sqlmodel import Session

from fleet import pki
from fleet.authority.admission import AdmissionPolicy
from fleet.ca import Issuing
from fleet.errors import NotFoundError
from fleet.registry import certificates as certs_db
from fleet.registry import events as events_db
from fleet.registry.engine import session as new_session
from fleet.registry.engine import unavailable_as_error


@dataclass(frozen=True, slots=True)
class SignedCrl:
    """The CRL of one issuing CA."""

    issuing: Issuing
    crl: x509.CertificateRevocationList


class CrlPolicy(AdmissionPolicy):
    """The CRLs: rebuilt when a revocation or the end of a grace changes them."""

    def current_crls(self) -> tuple[SignedCrl, ...]:
        """One CRL per issuing CA in use, the active one first, rebuilt (each with a new,
        higher CRL number) only when something changed."""
        with self._crl_lock:
            last_event = self.last_revocation_id()
            now = self.clock()
            cached = self._crl_cache
            if cached and cached[0] == last_event and now < cached[1]:
                return cached[2]
            crls = self.build_crls()
            refresh_at = now + self.settings.crl_next_update / 2
            with unavailable_as_error(), new_session(self.engine) as session:
                cutoff = certs_db.next_supersession_cutoff(
                    session=session, now=now, grace=self.settings.superseded_grace)
            if cutoff is not None:  # a grace ends before then: that certificate joins the CRL
                refresh_at = min(refresh_at, cutoff)
            self._crl_cache = (last_event, refresh_at, crls)
            return crls

    def current_crl(self, number: int | None = None) -> x509.CertificateRevocationList:
        """The CRL of issuing CA *number*; without one, of the oldest issuing CA in use (the
        only one until a rotation; EST's ``/crl``)."""
        return self.crls_of(number)[-1].crl

    def crls_of(self, number: int | None = None) -> tuple[SignedCrl, ...]:
        """The current CRL of issuing CA *number* (NotFoundError unless it is in use), or
        without *number* every current CRL."""
        crls = self.current_crls()
        if number is None:
            return crls
        chosen = tuple(signed for signed in crls if signed.issuing.number == number)
        if not chosen:
            in_use = ", ".join(str(signed.issuing.number) for signed in crls)
            raise NotFoundError(f"no issuing CA {number} in use (in use: {in_use})")
        return chosen

    def build_crls(self) -> tuple[SignedCrl, ...]:
        """Sign a fresh CRL for every issuing CA in use, each with the next CRL number.

        The numbers are taken first: the counter's row stays locked until commit, so
        whichever build reads the revocations later gets the higher number (what other
        processes revoked meanwhile is never missing from a CRL numbered above one that
        lists it, RFC 5280 5.2.3).
        """
        with self.transaction() as session:
            signers = self.ca.signers()
            numbers = [events_db.next_crl_number(session=session) for _ in signers]
            now = self.clock()
            return tuple(
                SignedCrl(issuing, pki.build_crl(
                    issuer=issuing.certificate, issuer_key=key,
                    revoked=self._revoked(session, now, issuing.key_id),
                    crl_number=crl_number, now=now,
                    next_update=self.settings.crl_next_update))
                for (issuing, key), crl_number in zip(signers, numbers, strict=True))

    def _revoked(self, session: Session, now: datetime,
                 key_id: str) -> list[pki.RevokedEntry]:
        return [
            pki.RevokedEntry(int(row.serial, 16), row.revoked_at or now,
                             row.revocation_reason or "unspecified")
            for row in certs_db.revoked_certificates(session=session, now=now,
                                                     authority_key_id=key_id)
        ] + [  # superseded past their grace: other relying parties refuse them too
            pki.RevokedEntry(int(row.serial, 16),
                             self.superseded_cutoff(row.superseded_at or now), "superseded")
            for row in certs_db.superseded_since(
                session=session, now=now, before=now - self.settings.superseded_grace,
                authority_key_id=key_id)
        ]
