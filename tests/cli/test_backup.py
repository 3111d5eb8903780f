"""`fleet backup` and `fleet restore`: what a restored Fleet can do, and every archive a restore
refuses without writing anything."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import signal
import subprocess
import tarfile
from pathlib import Path

import pytest
from pki.x509_factory import device_csr, new_key

from fleet import pki
from fleet.authority import Authority, TokenCredential
from fleet.cli.app import EXIT_REFUSED

from .helpers import Enroll, Run, read_until, service_env, start


def entries(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


@pytest.fixture
def archive(fleet: Run, enroll: Enroll, tmp_path: Path) -> Path:
    enroll("dev-1")
    out = tmp_path / "fleet.backup"
    fleet.ok("backup", "--out", str(out))
    return out


def test_backup_writes_a_private_archive_with_a_manifest(archive: Path, fleet: Run) -> None:
    assert archive.stat().st_mode & 0o777 == 0o600
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())  # type: ignore[union-attr]
    assert manifest["format"] == "fleet-backup/1"
    assert manifest["database"] == "sqlite"
    assert {"data/fleet.db", "data/ca/issuing.key", "data/ca/root.pem", "data/server/key.pem",
            "config/fleet.toml", "config/acl.toml"} <= names
    assert not names & {"data/fleet.db-wal", "data/fleet.db-shm"}
    assert set(manifest["files"]) == names - {"MANIFEST.json"}


def test_backup_refused_over_an_existing_file_without_force(archive: Path, fleet: Run) -> None:
    before = archive.read_bytes()
    result = fleet("backup", "--out", str(archive))
    assert result.exit_code == EXIT_REFUSED
    assert "exists; use --force" in result.stderr
    assert archive.read_bytes() == before
    fleet.ok("backup", "--out", str(archive), "--force")


def test_backup_refused_into_a_missing_directory(fleet: Run, enroll: Enroll,
                                                 tmp_path: Path) -> None:
    enroll("dev-1")
    result = fleet("backup", "--out", str(tmp_path / "nowhere" / "x.backup"))
    assert result.exit_code == EXIT_REFUSED
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("rotated", [False, True], ids=["one-issuing-ca", "rotated-ca"])
def test_restore_then_a_device_enrolled_before_the_backup_renews_over_est(
        fleet: Run, sqlite_authority: Authority, tmp_path: Path,
        started: list[subprocess.Popen[str]], rotated: bool) -> None:
    """Rotated: the device's certificate is of issuing CA 1, in its overlap when the backup
    is made; the restored Fleet still trusts it and renews it from issuing CA 2."""
    key = new_key()
    sqlite_authority.create_group(name="sensors", actor="operator")
    token = sqlite_authority.create_tokens(group="sensors", actor="factory")[0]
    issued = sqlite_authority.enroll(credential=TokenCredential(str(token.token)),
                                     csr=device_csr("dev-1", key), actor="factory")
    (tmp_path / "dev.pem").write_text(pki.certificate_pem(issued.certificate))
    (tmp_path / "dev.key").write_bytes(pki.private_key_pem(key))
    if rotated:
        fleet.ok("ca", "rotate-issuing")
    fleet.ok("backup", "--out", str(tmp_path / "fleet.backup"))

    restored = tmp_path / "restored"
    Run(restored, fleet.runner).ok("restore", str(tmp_path / "fleet.backup"))
    assert restored.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in restored.rglob("*") if p.is_file())
    config = restored / "config" / "fleet.toml"
    again = Run(restored, fleet.runner)
    assert again.json("--config", str(config), "device", "show", "dev-1")["status"] == "active"
    again.ok("--config", str(config), "audit", "verify")

    process = start(started, ["--config", str(config), "serve", "est", "--port", "0"],
                    service_env(restored))
    [line] = read_until(process, r"EST listening on https://")
    port = re.search(r":(\d+)/", line).group(1)  # type: ignore[union-attr]
    (tmp_path / "new.key").write_bytes(pki.private_key_pem(new_key()))
    csr = subprocess.run(["openssl", "req", "-new", "-key", str(tmp_path / "new.key"),
                          "-subj", "/CN=dev-1", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    response = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail-with-body", "--cacert",
         str(restored / "ca" / "chain.pem"), "--cert", str(tmp_path / "dev.pem"), "--key",
         str(tmp_path / "dev.key"), "-H", "Content-Type: application/pkcs10", "--data-binary",
         "@-", f"https://127.0.0.1:{port}/.well-known/est/simplereenroll"],
        input=base64.encodebytes(csr), capture_output=True, timeout=30)
    assert response.returncode == 0, response.stdout + response.stderr
    (renewed,) = pki.load_certs_only(base64.b64decode(response.stdout))
    assert pki.identity_from_certificate(renewed, "fleet.local") == pki.Identity("device",
                                                                                 "dev-1")
    assert renewed.issuer.rfc4514_string() == ("CN=Fleet Issuing CA 2,O=Fleet" if rotated
                                               else "CN=Fleet Issuing CA,O=Fleet")
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0
    certificates = again.json("--config", str(config), "cert", "list", "--device", "dev-1")
    assert len(certificates) == 2
    # The original Fleet knows nothing of the renewal made against the restored one.
    assert len(fleet.json("cert", "list", "--device", "dev-1")) == 1


def test_restore_refused_into_a_data_dir_that_is_not_empty(archive: Path, fleet: Run,
                                                          tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    result = Run(target, fleet.runner)("restore", str(archive))
    assert result.exit_code == EXIT_REFUSED
    assert "is not empty" in result.stderr
    assert entries(target) == {"keep.txt"}


def rewrite(archive: Path, out: Path, change: dict[str, bytes | None],
            extra: dict[str, bytes] | None = None) -> Path:
    """A copy of *archive* with members replaced (bytes), removed (None) or added."""
    with tarfile.open(archive) as source, tarfile.open(out, "w:gz") as target:
        for member in source.getmembers():
            content = source.extractfile(member).read()  # type: ignore[union-attr]
            if member.name in change:
                replaced = change[member.name]
                if replaced is None:
                    continue
                content = replaced
            member.size = len(content)
            target.addfile(member, io.BytesIO(content))
        for name, content in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            target.addfile(info, io.BytesIO(content))
    return out


@pytest.mark.parametrize(("case", "message"), [
    ("altered member", "does not match the manifest"),
    ("missing member", "missing data/ca/issuing.key"),
    ("member outside data and config", "refusing member '../evil'"),
    ("unlisted member", "does not match the manifest"),
    ("not an archive", "is not a Fleet backup"),
    ("no manifest", "no readable MANIFEST.json"),
])
def test_restore_refused_damaged_archive_writes_nothing(archive: Path, fleet: Run,
                                                        tmp_path: Path, case: str,
                                                        message: str) -> None:
    bad = tmp_path / "bad.backup"
    if case == "altered member":
        rewrite(archive, bad, {"data/ca/chain.pem": b"tampered"})
    elif case == "missing member":
        rewrite(archive, bad, {"data/ca/issuing.key": None})
    elif case == "member outside data and config":
        rewrite(archive, bad, {}, extra={"../evil": b"x"})
    elif case == "unlisted member":
        rewrite(archive, bad, {}, extra={"data/ca/extra.pem": b"x"})
    elif case == "not an archive":
        bad.write_bytes(b"hello")
    else:
        rewrite(archive, bad, {"MANIFEST.json": None})
    target = tmp_path / "target"
    result = Run(target, fleet.runner)("restore", str(bad))
    assert result.exit_code == EXIT_REFUSED, result.stdout
    assert message in result.stderr
    assert not target.exists()
    assert not (tmp_path / "evil").exists()


def test_restore_refused_corrupt_registry_removes_what_it_wrote(archive: Path, fleet: Run,
                                                               tmp_path: Path) -> None:
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())  # type: ignore[union-attr]
    junk = b"SQLite format 3\x00" + b"\x00" * 4096
    manifest["files"]["data/fleet.db"] = hashlib.sha256(junk).hexdigest()
    bad = rewrite(archive, tmp_path / "bad.backup", {
        "data/fleet.db": junk, "MANIFEST.json": json.dumps(manifest).encode()})
    target = tmp_path / "target"
    result = Run(target, fleet.runner)("restore", str(bad))
    assert result.exit_code == EXIT_REFUSED
    assert "registry" in result.stderr
    assert not target.exists()


@pytest.mark.postgres
def test_backup_of_a_postgresql_fleet_holds_the_ca_and_names_pg_dump(
        fleet: Run, tmp_path: Path, database_url: str) -> None:
    env = {"FLEET_DATABASE_URL": database_url}
    fleet.ok("init", env=env)  # the PostgreSQL schema
    fleet.ok("group", "create", "sensors", env=env)
    fleet.ok("token", "create", "--group", "sensors", env=env)
    result = fleet.ok("backup", "--out", str(tmp_path / "fleet.backup"), env=env)
    with tarfile.open(tmp_path / "fleet.backup") as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())  # type: ignore[union-attr]
    assert manifest["database"] == ("sqlite" if database_url.startswith("sqlite") else
                                    "postgresql")
    assert "data/ca/issuing.key" in names
    if manifest["database"] == "postgresql":
        assert "data/fleet.db" not in names
        assert "pg_dump" in result.stderr
