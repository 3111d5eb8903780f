"""``fleet audit verify`` against the keyed checkpoints: one test per way of tampering.

Each test writes a real audit log on SQLite and on PostgreSQL, checkpoints it as the services
do, tampers with the registry or the data dir directly and expects the one finding that names
what was done and where.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import col, select
from typer.testing import CliRunner, Result

from fleet.authority import Authority
from fleet.checkpoints import Checkpoint, CheckpointWriter, journal_path, key_path
from fleet.errors import ConflictError
from fleet.registry import AuditEvent
from fleet.registry.engine import write_session
from fleet.registry.events import AUDIT_GENESIS, audit_digest

from .helpers import Run


@dataclass
class Log:
    """An audit log on the test's database, a checkpoint writer and the CLI on both."""

    authority: Authority
    writer: CheckpointWriter
    fleet: Run
    database_url: str
    names: Iterator[int] = field(default_factory=itertools.count)

    def append(self, count: int) -> None:
        """*count* audit events (one group declared each)."""
        for index in range(count):
            self.authority.create_group(name=f"group-{next(self.names)}", actor=f"test-{index}")

    def checkpoint(self) -> Checkpoint:
        checkpoint = self.writer.write()
        assert checkpoint is not None
        return checkpoint

    def history(self) -> tuple[Checkpoint, Checkpoint]:
        """Ten events and a checkpoint, ten more and another."""
        self.append(10)
        first = self.checkpoint()
        self.append(10)
        return first, self.checkpoint()

    def verify(self, *args: str) -> Result:
        return self.fleet("audit", "verify", *args, env={"FLEET_DATABASE_URL": self.database_url})

    def report(self, *args: str) -> dict[str, Any]:
        result = self.verify("--json", *args)
        report: dict[str, Any] = json.loads(result.stdout)
        assert result.exit_code == (0 if report["ok"] else 1), result.stderr
        return report

    def sql(self, statement: str, **params: object) -> None:
        with self.authority.engine.begin() as connection:
            connection.execute(text(statement), params)

    def delete_newest_events(self, count: int) -> None:
        self.sql("DELETE FROM audit_events WHERE id IN (SELECT id FROM (SELECT id FROM "
                 "audit_events ORDER BY id DESC LIMIT :count) AS newest)", count=count)

    def rechain(self, *, edit: int) -> None:
        """Change event *edit* and recompute every digest with Fleet's own function."""
        with write_session(self.authority.engine) as session:
            previous = AUDIT_GENESIS
            for event in session.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all():
                if event.id == edit:
                    event.actor = "someone-else"
                event.digest = audit_digest(previous, event)
                previous = event.digest
                session.add(event)
            session.commit()

    @property
    def journal(self) -> Path:
        return journal_path(self.authority.settings)

    def rewrite_journal(self, *, drop: Checkpoint | None = None,
                        replace: tuple[Checkpoint, Checkpoint] | None = None) -> None:
        """The checkpoint file without *drop*'s line, or with *replace*[0] as *replace*[1]."""
        lines = []
        for line in self.journal.read_text().splitlines(keepends=True):
            value = json.loads(line)
            if drop is not None and value.get("mac") == drop.mac:
                continue
            if replace is not None and value.get("mac") == replace[0].mac:
                line = json.dumps(replace[1].as_json()) + "\n"
            lines.append(line)
        self.journal.write_text("".join(lines))


def kinds(report: dict[str, Any]) -> list[str]:
    return [finding["kind"] for finding in report["findings"]]


def forged(checkpoint: Checkpoint) -> Checkpoint:
    """The same checkpoint with one digit of its MAC changed."""
    digit = "0" if checkpoint.mac[-1] != "0" else "1"
    return Checkpoint(**{**checkpoint.as_json(), "at": checkpoint.at,
                         "mac": checkpoint.mac[:-1] + digit})


@pytest.fixture
def log(authority: Authority, data_dir: Path, database_url: str) -> Log:
    return Log(authority=authority,
               writer=CheckpointWriter(settings=authority.settings, engine=authority.engine,
                                       role="test"),
               fleet=Run(data_dir, CliRunner()), database_url=database_url)


# -- a clean log ------------------------------------------------------------------------------

def test_verify_clean_log_is_intact(log: Log) -> None:
    _, last = log.history()
    report = log.report()
    assert (report["ok"], report["findings"], report["checkpoints"]) == (True, [], 2)
    assert (report["anchored_to"], report["last_event"]) == (last.event_id, last.event_id)
    result = log.verify()
    assert result.exit_code == 0
    assert result.stdout == (
        f"audit log intact: 20 events, hash chain verified; 2 checkpoints verified in the "
        f"registry and in {log.journal}, the newest confirming event {last.event_id}\n")


def test_verify_notes_events_newer_than_the_last_checkpoint(log: Log) -> None:
    _, last = log.history()
    log.append(3)
    report = log.report()
    assert report["ok"] is True
    assert report["notes"] == [f"events after {last.event_id} (up to {last.event_id + 3}) are "
                               "newer than the newest checkpoint that confirms them: not "
                               "anchored yet"]


# -- the log ------------------------------------------------------------------------------------

def test_verify_refused_newest_events_deleted(log: Log) -> None:
    _, last = log.history()
    log.delete_newest_events(5)
    report = log.report()
    assert kinds(report) == ["truncated"]
    assert report["first_bad_position"] == last.event_id - 4
    assert f"names event {last.event_id}, but the log ends at event {last.event_id - 5}" in \
        report["problem"]
    result = log.verify()
    assert result.stdout.splitlines() == [f"event {last.event_id - 4}: {report['problem']}"]
    assert result.stderr.splitlines()[-1] == (
        "error: audit log is not intact: 1 problem (truncated); the first bad position is "
        f"event {last.event_id - 4}")


def test_verify_refused_edited_and_rechained_log(log: Log) -> None:
    first, last = log.history()
    log.rechain(edit=first.event_id + 2)
    report = log.report()
    assert kinds(report) == ["rechained"]  # the hash chain itself holds
    assert report["events"] == 20
    assert report["first_bad_position"] == first.event_id + 1
    assert (f"changed after event {first.event_id} and up to event {last.event_id}: "
            f"checkpoint {last.name}") in report["problem"]


def test_verify_refused_truncated_and_rechained_log(log: Log) -> None:
    first, last = log.history()
    log.rechain(edit=first.event_id - 5)
    log.delete_newest_events(5)
    report = log.report()
    assert sorted(kinds(report)) == ["rechained", "truncated"]
    assert report["first_bad_position"] == 1  # no checkpoint confirms anything
    truncated = next(f for f in report["findings"] if f["kind"] == "truncated")
    assert truncated["position"] == last.event_id - 4


def test_verify_refused_edited_row_without_rechaining(log: Log) -> None:
    first, _ = log.history()
    log.sql("UPDATE audit_events SET outcome = 'refused' WHERE id = :id", id=first.event_id + 3)
    report = log.report()
    assert kinds(report) == ["chain"]
    assert report["first_bad_position"] == first.event_id + 3


# -- the checkpoints ------------------------------------------------------------------------

def test_verify_refused_checkpoint_row_deleted(log: Log) -> None:
    _, last = log.history()
    log.sql("DELETE FROM audit_checkpoints WHERE mac = :mac", mac=last.mac)
    report = log.report()
    assert kinds(report) == ["checkpoint-row-missing"]
    assert report["findings"][0]["position"] == last.event_id
    assert f"{last.name} (event {last.event_id}," in report["problem"]
    assert "not in the registry: its row was deleted" in report["problem"]


def test_verify_refused_checkpoint_line_deleted(log: Log) -> None:
    first, _ = log.history()
    log.rewrite_journal(drop=first)
    report = log.report()
    assert kinds(report) == ["checkpoint-line-missing"]
    assert f"is in the registry but not in {log.journal}: its line was deleted" in \
        report["problem"]


def test_verify_refused_checkpoint_mac_altered_in_registry(log: Log) -> None:
    first, _ = log.history()
    log.sql("UPDATE audit_checkpoints SET mac = :mac WHERE mac = :old",
            mac=forged(first).mac, old=first.mac)
    report = log.report()
    assert kinds(report) == ["checkpoint-mac"]
    assert report["problem"] == (f"checkpoint {first.name} in the registry fails its MAC: it "
                                 "was altered or forged")


def test_verify_refused_checkpoint_mac_altered_in_file(log: Log) -> None:
    _, last = log.history()
    log.rewrite_journal(replace=(last, forged(last)))
    report = log.report()
    assert kinds(report) == ["checkpoint-mac"]
    assert f"on line 3 of {log.journal} fails its MAC" in report["problem"]


def test_verify_refused_checkpoint_moved_to_another_position(log: Log) -> None:
    first, last = log.history()
    moved = Checkpoint(**{**first.as_json(), "at": first.at, "event_id": last.event_id,
                          "head": last.head})
    log.sql("UPDATE audit_checkpoints SET event_id = :event_id, head = :head WHERE mac = :mac",
            event_id=moved.event_id, head=moved.head, mac=first.mac)
    assert kinds(log.report()) == ["checkpoint-mac"]


def test_verify_refused_checkpoint_deleted_from_both_places(log: Log) -> None:
    log.append(2)
    log.checkpoint()
    log.append(2)
    second = log.checkpoint()
    log.append(2)
    log.checkpoint()
    log.sql("DELETE FROM audit_checkpoints WHERE mac = :mac", mac=second.mac)
    log.rewrite_journal(drop=second)
    report = log.report()
    assert kinds(report) == ["checkpoint-gap"]
    assert report["problem"] == (f"checkpoints #2 of writer {log.writer.name} are missing from "
                                 "both the registry and the file (it wrote #3): deleted")


def test_verify_refused_log_cut_back_while_a_writer_ran(log: Log) -> None:
    _, last = log.history()
    log.delete_newest_events(5)
    cut = log.checkpoint()  # the same writer, later, at the shorter head
    report = log.report()
    assert sorted(kinds(report)) == ["checkpoint-order", "truncated"]
    order = next(f for f in report["findings"] if f["kind"] == "checkpoint-order")
    assert order["position"] == cut.event_id + 1 == last.event_id - 4


# -- the checkpoint file --------------------------------------------------------------------

def test_verify_refused_checkpoint_file_deleted(log: Log) -> None:
    log.history()
    log.journal.unlink()
    report = log.report()
    assert kinds(report) == ["file-missing"]
    assert f"the checkpoint file {log.journal} is missing while the registry holds 2" in \
        report["problem"]


def test_verify_refused_checkpoint_file_emptied(log: Log) -> None:
    log.history()
    log.journal.write_bytes(b"")
    assert kinds(log.report()) == ["file-header"]


def test_verify_refused_checkpoint_file_header_replaced(log: Log) -> None:
    log.history()
    lines = log.journal.read_text().splitlines(keepends=True)
    header = json.loads(lines[0])
    lines[0] = json.dumps({**header, "file": "f" * 32}) + "\n"
    log.journal.write_text("".join(lines))
    report = log.report()
    assert kinds(report) == ["file-header"]
    log.append(1)
    with pytest.raises(ConflictError, match="does not start with a header made with this key"):
        log.writer.write()


def test_verify_refused_junk_line_in_checkpoint_file(log: Log) -> None:
    log.history()
    with log.journal.open("a") as handle:
        handle.write('{"writer": "x"}\n')
    report = log.report()
    assert kinds(report) == ["file-line"]
    assert report["problem"].startswith(f"line 4 of {log.journal} is not a checkpoint")


def test_verify_checks_another_data_dirs_checkpoints_against_the_registry(
        log: Log, tmp_path: Path) -> None:
    """EST replicas on other hosts share the registry, each with its own checkpoint file."""
    log.history()
    other = log.authority.settings.with_overrides(data_dir=tmp_path / "replica")
    key_path(other).parent.mkdir(parents=True)
    shutil.copy(key_path(log.authority.settings), key_path(other))
    log.append(2)
    replica = CheckpointWriter(settings=other, engine=log.authority.engine, role="replica")
    assert replica.write() is not None
    report = log.report()
    assert report["ok"] is True
    assert report["checkpoints"] == 3
    assert report["notes"] == ["1 checkpoints went to another data dir's checkpoint file: "
                               "they are checked against the registry alone"]


# -- the key --------------------------------------------------------------------------------

def test_verify_refused_without_the_key(log: Log) -> None:
    """Fail closed: without the key only the chain can be checked, and that is not enough."""
    log.history()
    key_path(log.authority.settings).unlink()
    report = log.report()
    assert kinds(report) == ["no-key"]
    assert report["anchors_checked"] is False
    assert report["problem"].startswith(
        f"no audit checkpoint key at {key_path(log.authority.settings)}: only the hash chain")
    assert log.verify().exit_code == 1


def test_verify_chain_only_when_told(log: Log) -> None:
    log.history()
    key_path(log.authority.settings).unlink()
    report = log.report("--chain-only")
    assert (report["ok"], report["anchors_checked"], report["events"]) == (True, False, 20)
    result = log.verify("--chain-only")
    assert result.exit_code == 0
    assert result.stdout.startswith("audit log hash chain verified: 20 events; checkpoints not "
                                    "checked (--chain-only)")


def test_verify_with_another_key_fails_every_checkpoint(log: Log) -> None:
    log.history()
    key_path(log.authority.settings).write_text("ab" * 32 + "\n")
    report = log.report()
    assert set(kinds(report)) == {"checkpoint-mac", "file-header"}
    assert (f"no checkpoint verifies with the key {key_path(log.authority.settings)}: is it the "
            "key that wrote them?") in report["notes"]
