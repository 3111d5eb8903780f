"""Admission by name: for brokers that verify the TLS client certificate themselves and tell
Fleet only its names (EMQX's HTTP authentication and authorization, say).

Such a broker passes the certificate's common name (and subject), never the certificate, so
Fleet cannot know which of an identity's certificates was presented. It decides on every
certificate of that name the registry holds that has not expired: each one goes through the
broker's own admission checks (``ADMISSION_CHECKS``: issuer and signature, validity, key
usage, identity, client id, registry status, superseded grace), and the name is admitted if
one of them passes. What the name is admitted with is the policy's grants for the identity
and the soonest time one of its admitted certificates stops being usable, so a broker that
disconnects the client then never keeps it past the end of the certificate it presented.

The gap this leaves: while an identity holds an admitted certificate, a revoked certificate
of the same name that has not expired is still admitted here (the name cannot tell them
apart). The broker's own revocation check at the TLS handshake (CRL or OCSP) names the exact
certificate and closes it; see docs/scale-out.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from fleet import pki
from fleet.acl import Grants, Policy
from fleet.authority.admission import Admission, AdmissionPolicy
from fleet.errors import CertificateNotActiveError, FleetError, IdentityError
from fleet.pki import Identity
from fleet.registry import certificates as certs_db
from fleet.registry.engine import session as new_session
from fleet.registry.engine import unavailable_as_error
from fleet.registry.models import Certificate

MAX_CERTIFICATES = 16
"""Certificates of one name assessed at most (the newest); an identity rarely has more than
two unexpired ones (a renewal and the certificate it superseded)."""


@dataclass(frozen=True, slots=True)
class NamedAdmission:
    """A name admitted with some certificate of it."""

    identity: Identity
    group: str | None
    grants: Grants
    usable_until: datetime
    """The soonest end of use (notAfter, or a superseded certificate's grace) among the
    admitted certificates."""
    serials: tuple[str, ...]
    """The admitted certificates."""


def admit_named(authority: AdmissionPolicy, *, common_name: str, client_id: str,
                policy: Policy, subject: str | None = None) -> NamedAdmission:
    """May the holder of a certificate with *common_name* (and *subject*, when given) be on
    the broker with *client_id*? Raises the refusal of the newest certificate of that name
    when none is admitted (RegistryUnavailableError when the registry cannot say)."""
    if not pki.DEVICE_ID_PATTERN.fullmatch(common_name):
        raise IdentityError(f"common name {common_name[:80]!r} is no fleet identity")
    if subject is not None and f"CN={common_name}" not in _attributes(subject):
        raise IdentityError(f"subject {subject[:200]!r} does not name CN={common_name}")
    rows = _unexpired_certificates(authority, common_name)
    if not rows:
        raise CertificateNotActiveError(
            f"no unexpired certificate of {common_name!r} is in the registry")
    admitted: list[Admission] = []
    refusal: FleetError | None = None
    for row in rows:
        decision = authority.assess(x509.load_pem_x509_certificate(row.pem.encode()),
                                    client_id=client_id, policy=policy)
        if decision.admission is not None:
            admitted.append(decision.admission)
        elif refusal is None:
            assert decision.refusal is not None
            assert decision.refusal.error is not None
            refusal = decision.refusal.error
    if not admitted:
        assert refusal is not None
        raise refusal
    first = admitted[0]
    return NamedAdmission(identity=first.identity, group=first.group, grants=first.grants,
                          usable_until=min(a.usable_until for a in admitted),
                          serials=tuple(a.serial for a in admitted))


def _unexpired_certificates(authority: AdmissionPolicy, name: str) -> Sequence[Certificate]:
    """The newest certificates of device or service *name* that have not expired (revoked
    ones included: their refusal is the reason given when nothing else is admitted)."""
    now = authority.clock()
    with unavailable_as_error(), new_session(authority.engine) as session:
        rows = [*certs_db.list_certificates(session=session, device_id=name),
                *certs_db.list_certificates(session=session, service=name)]
    rows = [row for row in rows if row.not_after > now]
    rows.sort(key=lambda row: row.issued_at, reverse=True)
    return rows[:MAX_CERTIFICATES]


def _attributes(subject: str) -> set[str]:
    """The ``TYPE=value`` parts of a subject written as RFC 4514 (``CN=a,O=b``) or as
    OpenSSL's one-line form (``/O=b/CN=a``)."""
    return {part.strip() for part in subject.replace("/", ",").split(",") if part.strip()}
