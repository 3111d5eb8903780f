"""Who writes audit checkpoints: ``fleet init`` makes the key, a command that used the
authority checkpoints at its end, and the services every interval and at shutdown."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
from sqlmodel import Session

from fleet.authority import Authority
from fleet.checkpoints import journal_path, key_path, load_key
from fleet.registry import checkpoints as checkpoints_db
from fleet.registry import events as events_db
from fleet.registry.models import AuditCheckpoint
from fleet.settings import load_settings

from .helpers import Run, read_until, service_env, start
from .test_serve import available

EST_MODULE, BROKER_MODULE = "provisioning.server", "fleet.broker.server"


def checkpoints_of(authority: Authority) -> list[AuditCheckpoint]:
    with Session(authority.engine) as session:
        return list(checkpoints_db.list_checkpoints(session=session))


def head_of(authority: Authority) -> tuple[int, str] | None:
    with Session(authority.engine) as session:
        return events_db.audit_head(session=session)


def test_init_creates_the_checkpoint_key(empty_fleet: Run) -> None:
    result = empty_fleet.ok("init", "--json")
    settings = load_settings(environ={"FLEET_DATA_DIR": str(empty_fleet.data_dir)})
    key = load_key(settings)
    assert key is not None
    assert stat.S_IMODE(key_path(settings).stat().st_mode) == 0o600
    assert key.hex() not in result.stdout + result.stderr
    empty_fleet.ok("init")
    assert load_key(settings) == key  # idempotent: the key is kept


def test_command_checkpoints_the_events_it_appended(fleet: Run,
                                                    sqlite_authority: Authority) -> None:
    fleet.ok("group", "create", "sensors")
    fleet.ok("token", "create", "--group", "sensors", "--count", "2")
    first, checkpoint = checkpoints_of(sqlite_authority)  # one per command
    assert first.writer.startswith("cli@")
    assert checkpoint.writer.startswith("cli@")
    assert (checkpoint.event_id, checkpoint.head) == head_of(sqlite_authority)
    lines = journal_path(sqlite_authority.settings).read_text().splitlines()
    assert json.loads(lines[-1])["mac"] == checkpoint.mac
    fleet.ok("device", "list")  # reads only: nothing to checkpoint
    fleet.ok("token", "list")
    assert len(checkpoints_of(sqlite_authority)) == 2
    assert "audit log intact" in fleet.ok("audit", "verify").stdout


def test_refused_command_checkpoints_its_refusal(fleet: Run,
                                                 sqlite_authority: Authority) -> None:
    assert fleet("device", "suspend", "no-such-device").exit_code != 0
    with Session(sqlite_authority.engine) as session:
        [event] = events_db.list_audit(session=session)
    assert event.outcome == "refused"
    [checkpoint] = checkpoints_of(sqlite_authority)
    assert checkpoint.event_id == event.id


def test_command_warns_when_it_cannot_checkpoint(fleet: Run,
                                                 sqlite_authority: Authority) -> None:
    fleet.ok("group", "create", "sensors")
    journal = journal_path(sqlite_authority.settings)
    journal.write_text("not the header\n" + journal.read_text().split("\n", 1)[1])
    result = fleet.ok("token", "create", "--group", "sensors")
    assert result.stderr == (f"warning: audit checkpoint not written: the audit checkpoint file "
                             f"{journal} does not start with a header made with this key; run "
                             "`fleet audit verify`\n")
    assert len(checkpoints_of(sqlite_authority)) == 1


# -- the services -------------------------------------------------------------------------

def wait_for_checkpoint(authority: Authority, role: str, head: tuple[int, str] | None,
                        timeout: float = 30) -> AuditCheckpoint:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in checkpoints_of(authority):
            if row.writer.startswith(f"{role}@") and (row.event_id, row.head) == head:
                return row
        time.sleep(0.05)
    pytest.fail(f"no checkpoint by {role} at {head} within {timeout}s: "
                f"{[(r.writer, r.event_id) for r in checkpoints_of(authority)]}")


def assert_key_not_shown(authority: Authority, *outputs: str) -> None:
    key = load_key(authority.settings)
    assert key is not None
    for output in outputs:
        assert key.hex() not in output


@pytest.mark.slow
@pytest.mark.skipif(not available(BROKER_MODULE), reason="broker not installed")
def test_broker_checkpoints_every_interval(data_dir: Path, sqlite_authority: Authority,
                                           started: list[subprocess.Popen[str]]) -> None:
    process = start(started, ["serve", "broker", "--port", "0"],
                    service_env(data_dir, FLEET_AUDIT_CHECKPOINT_INTERVAL="100ms"))
    read_until(process, r"MQTT listening on mqtts://")
    for index in range(2):  # two intervals, each with new events
        sqlite_authority.create_group(name=f"group-{index}", actor="operator")
        wait_for_checkpoint(sqlite_authority, "broker", head_of(sqlite_authority))
    writers = {row.writer for row in checkpoints_of(sqlite_authority)}
    assert len(writers) == 1  # one writer, numbered 1, 2
    assert [row.seq for row in checkpoints_of(sqlite_authority)] == [1, 2]
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert_key_not_shown(sqlite_authority, out, err)


@pytest.mark.slow
@pytest.mark.parametrize(("command", "modules", "ready"), [
    (["serve", "broker", "--port", "0"], [BROKER_MODULE], "MQTT listening"),
    (["serve", "est", "--port", "0"], [EST_MODULE], "EST listening"),
    (["up", "--est-port", "0", "--mqtt-port", "0"], [EST_MODULE, BROKER_MODULE], "data dir: "),
], ids=["broker", "est", "up"])
def test_service_checkpoints_at_shutdown(data_dir: Path, sqlite_authority: Authority,
                                         started: list[subprocess.Popen[str]],
                                         command: list[str], modules: list[str],
                                         ready: str) -> None:
    if not all(available(module) for module in modules):
        pytest.skip("service not installed")
    process = start(started, command, service_env(
        data_dir, FLEET_AUDIT_CHECKPOINT_INTERVAL="1h"))
    read_until(process, ready)
    sqlite_authority.create_group(name="sensors", actor="operator")
    sqlite_authority.create_tokens(group="sensors", actor="factory", count=3)
    assert checkpoints_of(sqlite_authority) == []  # the first interval is an hour away
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    [row] = checkpoints_of(sqlite_authority)
    role = "up" if command[0] == "up" else command[1]
    assert (row.writer.split("@")[0], row.seq) == (role, 1)
    assert (row.event_id, row.head) == head_of(sqlite_authority)
    assert_key_not_shown(sqlite_authority, out, err)
