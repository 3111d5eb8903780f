"""Key generation, key policy and key serialization."""

from __future__ import annotations

from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)

from fleet.errors import KeyPolicyError

KeyType = Literal["p256", "p384", "ed25519", "rsa2048", "rsa3072"]
KEY_TYPES: tuple[KeyType, ...] = ("p256", "p384", "ed25519", "rsa2048", "rsa3072")
ACCEPTED_CURVES = {"secp256r1": "EC P-256", "secp384r1": "EC P-384"}
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192

PrivateKey = CertificateIssuerPrivateKeyTypes


def generate_private_key(key_type: KeyType = "p256") -> PrivateKey:
    """Generate a fresh private key of an accepted type."""
    if key_type == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type in ("rsa2048", "rsa3072"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))
    raise KeyPolicyError(f"unknown key type {key_type!r}; choose one of {', '.join(KEY_TYPES)}")


def describe_key(key: CertificatePublicKeyTypes) -> str:
    """A short human name of a public key such as ``EC P-256`` or ``RSA 1024``."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ACCEPTED_CURVES.get(key.curve.name, f"EC {key.curve.name}")
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    return type(key).__name__.removesuffix("PublicKey").lstrip("_") or "unknown"


def check_key_policy(key: CertificatePublicKeyTypes) -> str:
    """Accept EC P-256/P-384, Ed25519 and RSA 2048-8192; return the key's name or raise."""
    name = describe_key(key)
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in ACCEPTED_CURVES:
        return name
    if isinstance(key, ed25519.Ed25519PublicKey):
        return name
    if isinstance(key, rsa.RSAPublicKey) and MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        return name
    raise KeyPolicyError(
        f"key {name} is not accepted: use EC P-256, EC P-384, Ed25519 or RSA >= {MIN_RSA_BITS}",
        key=name,
    )


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted with *passphrase* when one is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def load_private_key_pem(data: bytes, passphrase: bytes | None = None) -> PrivateKey:
    """Load a PEM private key usable for signing certificates."""
    key = serialization.load_pem_private_key(data, password=passphrase)
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    ):
        raise KeyPolicyError(f"key type {type(key).__name__} cannot sign certificates")
    return key
