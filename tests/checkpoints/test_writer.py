"""Writing checkpoints: skipped while the head stands still, the key made 0600 on first use
and never shown, and concurrent writer processes on one registry and one file."""

from __future__ import annotations

import itertools
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session

from fleet.authority import Authority
from fleet.checkpoints import CheckpointWriter, journal_path, key_path, load_key, verify
from fleet.checkpoints.key import KEY_BYTES
from fleet.errors import CAError
from fleet.registry import checkpoints as checkpoints_db
from fleet.registry import events as events_db

PROJECT = Path(__file__).resolve().parents[2]

def writer_of(authority: Authority, role: str = "test") -> CheckpointWriter:
    return CheckpointWriter(settings=authority.settings, engine=authority.engine, role=role)


GROUP_NAMES = itertools.count()


def mint(authority: Authority, count: int = 1) -> None:
    """*count* audit events (one group declared each)."""
    for index in range(count):
        authority.create_group(name=f"group-{next(GROUP_NAMES)}", actor=f"test-{index}")


def test_no_checkpoint_of_an_empty_log(authority: Authority) -> None:
    assert writer_of(authority).write() is None
    with Session(authority.engine) as session:
        assert checkpoints_db.list_checkpoints(session=session) == []


def test_checkpoint_skipped_while_the_head_has_not_moved(authority: Authority) -> None:
    mint(authority, 3)
    writer, other = writer_of(authority), writer_of(authority, "other")
    first = writer.write()
    assert first is not None
    assert (first.seq, first.writer) == (1, writer.name)
    with Session(authority.engine) as session:
        assert (first.event_id, first.head) == events_db.audit_head(session=session)
    assert writer.write() is None
    assert other.write() is None  # whoever wrote the last one
    mint(authority)
    second = writer.write()
    assert second is not None
    assert (second.seq, second.event_id) == (2, first.event_id + 1)
    with Session(authority.engine) as session:
        rows = checkpoints_db.list_checkpoints(session=session)
    assert [(r.writer, r.seq, r.event_id) for r in rows] == [
        (writer.name, 1, first.event_id), (writer.name, 2, second.event_id)]
    lines = journal_path(authority.settings).read_text().splitlines()
    assert [json.loads(line)["mac"] for line in lines[1:]] == [first.mac, second.mac]


@pytest.mark.usefixtures("umask_022")
def test_key_and_file_made_0600_on_first_use(sqlite_authority: Authority) -> None:
    """A data dir made before checkpoints existed, without the key."""
    settings = sqlite_authority.settings
    key_path(settings).unlink()
    mint(sqlite_authority)
    assert writer_of(sqlite_authority).write() is not None
    assert key_path(settings) == settings.ca_dir / "audit.key"
    for path in (key_path(settings), journal_path(settings)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    key = load_key(settings)
    assert key is not None
    assert len(key) == KEY_BYTES
    assert sorted(p.name for p in settings.ca_dir.iterdir() if p.name.startswith(".")) == []


@pytest.mark.usefixtures("umask_022")
def test_key_file_setting_puts_the_key_elsewhere(tmp_path: Path,
                                                sqlite_authority: Authority) -> None:
    elsewhere = tmp_path / "secrets" / "audit" / "fleet-audit.key"
    settings = sqlite_authority.settings.with_overrides(audit_checkpoint_key_file=elsewhere)
    mint(sqlite_authority)
    writer = CheckpointWriter(settings=settings, engine=sqlite_authority.engine, role="test")
    assert writer.write() is not None
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o600
    for directory in (elsewhere.parent, elsewhere.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert load_key(settings) != load_key(sqlite_authority.settings)  # not the one in ca/
    with Session(sqlite_authority.engine) as session:
        assert verify(settings=settings, session=session).ok
        assert not verify(settings=sqlite_authority.settings, session=session).ok


def test_malformed_key_refused_without_quoting_it(sqlite_authority: Authority) -> None:
    settings = sqlite_authority.settings
    key_path(settings).write_text("0123456789abcdef-not-a-key-at-all\n")
    mint(sqlite_authority)
    with pytest.raises(CAError) as refused:
        writer_of(sqlite_authority).write()
    assert str(refused.value) == (f"the audit checkpoint key {key_path(settings)} is not "
                                  "64 hex digits")


def test_key_never_logged_or_stored(authority: Authority, caplog: pytest.LogCaptureFixture,
                                    ) -> None:
    caplog.set_level(logging.DEBUG)
    mint(authority, 2)
    writer = writer_of(authority)
    assert writer.write() is not None
    key = load_key(authority.settings)
    assert key is not None
    assert "audit checkpoint" in caplog.text
    stored = journal_path(authority.settings).read_text()
    with Session(authority.engine) as session:
        stored += repr(checkpoints_db.list_checkpoints(session=session))
        stored += repr(events_db.list_audit(session=session))
    for spelling in (key.hex(), key.hex().upper(), repr(key)):
        assert spelling not in caplog.text
        assert spelling not in stored


WRITER_PROCESS = """
import sys
from fleet.authority import Authority
from fleet.checkpoints import CheckpointWriter
from fleet.registry import make_engine
from fleet.settings import load_settings

settings = load_settings(environ={"FLEET_DATA_DIR": sys.argv[1], "FLEET_DATABASE_URL": sys.argv[2]})
engine = make_engine(settings.effective_database_url, pool_size=1)
authority = Authority(settings=settings, engine=engine)
writer = CheckpointWriter(settings=settings, engine=engine, role=f"process-{sys.argv[3]}")
for index in range(int(sys.argv[4])):
    authority.create_group(name=f"writer-{sys.argv[3]}-{index}", actor=f"writer-{sys.argv[3]}")
    writer.write()
engine.dispose()
"""


def test_concurrent_writer_processes_lose_and_interleave_nothing(
        authority: Authority, database_url: str) -> None:
    processes, rounds = 4, 15
    mint(authority)
    assert writer_of(authority).write() is not None  # the file exists: creation is tested above
    children = [subprocess.Popen([sys.executable, "-c", WRITER_PROCESS,
                                  str(authority.settings.data_dir), database_url, str(n),
                                  str(rounds)], env={**os.environ, "PYTHONPATH": str(PROJECT)})
                for n in range(processes)]
    assert [child.wait(120) for child in children] == [0] * processes
    lines = journal_path(authority.settings).read_text().splitlines()
    written = [json.loads(line) for line in lines[1:]]  # every line is whole JSON
    with Session(authority.engine) as session:
        rows = checkpoints_db.list_checkpoints(session=session)
        report = verify(settings=authority.settings, session=session)
    assert sorted((r.writer, r.seq) for r in rows) == sorted(
        (w["writer"], w["seq"]) for w in written)
    by_writer: dict[str, list[tuple[int, int]]] = {}
    for line in written:
        by_writer.setdefault(line["writer"], []).append((line["seq"], line["event_id"]))
    assert len(by_writer) == processes + 1
    for seqs in by_writer.values():
        assert [s for s, _ in seqs] == list(range(1, len(seqs) + 1))  # appended in order
        positions = [p for _, p in seqs]
        assert positions == sorted(positions)  # never backwards per writer
    assert report.findings == []
    assert report.anchored_to == report.last_event == processes * rounds + 1
