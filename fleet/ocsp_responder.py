"""The delegated OCSP responders on disk: ``ca/ocsp-<n>.pem`` for issuing CA number n.

Each file holds the responder's key (encrypted with the CA passphrase, as the CA keys are)
and its certificate, written together in one atomic replace (0600, fleet.files): several
EST processes renewing at once leave one consistent pair, the last one written. The
certificate is issued by the issuing CA for id-kp-OCSPSigning with id-pkix-ocsp-nocheck
(fleet.pki.ocsp_responder_profile): it cannot be revoked, so it is short-lived.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from fleet import pki
from fleet.ca import Issuing, read_passphrase
from fleet.errors import CAError, KeyPolicyError
from fleet.files import write_private
from fleet.pki.keys import KeyType
from fleet.pki.ocsp import Responder
from fleet.settings import Settings

_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


def responder_path(settings: Settings, number: int) -> Path:
    return settings.ca_dir / f"ocsp-{number}.pem"


def load_responder(settings: Settings, issuing: Issuing) -> Responder | None:
    """The responder of *issuing* on disk; None when there is none, or it is not one
    *issuing* issued, or its key does not unlock or does not match (it is then replaced)."""
    path = responder_path(settings, issuing.number)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CAError(f"cannot read the OCSP responder {path}: {exc.strerror}") from exc
    key_pem, marker, cert_pem = data.partition(_CERTIFICATE)
    try:
        certificate = x509.load_pem_x509_certificate(marker + cert_pem)
        certificate.verify_directly_issued_by(issuing.certificate)
        key = pki.load_private_key_pem(key_pem, read_passphrase(settings)[0])
    except (ValueError, TypeError, InvalidSignature, KeyPolicyError):
        return None
    if key.public_key() != certificate.public_key():
        return None
    return Responder(certificate, key, issuing.certificate)


def new_responder(settings: Settings, issuing: Issuing, issuing_key: pki.PrivateKey, *,
                  now: datetime) -> Responder:
    """A new responder for *issuing* (not stored yet: see store_responder)."""
    key_type: KeyType = settings.ca_key_type  # type: ignore[assignment]
    key = pki.generate_private_key(key_type)
    organization = settings.organization or None
    certificate = pki.issue_certificate(
        profile=pki.ocsp_responder_profile(
            f"{organization or 'Fleet'} OCSP Responder {issuing.number}",
            lifetime=settings.ocsp_responder_lifetime, organization=organization),
        public_key=key.public_key(), issuer_key=issuing_key, issuer=issuing.certificate,
        now=now)
    return Responder(certificate, key, issuing.certificate)


def store_responder(settings: Settings, issuing: Issuing, responder: Responder) -> None:
    """Replace the responder of *issuing* on disk with *responder*."""
    write_private(responder_path(settings, issuing.number),
                  pki.private_key_pem(responder.key, read_passphrase(settings)[0])
                  + pki.certificate_pem(responder.certificate).encode())
