"""One certificate (or one client id) connected from two addresses at once: the broker audits
``broker.shared`` and ``fleet health`` names it; a reconnect from the same address does not.

The broker listens on 127.0.0.1; the second client binds 127.0.0.2 (all of 127/8 is local).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from fleet.authority import Authority
from fleet.cli.app import EXIT_REFUSED, app
from fleet.health import SHARED_ACTION

from .conftest import Enroll, rekey
from .helpers import Client, Credentials, audit_events, wait_until

OTHER = "127.0.0.2"


def shared_events(engine: Engine, count: int) -> list[dict[str, Any]]:
    """The details of the broker.shared events, once there are *count* of them."""
    assert wait_until(lambda: len(audit_events(engine, SHARED_ACTION)) >= count)
    events = audit_events(engine, SHARED_ACTION)
    assert len(events) == count, [e.reason for e in events]
    return [{"serial": e.serial, "device_id": e.device_id, **json.loads(e.detail or "{}")}
            for e in events]


def health(data_dir: Path) -> tuple[int, list[dict[str, Any]]]:
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "health", "--json"])
    return result.exit_code, json.loads(result.stdout)["findings"]


def of_kind(findings: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f for f in findings if f["kind"] == kind]


def test_one_certificate_from_two_addresses_is_audited_and_needs_action(
        enroll: Enroll, connect: Callable[..., Client], sqlite_engine: Engine,
        data_dir: Path) -> None:
    device = enroll("d1")
    first = connect(device)
    connect(device, source=OTHER)  # takes the client id over (MQTT-3.1.4-2)
    assert first.disconnected.wait(5)
    (event,) = shared_events(sqlite_engine, 1)
    assert event["serial"] == event["other_serial"] == device.serial
    assert event["device_id"] == event["client_id"] == event["other_client_id"] == "d1"
    assert (event["address"], event["other_address"]) == (OTHER, "127.0.0.1")
    assert event["peer"].startswith(f"{OTHER}:")
    assert event["replaced"] is True
    code, findings = health(data_dir)
    assert code == EXIT_REFUSED
    (finding,) = of_kind(findings, "certificate-shared")
    assert finding["subject"] == "device/d1"
    assert finding["needs_action"] is True
    assert finding["detail"] == (f"certificate {device.serial} connected from 127.0.0.1, "
                                 f"{OTHER} at once, 1 time")


def test_a_reconnect_from_the_same_address_is_not_a_finding(
        enroll: Enroll, connect: Callable[..., Client], sqlite_engine: Engine,
        data_dir: Path) -> None:
    steady, marker = enroll("steady"), enroll("marker")
    first = connect(steady)
    connect(steady)  # the same address: a device reconnecting before its old link timed out
    assert first.disconnected.wait(5)
    # Audit events are written in order: once the marker's is there, the reconnect's would be.
    connect(marker)
    connect(marker, source=OTHER)
    (event,) = shared_events(sqlite_engine, 1)
    assert event["device_id"] == "marker"
    _, findings = health(data_dir)
    assert [f["subject"] for f in of_kind(findings, "certificate-shared")] == ["device/marker"]


def test_a_service_certificate_under_two_client_ids_from_two_addresses_is_shared(
        issue_service: Callable[[str], Credentials], connect: Callable[..., Client],
        sqlite_engine: Engine, data_dir: Path) -> None:
    service = issue_service("ingest")
    first = connect(service, client_id="ingest-a")
    connect(service, client_id="ingest-b", source=OTHER)
    (event,) = shared_events(sqlite_engine, 1)
    assert (event["client_id"], event["other_client_id"]) == ("ingest-b", "ingest-a")
    assert event["replaced"] is False
    assert not first.disconnected.is_set()  # both stay: the client ids differ
    _, findings = health(data_dir)
    (finding,) = of_kind(findings, "certificate-shared")
    assert finding["subject"] == "service/ingest"


def test_the_old_and_the_new_certificate_from_two_addresses_share_the_client_id(
        enroll: Enroll, sqlite_authority: Authority, connect: Callable[..., Client],
        sqlite_engine: Engine, data_dir: Path) -> None:
    old = enroll("d1")
    connect(old)
    renewed = rekey(sqlite_authority, old)  # the old one stays usable for its grace
    connect(renewed, source=OTHER)
    (event,) = shared_events(sqlite_engine, 1)
    assert (event["serial"], event["other_serial"]) == (renewed.serial, old.serial)
    code, findings = health(data_dir)
    assert code == EXIT_REFUSED
    assert of_kind(findings, "certificate-shared") == []
    (finding,) = of_kind(findings, "client-id-shared")
    assert finding["subject"] == "device/d1"
    assert finding["detail"] == (
        f"client id d1 (certificates {', '.join(sorted((old.serial, renewed.serial)))}) "
        f"connected from 127.0.0.1, {OTHER} at once, 1 time")


def test_health_looks_back_only_as_far_as_since(
        enroll: Enroll, connect: Callable[..., Client], sqlite_engine: Engine,
        data_dir: Path) -> None:
    device = enroll("d1")
    connect(device)
    connect(device, source=OTHER)
    shared_events(sqlite_engine, 1)
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "health", "--json",
                                      "--since", "1ms"])
    assert of_kind(json.loads(result.stdout)["findings"], "certificate-shared") == []
