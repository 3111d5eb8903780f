"""Under umask 022 the CLI still keeps the data dir 0700 and every file in it 0600 (the
registry's -wal and -shm included), and writes token files and service keys 0600."""

from __future__ import annotations

import sqlite3
import stat
from contextlib import closing
from pathlib import Path

import pytest

from fleet.ca import PASSPHRASE_ENV

from .helpers import Run

pytestmark = pytest.mark.usefixtures("umask_022")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def modes(root: Path) -> dict[str, int]:
    """The mode of *root* and of everything under it, by path relative to *root*."""
    return {str(path.relative_to(root)): mode(path) for path in [root, *root.rglob("*")]}


def test_init_makes_the_data_dir_0700_and_every_file_in_it_0600(
    empty_fleet: Run, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV)  # the passphrase file is generated too
    empty_fleet.ok("init")
    data = empty_fleet.data_dir
    # Another connection keeps -wal and -shm in place while the CLI writes.
    with closing(sqlite3.connect(data / "fleet.db")) as reader:
        reader.execute("SELECT count(*) FROM devices").fetchall()
        empty_fleet.ok("group", "create", "sensors")
        found = modes(data)
    assert {"ca/passphrase", "ca/root.key", "ca/issuing.key", "server/key.pem",
            "fleet.db", "fleet.db-wal", "fleet.db-shm"} <= set(found)
    directories = {name for name in found if (data / name).is_dir()}
    assert directories == {".", "ca", "server"}
    assert {name: m for name, m in found.items() if m != 0o700 and name in directories} == {}
    assert {name: m for name, m in found.items()
            if m != 0o600 and name not in directories} == {}


def test_init_tightens_a_data_dir_made_before(empty_fleet: Run) -> None:
    empty_fleet.data_dir.mkdir(mode=0o755)
    empty_fleet.ok("init")
    assert mode(empty_fleet.data_dir) == 0o700


def test_token_file_is_0600_in_a_directory_that_keeps_its_mode(fleet: Run,
                                                                tmp_path: Path) -> None:
    """The directory is the operator's (Fleet creates none on the way to an output file)."""
    out = tmp_path / "factory" / "tokens.csv"
    out.parent.mkdir()
    out.parent.chmod(0o755)
    fleet.ok("group", "create", "sensors")
    fleet.ok("token", "create", "--group", "sensors", "--count", "3", "--out", str(out))
    assert mode(out) == 0o600
    assert mode(out.parent) == 0o755


def test_token_file_replacing_a_readable_file_is_0600(fleet: Run, tmp_path: Path) -> None:
    out = tmp_path / "tokens.csv"
    fleet.ok("group", "create", "sensors")
    out.write_text("old\n")
    out.chmod(0o644)
    fleet.ok("token", "create", "--group", "sensors", "--out", str(out), "--force")
    assert mode(out) == 0o600
    assert out.read_text() != "old\n"


def test_service_key_is_0600_in_a_new_directory_0700(fleet: Run, tmp_path: Path) -> None:
    out_dir = tmp_path / "credentials"
    fleet.ok("cert", "issue-service", "telemetry-ingest", "--out-dir", str(out_dir))
    assert mode(out_dir / "telemetry-ingest.key") == 0o600
    assert mode(out_dir) == 0o700
    # What is meant for others to read follows the umask.
    assert mode(out_dir / "telemetry-ingest.pem") == mode(out_dir / "ca.pem") == 0o644
