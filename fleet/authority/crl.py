"""The certificate revocation list (RFC 5280 section 5)."""

from __future__ import annotations

from cryptography import x509

from fleet import pki
from fleet.authority.admission import AdmissionPolicy
from fleet.registry import certificates as certs_db
from fleet.registry import events as events_db
from fleet.registry.engine import session as new_session
from fleet.registry.engine import unavailable_as_error


class CrlPolicy(AdmissionPolicy):
    """The CRL: rebuilt when a revocation or the end of a grace changes it."""

    def current_crl(self) -> x509.CertificateRevocationList:
        """The CRL, rebuilt (with a new, higher CRL number) only when something changed."""
        with self._crl_lock:
            last_event = self.last_revocation_id()
            now = self.clock()
            cached = self._crl_cache
            if cached and cached[0] == last_event and now < cached[1]:
                return cached[2]
            crl = self.build_crl()
            refresh_at = now + self.settings.crl_next_update / 2
            with unavailable_as_error(), new_session(self.engine) as session:
                cutoff = certs_db.next_supersession_cutoff(
                    session=session, now=now, grace=self.settings.superseded_grace)
            if cutoff is not None:  # a grace ends before then: that certificate joins the CRL
                refresh_at = min(refresh_at, cutoff)
            self._crl_cache = (last_event, refresh_at, crl)
            return crl

    def build_crl(self) -> x509.CertificateRevocationList:
        """Sign a fresh CRL with the next CRL number."""
        with self.transaction() as session:
            now = self.clock()
            number = events_db.next_crl_number(session=session)
            revoked = [
                pki.RevokedEntry(int(row.serial, 16), row.revoked_at or now,
                                 row.revocation_reason or "unspecified")
                for row in certs_db.revoked_certificates(session=session, now=now)
            ] + [  # superseded past their grace: other relying parties refuse them too
                pki.RevokedEntry(int(row.serial, 16),
                                 self.superseded_cutoff(row.superseded_at or now), "superseded")
                for row in certs_db.superseded_since(
                    session=session, now=now, before=now - self.settings.superseded_grace)
            ]
            return pki.build_crl(issuer=self.ca.issuing, issuer_key=self.ca.issuing_key,
                                 revoked=revoked, crl_number=number, now=now,
                                 next_update=self.settings.crl_next_update)
