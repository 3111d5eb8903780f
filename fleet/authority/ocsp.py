"""OCSP (RFC 6960): the status of one certificate, from the same registry facts as the CRL.

Every issuing CA in use answers for the certificates it issued, each through a delegated
responder certificate of its own (fleet.ocsp_responder), made on first use and renewed once
half of ``ocsp.responder_lifetime`` has passed. What a response says matches the CRL of its
issuing CA (fleet.authority.crl):

- revoked, with the time and reason recorded, for a revoked certificate; a superseded one
  past ``certificates.superseded_grace`` is revoked (superseded) from the end of its grace;
- good for any other certificate the issuing CA issued (active, or superseded within its
  grace; expired ones too: OCSP tells revocation, not validity);
- unknown for a serial this issuing CA did not issue.

A CertID naming an issuer that is not an issuing CA in use (another CA, or one retired,
whose key is gone) gets ``unauthorized`` (RFC 6960 2.3, RFC 5019 2.2.3): no responder here
is authorized to sign for it (RFC 6960 4.2.2.2), so a signed "unknown" could not verify.

A response to a request without a nonce is kept and served again (RFC 5019 4: the
responder may pre-produce responses) until a revocation event is recorded, the
certificate's grace ends, or half its validity has passed; so caches between the responder
and its clients see one thisUpdate and one ETag in that time. A request with a nonce always
gets a fresh response echoing it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.x509 import ocsp

from fleet import pki
from fleet.authority.admission import AdmissionPolicy
from fleet.authority.core import serial_hex
from fleet.ca import Issuing
from fleet.ocsp_responder import load_responder, new_responder, store_responder
from fleet.pki.ocsp import CertStatus, OcspMalformedError, OcspQuery, Responder
from fleet.registry import certificates as certs_db
from fleet.registry.engine import session as new_session
from fleet.registry.engine import unavailable_as_error
from fleet.registry.models import Certificate, CertificateStatus

CACHE_SIZE = 10_000
"""Responses without a nonce kept at most (least recently served dropped first)."""
RESPONDER_ACTOR = "ocsp"


@dataclass(frozen=True, slots=True)
class OcspAnswer:
    """An OCSP response (DER) and what the HTTP edge needs to serve it."""

    der: bytes
    outcome: str
    """good, revoked or unknown; else the unsuccessful response status (malformed_request,
    unauthorized...)."""
    this_update: datetime | None = None
    next_update: datetime | None = None
    """Set on a response without a nonce: it may be cached until then."""
    detail: str = ""
    """Why an unsuccessful response was given (for the log)."""


@dataclass(frozen=True, slots=True)
class _Kept:
    answer: OcspAnswer
    revocation_id: int
    refresh_at: datetime


class OcspPolicy(AdmissionPolicy):
    """Answer OCSP requests for every issuing CA in use."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._ocsp_lock = threading.Lock()
        self._responders: dict[int, Responder] = {}
        self._ocsp_kept: OrderedDict[tuple[str, bytes, bytes, int], _Kept] = OrderedDict()

    def ocsp_answer(self, request: bytes) -> OcspAnswer:
        """The OCSP response to the DER OCSPRequest *request*: never raises for what the
        request holds (malformedRequest, unauthorized), only when the registry or the CA
        cannot be read."""
        try:
            query = pki.parse_ocsp_request(request)
        except OcspMalformedError as error:
            return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST, error.message)
        signer = next(((issuing, key) for issuing, key in self.ca.signers()
                       if query.cert_id.names_issuer(issuing.certificate)), None)
        if signer is None:
            return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED,
                                 "the CertID names no issuing CA in use")
        issuing, issuing_key = signer
        now = self.clock()
        revocation_id = self.last_revocation_id()
        if query.nonce is None:
            with self._ocsp_lock:
                kept = self._ocsp_kept.get(query.cert_id.key)
                if kept and kept.revocation_id == revocation_id and now < kept.refresh_at:
                    self._ocsp_kept.move_to_end(query.cert_id.key)
                    return kept.answer
        with unavailable_as_error(), new_session(self.engine) as session:
            row = certs_db.get_certificate(session=session,
                                           serial=serial_hex(query.cert_id.serial_number))
        if row is not None and row.authority_key_id != issuing.key_id:
            row = None  # a serial of another issuing CA: not one this CA issued
        status = self._status(row, now)
        responder = self._responder(issuing, issuing_key, now)
        next_update = min(now + self.settings.ocsp_next_update,
                          responder.certificate.not_valid_after_utc)
        der = pki.build_ocsp_response(query=query, status=status, responder=responder,
                                      this_update=now, next_update=next_update)
        if query.nonce is not None:
            return OcspAnswer(der, status.name)
        answer = OcspAnswer(der, status.name, now, next_update)
        if row is not None:  # unknown serials are not kept: anyone can ask for any number
            self._keep(query, answer, revocation_id, self._refresh_at(row, now, next_update))
        return answer

    def _status(self, row: Certificate | None, now: datetime) -> CertStatus:
        """What the CRL of the row's issuing CA says of it (fleet.authority.crl)."""
        if row is None:
            return CertStatus.unknown()
        if row.status == CertificateStatus.REVOKED:
            return CertStatus.revoked(row.revoked_at or now, row.revocation_reason)
        if row.status == CertificateStatus.SUPERSEDED:
            cutoff = self.superseded_cutoff(row.superseded_at or now)
            if now >= cutoff:
                return CertStatus.revoked(cutoff, "superseded")
        return CertStatus.good()

    def _refresh_at(self, row: Certificate, now: datetime, next_update: datetime) -> datetime:
        refresh_at = now + (next_update - now) / 2
        if row.status == CertificateStatus.SUPERSEDED:
            cutoff = self.superseded_cutoff(row.superseded_at or now)
            if cutoff > now:  # its grace ends before then: it becomes revoked
                refresh_at = min(refresh_at, cutoff)
        return refresh_at

    def _keep(self, query: OcspQuery, answer: OcspAnswer, revocation_id: int,
              refresh_at: datetime) -> None:
        with self._ocsp_lock:
            self._ocsp_kept[query.cert_id.key] = _Kept(answer, revocation_id, refresh_at)
            self._ocsp_kept.move_to_end(query.cert_id.key)
            while len(self._ocsp_kept) > CACHE_SIZE:
                self._ocsp_kept.popitem(last=False)

    def _responder(self, issuing: Issuing, issuing_key: pki.PrivateKey,
                   now: datetime) -> Responder:
        """The delegated responder of *issuing*: the one in use while less than half its
        lifetime has passed, else the one on disk if that is younger (another process
        renewed it), else a new one (audited as ca.ocsp-responder)."""
        with self._ocsp_lock:
            responder = self._responders.get(issuing.number)
            if responder is None or not _fresh(responder, issuing, now):
                responder = load_responder(self.settings, issuing)
                if responder is None or not _fresh(responder, issuing, now):
                    responder = self._issue_responder(issuing, issuing_key, now)
                self._responders[issuing.number] = responder
            return responder

    def _issue_responder(self, issuing: Issuing, issuing_key: pki.PrivateKey,
                         now: datetime) -> Responder:
        responder = new_responder(self.settings, issuing, issuing_key, now=now)
        certificate = responder.certificate
        with self.transaction() as session:
            self.audit(session, action="ca.ocsp-responder", outcome="ok",
                       actor=RESPONDER_ACTOR, serial=serial_hex(certificate.serial_number),
                       detail={"issuing": issuing.number,
                               "fingerprint_sha256": pki.fingerprint_sha256(certificate),
                               "not_after": certificate.not_valid_after_utc.isoformat()})
        store_responder(self.settings, issuing, responder)
        return responder

def _fresh(responder: Responder, issuing: Issuing, now: datetime) -> bool:
    """Issued by *issuing* and less than half its lifetime passed."""
    certificate = responder.certificate
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return responder.issuer == issuing.certificate and start <= now < start + (end - start) / 2


def _unsuccessful(status: ocsp.OCSPResponseStatus, detail: str) -> OcspAnswer:
    return OcspAnswer(pki.unsuccessful_ocsp_response(status), status.name.lower(),
                      detail=detail)

