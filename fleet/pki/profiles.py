"""Certificate profiles: the server alone decides every extension of what it issues."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet.pki.identity import Identity

BACKDATE = timedelta(minutes=5)
"""notBefore is set this far back so devices with slightly slow clocks accept new certificates."""


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything about a certificate except its key, serial and issuer."""

    subject: x509.Name
    lifetime: timedelta
    is_ca: bool = False
    path_length: int | None = None
    extended_key_usages: tuple[x509.ObjectIdentifier, ...] = ()
    subject_alternative_names: tuple[x509.GeneralName, ...] = ()
    crl_url: str | None = None
    ca_issuers_url: str | None = None
    ocsp_url: str | None = None
    ocsp_no_check: bool = False
    """id-pkix-ocsp-nocheck (RFC 6960 4.2.2.2.1): for a delegated OCSP responder."""
    backdate: timedelta = field(default=BACKDATE)


def _name(common_name: str, organization: str | None) -> x509.Name:
    attributes = []
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def identity_profile(
    identity: Identity,
    *,
    trust_domain: str,
    lifetime: timedelta,
    organization: str | None = None,
    public_base_url: str | None = None,
    crl_path: str = "/crl",
) -> Profile:
    """Device or service leaf: CN=name, SPIFFE URI SAN, clientAuth only; with a public base
    URL, the CRL distribution point is *crl_path* under it (its issuing CA's CRL) and the AIA
    names the CA certificates and the OCSP responder (``/ocsp``) under it."""
    base = public_base_url.rstrip("/") if public_base_url else None
    return Profile(
        subject=_name(identity.name, organization),
        lifetime=lifetime,
        extended_key_usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
        subject_alternative_names=(
            x509.UniformResourceIdentifier(identity.spiffe_uri(trust_domain)),
        ),
        crl_url=f"{base}{crl_path}" if base else None,
        ca_issuers_url=f"{base}/.well-known/est/cacerts" if base else None,
        ocsp_url=f"{base}/ocsp" if base else None,
    )


def ocsp_responder_profile(
    common_name: str, *, lifetime: timedelta, organization: str | None = None
) -> Profile:
    """A delegated OCSP responder (RFC 6960 4.2.2.2): id-kp-OCSPSigning only, and
    id-pkix-ocsp-nocheck, so its short lifetime is what bounds it rather than a revocation
    check of its own."""
    return Profile(
        subject=_name(common_name, organization),
        lifetime=lifetime,
        extended_key_usages=(ExtendedKeyUsageOID.OCSP_SIGNING,),
        ocsp_no_check=True,
    )


def server_profile(
    hostnames: Sequence[str], *, lifetime: timedelta, organization: str | None = None
) -> Profile:
    """TLS server certificate for the EST service and the broker."""
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return Profile(
        subject=_name(hostnames[0], organization),
        lifetime=lifetime,
        extended_key_usages=(ExtendedKeyUsageOID.SERVER_AUTH,),
        subject_alternative_names=tuple(names),
        backdate=timedelta(0),
    )


def ca_profile(
    common_name: str, *, lifetime: timedelta, path_length: int, organization: str | None = None
) -> Profile:
    """Root (path length 1) or issuing (path length 0) CA."""
    return Profile(
        subject=_name(common_name, organization),
        lifetime=lifetime,
        is_ca=True,
        path_length=path_length,
        backdate=timedelta(0),
    )
