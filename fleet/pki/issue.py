"""Signing certificates from a profile."""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from fleet.pki.keys import PrivateKey
from fleet.pki.profiles import Profile


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | None:
    """The digest to sign with: none for EdDSA, SHA-384 for P-384, else SHA-256."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    key_size = getattr(key, "key_size", 256)
    return hashes.SHA384() if key_size == 384 else hashes.SHA256()


def issue_certificate(
    *,
    profile: Profile,
    public_key: CertificatePublicKeyTypes,
    issuer_key: PrivateKey,
    issuer: x509.Certificate | None,
    now: datetime,
    serial_number: int | None = None,
) -> x509.Certificate:
    """Sign a certificate for *public_key*; ``issuer=None`` makes it self-signed."""
    issuer_name = issuer.subject if issuer is not None else profile.subject
    not_after = now + profile.lifetime
    if issuer is not None and not_after > issuer.not_valid_after_utc:
        not_after = issuer.not_valid_after_utc
    builder = (
        x509.CertificateBuilder()
        .subject_name(profile.subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial_number or x509.random_serial_number())
        .not_valid_before(now - profile.backdate)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=profile.is_ca, path_length=profile.path_length),
            critical=True,
        )
        .add_extension(_key_usage(profile), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    authority_key = issuer.public_key() if issuer is not None else public_key
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_key),  # type: ignore[arg-type]
        critical=False,
    )
    if profile.extended_key_usages:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(list(profile.extended_key_usages)), critical=False
        )
    if profile.subject_alternative_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(list(profile.subject_alternative_names)),
            critical=not profile.subject.rdns,
        )
    if profile.crl_url:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(profile.crl_url)],
            relative_name=None, reasons=None, crl_issuer=None,
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    access = [
        x509.AccessDescription(method, x509.UniformResourceIdentifier(url))
        for method, url in ((x509.oid.AuthorityInformationAccessOID.OCSP, profile.ocsp_url),
                            (x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
                             profile.ca_issuers_url))
        if url
    ]
    if access:
        builder = builder.add_extension(x509.AuthorityInformationAccess(access), critical=False)
    if profile.ocsp_no_check:
        builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
    return builder.sign(issuer_key, signature_hash(issuer_key))


def _key_usage(profile: Profile) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not profile.is_ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=profile.is_ca,
        crl_sign=profile.is_ca,
        encipher_only=False,
        decipher_only=False,
    )
