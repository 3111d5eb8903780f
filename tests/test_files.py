"""Private files are 0600 in 0700 directories whatever the umask; public ones follow it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fleet.files import private_dir, private_file, write_private, write_public

pytestmark = pytest.mark.usefixtures("umask_022")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_private_dir_makes_every_missing_directory_0700(tmp_path: Path) -> None:
    private_dir(tmp_path / "a" / "b" / "c")
    for path in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert mode(path) == 0o700, path


def test_private_dir_leaves_an_existing_directory_unless_told_to_tighten(tmp_path: Path) -> None:
    existing = tmp_path / "given"
    existing.mkdir(mode=0o755)
    private_dir(existing)
    assert mode(existing) == 0o755  # an operator's destination is not ours to change
    private_dir(existing, tighten=True)
    assert mode(existing) == 0o700


def test_private_dir_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        private_dir(tmp_path / "file")


def test_private_file_is_created_0600_and_an_existing_one_kept(tmp_path: Path) -> None:
    created = private_file(tmp_path / "new" / "fleet.db")
    assert mode(created) == 0o600
    assert mode(created.parent) == 0o700
    created.write_bytes(b"data")
    private_file(created)
    assert created.read_bytes() == b"data"


def test_write_private_tightens_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("old")
    os.chmod(path, 0o644)
    write_private(path, b"new")
    assert mode(path) == 0o600
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]  # no temporary left


def test_write_private_makes_missing_directories_0700(tmp_path: Path) -> None:
    write_private(tmp_path / "keys" / "service.key", b"key")
    assert mode(tmp_path / "keys") == 0o700
    assert mode(tmp_path / "keys" / "service.key") == 0o600


def test_write_private_leaves_the_old_content_when_it_fails(tmp_path: Path) -> None:
    (tmp_path / "target").mkdir()
    with pytest.raises(OSError, match="directory"):
        write_private(tmp_path / "target", b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_write_public_follows_the_umask(tmp_path: Path) -> None:
    write_public(tmp_path / "crl.der", b"crl")
    assert mode(tmp_path / "crl.der") == 0o644
