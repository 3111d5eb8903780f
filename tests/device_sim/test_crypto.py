"""The device's own crypto (device_sim.crypto, on cryptography alone): what it builds and reads."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from device_sim.credentials import Credentials
from device_sim.crypto import (
    KEY_TYPES,
    PrivateKey,
    build_csr,
    certificate_pem,
    certs_only,
    client_certificate,
    device_uri,
    generate_key,
    private_key_pem,
    self_signed_ca,
)

Root = tuple[PrivateKey, x509.Certificate]
DAY = timedelta(days=1)
DIGESTS = {"p256": hashes.SHA256, "p384": hashes.SHA384, "rsa2048": hashes.SHA256,
           "rsa3072": hashes.SHA256}


@pytest.fixture(scope="module")
def root() -> Root:
    return self_signed_ca("Test Root", lifetime=DAY)


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_csr_names_only_the_common_name_and_proves_possession(key_type: str) -> None:
    key = generate_key(key_type)
    csr = x509.load_der_x509_csr(build_csr("dev-1", key))
    assert csr.is_signature_valid
    assert csr.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")])
    assert list(csr.extensions) == []
    assert csr.public_key() == key.public_key()
    digest = DIGESTS.get(key_type)
    if digest is None:  # Ed25519 signs the message itself
        assert csr.signature_hash_algorithm is None
    else:
        assert isinstance(csr.signature_hash_algorithm, digest)


def test_generate_key_refused_unknown_type() -> None:
    with pytest.raises(ValueError, match="use one of p256, p384"):
        generate_key("dsa1024")


def test_certs_only_reads_base64_broken_into_lines(root: Root) -> None:
    """RFC 8951 3: a receiver ignores CR, LF and spaces in the base64 body."""
    _, ca = root
    der = pkcs7.serialize_certificates([ca], serialization.Encoding.DER)
    text = base64.b64encode(der)
    broken = b"\r\n ".join(text[i:i + 64] for i in range(0, len(text), 64)) + b"\r\n"
    assert certs_only(broken) == [ca]


def test_certs_only_refused_body_not_base64() -> None:
    with pytest.raises(ValueError, match="not base64"):
        certs_only(b"MIIB*not-base64*")


def test_certs_only_refused_base64_of_something_else() -> None:
    with pytest.raises(ValueError, match="not a certs-only PKCS#7"):
        certs_only(base64.b64encode(b"\x30\x03\x02\x01\x01"))


def test_forged_client_certificate_is_valid_but_for_its_issuer(root: Root) -> None:
    """A foreign CA's certificate is refused for its CA alone: under its own root it is a valid
    client certificate shaped like a device's."""
    ca_key, ca = root
    uri = device_uri("fleet.local", "victim")
    _, leaf = client_certificate("victim", uri=uri, issuer_key=ca_key,
                                 issuer=ca, lifetime=DAY)
    verified = PolicyBuilder().store(Store([ca])).build_client_verifier().verify(leaf, [])
    assert verified.subjects == [x509.UniformResourceIdentifier(
        "spiffe://fleet.local/device/victim")]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "victim"
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_stored_key_is_0600_whatever_the_umask(tmp_path: Path, open_umask: None,
                                               root: Root) -> None:
    """A renewal replaces the files; the key is 0600 even over a world-readable old file."""
    ca_key, ca = root
    key, leaf = client_certificate("dev-1", uri=device_uri("fleet.local", "dev-1"),
                                   issuer_key=ca_key, issuer=ca,
                                   lifetime=DAY)
    (tmp_path / "dev-1.key").write_bytes(b"old")
    os.chmod(tmp_path / "dev-1.key", 0o644)
    Credentials.issued(key, leaf, anchors=[ca], received_at=0.0).save(tmp_path, "dev-1")

    assert stat.S_IMODE((tmp_path / "dev-1.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "dev-1.pem").stat().st_mode) == 0o644
    assert (tmp_path / "dev-1.key").read_bytes() == private_key_pem(key)
    assert (tmp_path / "dev-1.pem").read_text() == certificate_pem(leaf)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev-1.key", "dev-1.pem"]
