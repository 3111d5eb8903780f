from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleet.cli.app import EXIT_USAGE
from fleet.cli.context import login_name

from .helpers import Enroll, Run

AUDIT_KEYS = {"id", "at", "action", "outcome", "actor", "device_id", "serial", "reason",
              "detail"}


def test_audit_json_records_operator_actions(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    fleet.ok("device", "revoke", "dev-1", "--reason", "keyCompromise")
    events = fleet.json("audit")
    for event in events:
        assert set(event) == AUDIT_KEYS
    revoke = [e for e in events if e["action"] == "device.revoke"]
    assert len(revoke) == 1
    assert revoke[0]["actor"] == f"operator:{login_name()}"
    assert revoke[0]["outcome"] == "ok"
    assert revoke[0]["reason"] == "keyCompromise"
    assert revoke[0]["device_id"] == "dev-1"
    assert isinstance(revoke[0]["detail"]["serials"], list)
    assert revoke[0]["at"].endswith("Z")
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)


def test_audit_records_refusals(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    fleet.ok("device", "revoke", "dev-1", "--reason", "keyCompromise")
    fleet("device", "revoke", "dev-1", "--reason", "keyCompromise")
    refused = [e for e in fleet.json("audit", "--action", "device.revoke")
               if e["outcome"] == "refused"]
    assert len(refused) == 1
    assert "already revoked" in refused[0]["reason"]


def test_audit_filters(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    enroll("dev-2")
    only = fleet.json("audit", "--device", "dev-2")
    assert only
    assert {e["device_id"] for e in only} == {"dev-2"}
    assert {e["action"] for e in fleet.json("audit", "--action", "enroll")} == {"enroll"}
    assert len(fleet.json("audit", "--since", "1h")) == len(fleet.json("audit"))
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert fleet.json("audit", "--since", future) == []
    assert "enroll" in fleet.ok("audit").stdout


def test_audit_action_selects_a_family(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    enroll("dev-2")
    fleet.ok("device", "suspend", "dev-1")
    fleet.ok("device", "revoke", "dev-2", "--reason", "keyCompromise")
    assert [e["action"] for e in fleet.json("audit", "--action", "device")] == [
        "device.suspend", "device.revoke"]
    assert [e["action"] for e in fleet.json("audit", "--action", "device.revoke")] == [
        "device.revoke"]
    assert fleet.json("audit", "--action", "dev") == []  # whole names only


def test_audit_action_that_matches_nothing_names_the_recorded_actions(
        fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    result = fleet("audit", "--action", "connect", "--json")
    assert result.exit_code == 0
    assert result.stdout.strip() == "[]"
    assert result.stderr == ("note: no audit event has action 'connect' or 'connect.*'; the "
                             "log holds: enroll, group.create, token.create\n")
    assert fleet("audit", "--action", "enroll").stderr == ""


def test_audit_help_names_only_real_actions(fleet: Run) -> None:
    help_text = " ".join(fleet.ok("audit", "--help").stdout.split())
    assert "device.revoke" in help_text
    assert "broker.connect" in help_text
    assert " connect." not in help_text


def test_audit_refused_bad_since(fleet: Run) -> None:
    result = fleet("audit", "--since", "yesterday")
    assert result.exit_code == EXIT_USAGE
    assert "Invalid value for '--since'" in result.stderr


def test_audit_refused_since_without_time_zone(fleet: Run) -> None:
    result = fleet("audit", "--since", "2024-01-01T00:00:00")
    assert result.exit_code == EXIT_USAGE
    assert "no time zone" in result.stderr


def test_audit_verify_intact_chain(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    fleet.ok("device", "revoke", "dev-1", "--reason", "keyCompromise")
    report = fleet.json("audit", "verify")
    assert report["ok"] is True
    assert report["events"] == len(fleet.json("audit"))
    assert "hash chain verified" in fleet.ok("audit", "verify").stdout


def test_audit_verify_refused_tampered_event(fleet: Run, enroll: Enroll) -> None:
    import sqlite3

    enroll("dev-1")
    enroll("dev-2")
    events = fleet.json("audit")
    with sqlite3.connect(fleet.data_dir / "fleet.db") as db:
        db.execute("UPDATE audit_events SET outcome = 'refused' WHERE id = ?", (events[1]["id"],))
    result = fleet("audit", "verify")
    assert result.exit_code == 1
    bad = events[1]["id"]
    assert f"event {bad}: audit event {bad} " in result.stdout
    assert f"the first bad position is event {bad}" in result.stderr
    assert fleet("audit", "verify", "--json").stdout.startswith(
        '{"ok": false, "events": 1,')


def test_audit_verify_refused_deleted_event(fleet: Run, enroll: Enroll) -> None:
    import sqlite3

    enroll("dev-1")
    enroll("dev-2")
    events = fleet.json("audit")
    with sqlite3.connect(fleet.data_dir / "fleet.db") as db:
        db.execute("DELETE FROM audit_events WHERE id = ?", (events[0]["id"],))
    result = fleet("audit", "verify")
    assert result.exit_code == 1
    assert "was changed, removed or inserted" in result.stdout
