"""The CA on disk over time: rotating and retiring issuing CAs, and the root key kept offline."""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fleet import pki
from fleet.ca import (
    CA,
    IssuingState,
    Paths,
    crl_path,
    export_root_key,
    issuing_cas,
    load_ca,
    load_root_key,
    load_trust,
    retire_issuing,
    retiring_issuing,
    rotate_issuing,
)
from fleet.errors import CAError
from fleet.settings import Settings

NOW = datetime.now(UTC).replace(microsecond=0)


def tree(settings: Settings) -> dict[str, str]:
    """Every file of the data dir and its SHA-256: what a refusal must leave as it was."""
    root = settings.data_dir
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def rotate(settings: Settings, *, now: datetime = NOW) -> CA:
    return rotate_issuing(settings, root_key=load_root_key(settings), now=now)


def names(certs: tuple[x509.Certificate, ...] | list[x509.Certificate]) -> list[str]:
    return [c.subject.rfc4514_string() for c in certs]


def test_a_data_dir_never_rotated_has_one_issuing_ca(settings: Settings) -> None:
    trust = load_trust(settings)
    assert (trust.number, trust.retiring) == (1, ())
    assert names(trust.chain) == ["CN=Fleet Issuing CA,O=Fleet", "CN=Fleet Root CA,O=Fleet"]
    [only] = issuing_cas(settings)
    assert (only.number, only.state, only.crl_path) == (1, IssuingState.ACTIVE, "/crl")


def test_rotation_makes_a_new_active_issuing_ca_under_the_same_root(settings: Settings) -> None:
    before = load_ca(settings)
    rotated = rotate(settings)
    paths = Paths.of(settings)
    assert rotated.number == 2
    assert rotated.issuing.subject.rfc4514_string() == "CN=Fleet Issuing CA 2,O=Fleet"
    rotated.issuing.verify_directly_issued_by(before.root)
    assert rotated.root == before.root
    assert rotated.issuing.public_key() != before.issuing.public_key()
    # The one it replaced keeps its key and certificate as issuing CA 1, in its overlap.
    old_cert, old_key = paths.numbered(1)
    assert x509.load_pem_x509_certificate(old_cert.read_bytes()) == before.issuing
    assert b"ENCRYPTED" in old_key.read_bytes()
    assert old_cert.stat().st_mode & 0o777 == 0o600
    assert old_key.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED" in paths.issuing_key.read_bytes()
    assert [(r.number, r.state) for r in rotated.retiring] == [(1, IssuingState.RETIRING)]
    assert rotated.retiring_keys[0].public_key() == before.issuing.public_key()
    assert names(x509.load_pem_x509_certificates(paths.chain.read_bytes())) == [
        "CN=Fleet Issuing CA 2,O=Fleet", "CN=Fleet Issuing CA,O=Fleet",
        "CN=Fleet Root CA,O=Fleet"]
    # The server certificate now comes from the new issuing CA, for the same names.
    server = x509.load_pem_x509_certificates(paths.server_cert.read_bytes())
    assert server[1] == rotated.issuing
    server[0].verify_directly_issued_by(rotated.issuing)
    assert server[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName) == ["localhost"]
    assert load_trust(settings).issuers == rotated.issuers
    assert crl_path(rotated.number) == "/crl/2"


def test_a_second_rotation_keeps_both_earlier_issuing_cas_in_their_overlap(
        settings: Settings) -> None:
    rotate(settings)
    third = rotate(settings)
    assert third.number == 3
    assert [r.number for r in third.retiring] == [2, 1]
    assert [i.number for i in issuing_cas(settings)] == [3, 2, 1]


def test_rotation_refused_with_a_key_that_is_not_the_roots(settings: Settings) -> None:
    before = tree(settings)
    with pytest.raises(CAError, match="not the key of the root CA"):
        rotate_issuing(settings, root_key=pki.generate_private_key(), now=NOW)
    assert tree(settings) == before


def test_an_overlap_certificate_not_issued_by_the_root_is_refused(settings: Settings,
                                                                  tmp_path: Path) -> None:
    rotate(settings)
    foreign_key = pki.generate_private_key()
    foreign = pki.issue_certificate(
        profile=pki.ca_profile("Fleet Issuing CA", lifetime=timedelta(days=30), path_length=0),
        public_key=foreign_key.public_key(), issuer_key=foreign_key, issuer=None, now=NOW)
    Paths.of(settings).numbered(1)[0].write_text(pki.certificate_pem(foreign))
    with pytest.raises(CAError, match="is not an issuing CA of the root"):
        load_trust(settings)


def test_a_rotation_stopped_before_its_new_ca_was_in_place_loads_as_before(
        settings: Settings) -> None:
    """The first step of a rotation copies the active CA to issuing-1: until the new one
    replaces it, the data dir is the one it was."""
    paths = Paths.of(settings)
    cert, key = paths.numbered(1)
    shutil.copy(paths.issuing, cert)
    shutil.copy(paths.issuing_key, key)
    trust = load_trust(settings)
    assert (trust.number, trust.retiring) == (1, ())
    assert rotate(settings).number == 2


def test_retirement_stops_trusting_the_ca_and_removes_its_key(settings: Settings) -> None:
    before = load_ca(settings)
    rotate(settings)
    paths = Paths.of(settings)
    retired = retire_issuing(settings, 1)
    assert (retired.number, retired.state) == (1, IssuingState.RETIRED)
    assert not paths.numbered(1)[0].exists()
    assert not paths.numbered(1)[1].exists()
    assert x509.load_pem_x509_certificate(paths.retired(1).read_bytes()) == before.issuing
    assert paths.retired_dir.stat().st_mode & 0o777 == 0o700
    assert paths.retired(1).stat().st_mode & 0o777 == 0o600
    trust = load_trust(settings)
    assert (trust.number, trust.retiring) == (2, ())
    assert names(x509.load_pem_x509_certificates(paths.chain.read_bytes())) == [
        "CN=Fleet Issuing CA 2,O=Fleet", "CN=Fleet Root CA,O=Fleet"]
    assert [(i.number, i.state) for i in issuing_cas(settings)] == [
        (2, IssuingState.ACTIVE), (1, IssuingState.RETIRED)]
    # Numbers are never reused: the next rotation makes issuing CA 3.
    assert rotate(settings).number == 3


@pytest.mark.parametrize(("rotations", "number", "says"), [
    pytest.param(1, 2, "is the active one: rotate first", id="active"),
    pytest.param(1, 7, "issuing CA 7 is not known", id="unknown"),
    pytest.param(0, None, "no issuing CA is in its overlap", id="nothing-to-retire"),
    pytest.param(2, None, "issuing CAs 2, 1 are in their overlap: name the one", id="ambiguous"),
])
def test_retirement_refused(settings: Settings, rotations: int, number: int | None,
                            says: str) -> None:
    for _ in range(rotations):
        rotate(settings)
    before = tree(settings)
    with pytest.raises(CAError, match=says):
        retire_issuing(settings, number) if number else retiring_issuing(settings, number)
    assert tree(settings) == before


def test_retiring_a_retired_ca_again_is_refused(settings: Settings) -> None:
    rotate(settings)
    retire_issuing(settings, 1)
    with pytest.raises(CAError, match="issuing CA 1 is already retired"):
        retire_issuing(settings, 1)


# -- the root key kept offline ------------------------------------------------------------

def test_export_with_remove_leaves_no_root_key_and_rotation_needs_the_file(
        settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "offline" / "root.key"
    out.parent.mkdir()
    export_root_key(settings, out, remove=True)
    paths = Paths.of(settings)
    assert not paths.root_key.exists()
    assert out.stat().st_mode & 0o777 == 0o600
    before = tree(settings)
    with pytest.raises(CAError, match=r"not in .* \(it is kept offline\): give it with "
                                      r"--root-key FILE"):
        load_root_key(settings)
    assert tree(settings) == before
    rotated = rotate_issuing(settings, root_key=load_root_key(settings, path=out), now=NOW)
    assert rotated.number == 2
    assert not paths.root_key.exists()


def test_export_with_its_own_passphrase(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "root.key"
    export_root_key(settings, out, remove=False, passphrase=b"another passphrase")
    assert Paths.of(settings).root_key.exists()
    with pytest.raises(CAError, match="cannot unlock the root CA key"):
        load_root_key(settings, path=out)  # the CA passphrase does not open it
    key = load_root_key(settings, path=out, passphrase=b"another passphrase")
    assert key.public_key() == load_trust(settings).root.public_key()


@pytest.mark.parametrize(("target", "says"), [
    pytest.param("data/ca/root-copy.key", "is inside the data dir", id="inside-data-dir"),
    pytest.param("missing/root.key", "is not a directory", id="no-parent-directory"),
    pytest.param("exists.key", "exists; use --force", id="exists"),
])
def test_export_refused(settings: Settings, tmp_path: Path, target: str, says: str) -> None:
    (tmp_path / "exists.key").write_text("keep me")
    out = (settings.data_dir / target.removeprefix("data/")) if target.startswith("data/") \
        else tmp_path / target
    before = tree(settings)
    with pytest.raises(CAError, match=says):
        export_root_key(settings, out, remove=True)
    assert tree(settings) == before
    assert (tmp_path / "exists.key").read_text() == "keep me"
    assert not (tmp_path / "missing").exists()


def test_export_refused_when_the_root_key_is_already_offline(settings: Settings,
                                                             tmp_path: Path) -> None:
    export_root_key(settings, tmp_path / "root.key", remove=True)
    with pytest.raises(CAError, match="already kept offline"):
        export_root_key(settings, tmp_path / "again.key", remove=True)
    assert not (tmp_path / "again.key").exists()


def test_a_root_key_file_of_another_ca_is_refused(settings: Settings, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    other.write_bytes(pki.private_key_pem(pki.generate_private_key(),
                                          b"test-passphrase-not-secret"))
    with pytest.raises(CAError, match="is not the key of the root CA"):
        load_root_key(settings, path=other)
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"not a key")
    with pytest.raises(CAError, match="cannot unlock the root CA key"):
        load_root_key(settings, path=garbage)


def test_exported_key_is_the_encrypted_pem_of_the_data_dir(settings: Settings,
                                                           tmp_path: Path) -> None:
    original = Paths.of(settings).root_key.read_bytes()
    export_root_key(settings, tmp_path / "root.key", remove=True)
    assert (tmp_path / "root.key").read_bytes() == original
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(original, password=None)
