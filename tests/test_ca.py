"""The CA on disk: init, keys encrypted at rest, idempotence, unlock errors, import, openssl."""

from __future__ import annotations

import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleet import pki
from fleet.ca import (
    CA,
    PASSPHRASE_ENV,
    Paths,
    ensure_server_certificate,
    import_ca,
    init_ca,
    load_ca,
    root_fingerprint,
)
from fleet.errors import CAError
from fleet.files import write_private
from fleet.pki import Identity
from fleet.settings import Settings, load_settings

NOW = datetime.now(UTC).replace(microsecond=0)
PASSPHRASE = b"test-passphrase-not-secret"  # what tests/conftest.py puts in FLEET_CA_PASSPHRASE


def settings_for(data_dir: Path, **env: str) -> Settings:
    return load_settings(environ={"FLEET_DATA_DIR": str(data_dir), **env})


@pytest.fixture
def fresh(tmp_path: Path) -> Settings:
    """Settings for an empty data dir."""
    return settings_for(tmp_path / "data")


@pytest.fixture
def initialized(fresh: Settings) -> tuple[Settings, CA]:
    ca, created = init_ca(fresh, now=NOW)
    assert created
    ensure_server_certificate(fresh, ca, now=NOW)
    return fresh, ca


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def read_certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def openssl_verify(tmp_path: Path, root: Path, untrusted: Path, leaf: x509.Certificate,
                   purpose: str) -> subprocess.CompletedProcess[str]:
    leaf_path = tmp_path / f"leaf-{leaf.serial_number:x}.pem"
    leaf_path.write_text(pki.certificate_pem(leaf))
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(root), "-untrusted", str(untrusted),
         "-purpose", purpose, str(leaf_path)],
        capture_output=True, text=True, check=False)


# -- init -------------------------------------------------------------------------------------

def test_init_creates_root_and_issuing_ec_p256(initialized: tuple[Settings, CA]) -> None:
    _, ca = initialized
    for cert in (ca.root, ca.issuing):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp256r1"
    assert ca.root.issuer == ca.root.subject
    ca.root.verify_directly_issued_by(ca.root)
    ca.issuing.verify_directly_issued_by(ca.root)
    root_bc = ca.root.extensions.get_extension_for_class(x509.BasicConstraints).value
    issuing_bc = ca.issuing.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (root_bc.ca, root_bc.path_length) == (True, 1)
    assert (issuing_bc.ca, issuing_bc.path_length) == (True, 0)
    assert ca.issuing_key.public_key() == ca.issuing.public_key()
    assert ca.issuing.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Fleet"


def test_init_writes_the_documented_files(initialized: tuple[Settings, CA]) -> None:
    settings, ca = initialized
    data = settings.data_dir
    assert read_certs(data / "ca" / "root.pem") == [ca.root]
    assert read_certs(data / "ca" / "chain.pem") == [ca.issuing, ca.root]
    assert read_certs(data / "ca" / "issuing.pem") == [ca.issuing]
    server_chain = read_certs(data / "server" / "cert.pem")
    assert server_chain[1:] == [ca.issuing]
    server_key = serialization.load_pem_private_key(
        (data / "server" / "key.pem").read_bytes(), password=None)
    assert server_key.public_key() == server_chain[0].public_key()
    san = server_chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = server_chain[0].extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_private_files_are_mode_0600(initialized: tuple[Settings, CA]) -> None:
    settings, _ = initialized
    paths = Paths.of(settings)
    for path in (paths.root_key, paths.issuing_key, paths.server_key):
        assert mode(path) == 0o600, path


def test_ca_keys_are_encrypted_at_rest(initialized: tuple[Settings, CA]) -> None:
    settings, ca = initialized
    paths = Paths.of(settings)
    for path in (paths.root_key, paths.issuing_key):
        data = path.read_bytes()
        assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data
        with pytest.raises(TypeError):
            serialization.load_pem_private_key(data, password=None)
        with pytest.raises(ValueError, match="password"):
            serialization.load_pem_private_key(data, password=b"guess")
        assert serialization.load_pem_private_key(data, password=PASSPHRASE)
    root_key = serialization.load_pem_private_key(paths.root_key.read_bytes(), PASSPHRASE)
    assert root_key.public_key() == ca.root.public_key()


def test_passphrase_file_is_generated_when_no_passphrase_is_set(
    fresh: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV)
    init_ca(fresh, now=NOW)
    path = Paths.of(fresh).passphrase
    assert path == fresh.ca_dir / "passphrase"
    assert mode(path) == 0o600
    passphrase = path.read_bytes().strip()
    assert len(passphrase) >= 32
    serialization.load_pem_private_key(Paths.of(fresh).issuing_key.read_bytes(), passphrase)
    assert load_ca(fresh).issuing_key  # unlocked from the file
    monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
    with pytest.raises(CAError, match="passphrase"):
        load_ca(fresh)


def test_no_passphrase_file_is_written_when_the_variable_is_set(
    initialized: tuple[Settings, CA],
) -> None:
    settings, _ = initialized
    assert not Paths.of(settings).passphrase.exists()


def test_configured_passphrase_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV)
    secret = tmp_path / "secrets" / "ca-pass"
    settings = settings_for(tmp_path / "data", FLEET_CA_PASSPHRASE_FILE=str(secret))
    init_ca(settings, now=NOW)
    assert mode(secret) == 0o600
    assert not (settings.ca_dir / "passphrase").exists()
    assert load_ca(settings).issuing_key


def test_no_passphrase_anywhere_is_a_clear_error(
    initialized: tuple[Settings, CA], monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, _ = initialized
    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(CAError, match=f"no CA passphrase: set {PASSPHRASE_ENV}"):
        load_ca(settings)


def test_empty_passphrase_file_is_refused(
    initialized: tuple[Settings, CA], monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, _ = initialized
    monkeypatch.delenv(PASSPHRASE_ENV)
    write_private(Paths.of(settings).passphrase, b"\n")
    with pytest.raises(CAError, match="is empty"):
        load_ca(settings)


def test_init_is_idempotent(initialized: tuple[Settings, CA]) -> None:
    settings, ca = initialized
    paths = Paths.of(settings)
    files = (paths.root, paths.root_key, paths.issuing, paths.issuing_key, paths.chain,
             paths.server_cert, paths.server_key)
    before = {path: path.read_bytes() for path in files}
    again, created = init_ca(settings, now=NOW + timedelta(days=1))
    assert not created
    assert root_fingerprint(again) == root_fingerprint(ca)
    assert pki.fingerprint_sha256(again.issuing) == pki.fingerprint_sha256(ca.issuing)
    assert not ensure_server_certificate(settings, again, now=NOW + timedelta(days=1))
    assert {path: path.read_bytes() for path in files} == before


def test_server_certificate_is_reissued_for_new_hostnames(
    initialized: tuple[Settings, CA],
) -> None:
    settings, ca = initialized
    assert ensure_server_certificate(settings, ca, now=NOW, hostnames=["broker.example", "::1"])
    cert = read_certs(Paths.of(settings).server_cert)[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example"]
    assert not ensure_server_certificate(settings, ca, now=NOW, hostnames=["broker.example"])


def test_server_certificate_is_renewed_near_expiry(initialized: tuple[Settings, CA]) -> None:
    settings, ca = initialized
    later = NOW + settings.server_lifetime - timedelta(hours=12)
    assert ensure_server_certificate(settings, ca, now=later)


# -- unlock errors ----------------------------------------------------------------------------

def test_wrong_passphrase_is_a_clear_ca_error(
    initialized: tuple[Settings, CA], monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, _ = initialized
    monkeypatch.setenv(PASSPHRASE_ENV, "not-the-passphrase")
    with pytest.raises(CAError, match="wrong passphrase") as info:
        load_ca(settings)
    assert "not-the-passphrase" not in str(info.value)


@pytest.mark.parametrize("damage", [
    pytest.param(lambda p: p.write_bytes(b"garbage"), id="garbage"),
    pytest.param(lambda p: p.write_bytes(p.read_bytes()[:120]), id="truncated"),
    pytest.param(lambda p: p.write_bytes(b""), id="empty"),
    pytest.param(lambda p: (p.unlink(), p.mkdir()), id="a-directory"),
])
def test_unreadable_or_corrupt_issuing_key_is_a_ca_error(
    initialized: tuple[Settings, CA], damage: object,
) -> None:
    settings, _ = initialized
    damage(Paths.of(settings).issuing_key)  # type: ignore[operator]
    with pytest.raises(CAError, match=r"issuing\.key"):
        load_ca(settings)


@pytest.mark.parametrize("damage", [
    pytest.param(lambda p: p.write_bytes(b"garbage"), id="garbage"),
    pytest.param(lambda p: (p.unlink(), p.mkdir()), id="a-directory"),
])
def test_corrupt_issuing_certificate_is_a_ca_error(
    initialized: tuple[Settings, CA], damage: object,
) -> None:
    settings, _ = initialized
    damage(Paths.of(settings).issuing)  # type: ignore[operator]
    with pytest.raises(CAError, match=r"issuing\.pem"):
        load_ca(settings)


def test_corrupt_root_certificate_is_a_ca_error(initialized: tuple[Settings, CA]) -> None:
    settings, _ = initialized
    Paths.of(settings).root.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n")
    with pytest.raises(CAError, match=r"root\.pem"):
        load_ca(settings)


def test_missing_ca_is_a_ca_error(fresh: Settings) -> None:
    with pytest.raises(CAError, match="fleet init"):
        load_ca(fresh)


def test_key_of_another_ca_is_refused(initialized: tuple[Settings, CA]) -> None:
    settings, _ = initialized
    other = pki.private_key_pem(pki.generate_private_key(), PASSPHRASE)
    Paths.of(settings).issuing_key.write_bytes(other)
    with pytest.raises(CAError, match="does not belong"):
        load_ca(settings)


# -- import of an enterprise CA ---------------------------------------------------------------

ENTERPRISE_PASSPHRASE = b"enterprise-secret"


def build_cert(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey,
               signer: ec.EllipticCurvePrivateKey, *, ca: bool,
               key_cert_sign: bool = True) -> x509.Certificate:
    """A certificate made with cryptography alone, as an enterprise PKI would hand it over."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
                                x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=not ca, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca and key_cert_sign,
            crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                       critical=False)
    )
    return builder.sign(signer, hashes.SHA384())


class Enterprise:
    """An existing enterprise PKI: a P-384 root and an intermediate the fleet will adopt."""

    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.root = build_cert("Acme Root", "Acme Root", self.root_key, self.root_key, ca=True)
        self.key = ec.generate_private_key(ec.SECP384R1())
        self.intermediate = build_cert("Acme Devices CA", "Acme Root", self.key, self.root_key,
                                       ca=True)

    def key_pem(self, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        return (key or self.key).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(ENTERPRISE_PASSPHRASE))

    def chain_pem(self, *certs: x509.Certificate) -> bytes:
        return "".join(pki.certificate_pem(c) for c in (certs or (self.intermediate, self.root))
                       ).encode()


@pytest.fixture(scope="module")
def enterprise() -> Enterprise:
    return Enterprise()


def test_import_adopts_an_enterprise_issuing_ca(
    fresh: Settings, enterprise: Enterprise, tmp_path: Path,
) -> None:
    ca = import_ca(fresh, cert_pem=enterprise.chain_pem(), key_pem=enterprise.key_pem(),
                   key_passphrase=ENTERPRISE_PASSPHRASE)
    assert (ca.issuing, ca.root) == (enterprise.intermediate, enterprise.root)
    paths = Paths.of(fresh)
    assert read_certs(paths.chain) == [enterprise.intermediate, enterprise.root]
    assert read_certs(paths.root) == [enterprise.root]
    assert not paths.root_key.exists()  # the enterprise root key never comes here
    stored = paths.issuing_key.read_bytes()
    assert b"ENCRYPTED" in stored
    assert mode(paths.issuing_key) == 0o600
    # Re-encrypted under the fleet passphrase, not the enterprise one.
    serialization.load_pem_private_key(stored, PASSPHRASE)
    loaded = load_ca(fresh)
    assert loaded.issuing == enterprise.intermediate
    ensure_server_certificate(fresh, loaded, now=NOW)
    device = pki.issue_certificate(
        profile=pki.identity_profile(Identity("device", "dev-1"), trust_domain="fleet.local",
                                     lifetime=timedelta(days=1)),
        public_key=pki.generate_private_key().public_key(), issuer_key=loaded.issuing_key,
        issuer=loaded.issuing, now=NOW)
    assert device.not_valid_after_utc == NOW + timedelta(days=1)
    for leaf, purpose in ((device, "sslclient"),
                          (read_certs(paths.server_cert)[0], "sslserver")):
        result = openssl_verify(tmp_path, paths.root, paths.chain, leaf, purpose)
        assert result.returncode == 0, result.stdout + result.stderr


def test_import_accepts_an_unencrypted_key(fresh: Settings, enterprise: Enterprise) -> None:
    plain = enterprise.key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
    import_ca(fresh, cert_pem=enterprise.chain_pem(), key_pem=plain, key_passphrase=None)
    assert b"ENCRYPTED" in Paths.of(fresh).issuing_key.read_bytes()


def refused_import(settings: Settings, message: str, *, cert_pem: bytes, key_pem: bytes,
                   key_passphrase: bytes | None = ENTERPRISE_PASSPHRASE) -> None:
    before = sorted(p.relative_to(settings.data_dir) for p in settings.data_dir.rglob("*")) \
        if settings.data_dir.exists() else []
    with pytest.raises(CAError, match=message):
        import_ca(settings, cert_pem=cert_pem, key_pem=key_pem, key_passphrase=key_passphrase)
    after = sorted(p.relative_to(settings.data_dir) for p in settings.data_dir.rglob("*")) \
        if settings.data_dir.exists() else []
    assert after == before


def test_import_refuses_a_non_ca_certificate(fresh: Settings, enterprise: Enterprise) -> None:
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = build_cert("device", "Acme Devices CA", leaf_key, enterprise.key, ca=False)
    refused_import(fresh, "not a CA", cert_pem=enterprise.chain_pem(leaf, enterprise.root),
                   key_pem=enterprise.key_pem(leaf_key))


def test_import_refuses_a_ca_without_key_cert_sign(fresh: Settings,
                                                   enterprise: Enterprise) -> None:
    weak = build_cert("Acme Devices CA", "Acme Root", enterprise.key, enterprise.root_key,
                      ca=True, key_cert_sign=False)
    refused_import(fresh, "keyCertSign", cert_pem=enterprise.chain_pem(weak, enterprise.root),
                   key_pem=enterprise.key_pem())


def test_import_refuses_a_key_that_does_not_match(fresh: Settings,
                                                  enterprise: Enterprise) -> None:
    refused_import(fresh, "key does not belong", cert_pem=enterprise.chain_pem(),
                   key_pem=enterprise.key_pem(ec.generate_private_key(ec.SECP384R1())))


def test_import_refuses_a_wrong_key_passphrase(fresh: Settings, enterprise: Enterprise) -> None:
    refused_import(fresh, "wrong passphrase", cert_pem=enterprise.chain_pem(),
                   key_pem=enterprise.key_pem(), key_passphrase=b"nope")


def test_import_refuses_a_chain_without_its_root(fresh: Settings,
                                                 enterprise: Enterprise) -> None:
    refused_import(fresh, "self-signed root", cert_pem=enterprise.chain_pem(
        enterprise.intermediate), key_pem=enterprise.key_pem())


def test_import_refuses_a_chain_that_does_not_link(fresh: Settings,
                                                   enterprise: Enterprise) -> None:
    stranger = Enterprise()  # same names, other keys: the intermediate is not signed by it
    refused_import(fresh, "not issued by", cert_pem=enterprise.chain_pem(
        enterprise.intermediate, stranger.root), key_pem=enterprise.key_pem())


def test_import_refuses_garbage(fresh: Settings, enterprise: Enterprise) -> None:
    refused_import(fresh, "cannot read the CA certificate", cert_pem=b"garbage",
                   key_pem=enterprise.key_pem())
    refused_import(fresh, "cannot read the CA key", cert_pem=enterprise.chain_pem(),
                   key_pem=b"garbage")


def test_import_refuses_to_replace_an_existing_ca(
    initialized: tuple[Settings, CA], enterprise: Enterprise,
) -> None:
    settings, ca = initialized
    refused_import(settings, "already exists", cert_pem=enterprise.chain_pem(),
                   key_pem=enterprise.key_pem())
    assert load_ca(settings).issuing == ca.issuing


# -- openssl agrees ---------------------------------------------------------------------------

def test_openssl_verifies_server_and_service_certificates(
    initialized: tuple[Settings, CA], tmp_path: Path,
) -> None:
    settings, ca = initialized
    paths = Paths.of(settings)
    server = read_certs(paths.server_cert)[0]
    service = pki.issue_certificate(
        profile=pki.identity_profile(Identity("service", "telemetry"),
                                     trust_domain=settings.trust_domain,
                                     lifetime=settings.service_lifetime),
        public_key=pki.generate_private_key().public_key(), issuer_key=ca.issuing_key,
        issuer=ca.issuing, now=datetime.now(UTC))
    for leaf, purpose in ((server, "sslserver"), (service, "sslclient")):
        result = openssl_verify(tmp_path, paths.root, paths.chain, leaf, purpose)
        assert result.returncode == 0, result.stdout + result.stderr
        assert ": OK" in result.stdout
    # And the negative control: a client certificate is not a server certificate.
    wrong = openssl_verify(tmp_path, paths.root, paths.chain, service, "sslserver")
    assert wrong.returncode != 0


def test_openssl_refuses_a_certificate_of_another_fleet(
    initialized: tuple[Settings, CA], tmp_path: Path,
) -> None:
    settings, _ = initialized
    other_settings = settings_for(tmp_path / "other")
    other, _ = init_ca(other_settings, now=NOW)
    foreign = pki.issue_certificate(
        profile=pki.identity_profile(Identity("device", "dev-1"), trust_domain="fleet.local",
                                     lifetime=timedelta(days=1)),
        public_key=pki.generate_private_key().public_key(), issuer_key=other.issuing_key,
        issuer=other.issuing, now=datetime.now(UTC))
    paths = Paths.of(settings)
    assert openssl_verify(tmp_path, paths.root, paths.chain, foreign, "sslclient").returncode != 0
