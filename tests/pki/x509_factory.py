"""Building real keys, CSRs and CAs for tests (no fixtures checked into the repository)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from fleet import pki
from fleet.pki import Identity

TRUST_DOMAIN = "fleet.local"
AnyKey = CertificateIssuerPrivateKeyTypes


@functools.cache
def cached_key(kind: str) -> AnyKey:
    """One key per kind and test process: RSA and DSA generation is slow."""
    makers: dict[str, Callable[[], AnyKey]] = {
        "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
        "p521": lambda: ec.generate_private_key(ec.SECP521R1()),
        "secp256k1": lambda: ec.generate_private_key(ec.SECP256K1()),
        "brainpoolP256r1": lambda: ec.generate_private_key(ec.BrainpoolP256R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
        "ed448": ed448.Ed448PrivateKey.generate,
        "rsa1024": lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
        "rsa2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa3072": lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
        "dsa2048": lambda: dsa.generate_private_key(key_size=2048),
    }
    return makers[kind]()


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 key (fast enough to make one per device)."""
    return ec.generate_private_key(ec.SECP256R1())


def csr_hash(key: AnyKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) \
        else hashes.SHA256()


def subject(common_name: str | None, *extra: x509.NameAttribute[str]) -> x509.Name:
    attributes = list(extra)
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def spiffe(device_id: str, trust_domain: str = TRUST_DOMAIN, kind: str = "device") -> str:
    return f"spiffe://{trust_domain}/{kind}/{device_id}"


def make_csr(
    common_name: str | None = "dev-1",
    *,
    key: AnyKey | None = None,
    name: x509.Name | None = None,
    uris: Sequence[str] = (),
    general_names: Sequence[x509.GeneralName] = (),
    extensions: Sequence[x509.ExtensionType] = (),
) -> x509.CertificateSigningRequest:
    """A signed CSR naming *common_name*, optionally with SANs and requested extensions."""
    key = key or cached_key("p256")
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        name if name is not None else subject(common_name)
    )
    sans = [x509.UniformResourceIdentifier(u) for u in uris] + list(general_names)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(key, csr_hash(key))


def pem(obj: x509.CertificateSigningRequest | x509.Certificate) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def der(obj: x509.CertificateSigningRequest | x509.Certificate) -> bytes:
    return obj.public_bytes(serialization.Encoding.DER)


def device_csr(device_id: str, key: AnyKey | None = None, **kwargs: object) -> bytes:
    """PEM of a CSR for *device_id* signed by *key* (a fresh P-256 key by default)."""
    return pem(make_csr(device_id, key=key or new_key(), **kwargs))  # type: ignore[arg-type]


# -- DER surgery: CSRs that are validly signed but malformed inside ------------------------

def der_tlv(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        length = bytes([size])
    else:
        raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


ECDSA_WITH_SHA256 = der_tlv(0x30, der_tlv(0x06, bytes.fromhex("2a8648ce3d040302")))


def resign(tbs: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """DER of a CSR made of *tbs* (CertificationRequestInfo) with a valid signature by *key*."""
    signature = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return der_tlv(0x30, tbs + ECDSA_WITH_SHA256 + der_tlv(0x03, b"\x00" + signature))


def replace_once(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, f"{old!r} occurs {data.count(old)} times"
    return data.replace(old, new)


# -- CAs ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TestCA:
    """A root and an issuing CA built in memory with fleet.pki."""

    __test__ = False
    root: x509.Certificate
    root_key: AnyKey
    issuing: x509.Certificate
    issuing_key: AnyKey

    def issue(
        self,
        identity: Identity | str,
        *,
        now: datetime,
        lifetime: timedelta = timedelta(days=30),
        key: AnyKey | None = None,
        trust_domain: str = TRUST_DOMAIN,
        public_base_url: str | None = None,
        organization: str | None = None,
    ) -> x509.Certificate:
        ident = identity if isinstance(identity, Identity) else Identity("device", identity)
        profile = pki.identity_profile(ident, trust_domain=trust_domain, lifetime=lifetime,
                                       organization=organization,
                                       public_base_url=public_base_url)
        return self.sign(profile, now=now, key=key)

    def sign(self, profile: pki.Profile, *, now: datetime,
             key: AnyKey | None = None) -> x509.Certificate:
        public = (key or cached_key("p256")).public_key()
        return pki.issue_certificate(profile=profile, public_key=public,
                                     issuer_key=self.issuing_key, issuer=self.issuing, now=now)


def make_ca(
    *, now: datetime, name: str = "Test", issuing_lifetime: timedelta = timedelta(days=365),
) -> TestCA:
    root_key, issuing_key = new_key(), new_key()
    root = pki.issue_certificate(
        profile=pki.ca_profile(f"{name} Root CA", lifetime=timedelta(days=3650), path_length=1),
        public_key=root_key.public_key(), issuer_key=root_key, issuer=None,
        now=now - timedelta(days=1),
    )
    issuing = pki.issue_certificate(
        profile=pki.ca_profile(f"{name} Issuing CA", lifetime=issuing_lifetime, path_length=0),
        public_key=issuing_key.public_key(), issuer_key=root_key, issuer=root,
        now=now - timedelta(days=1),
    )
    return TestCA(root, root_key, issuing, issuing_key)
