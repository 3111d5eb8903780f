"""`fleet health`: each finding from a real registry, and the exit code cron relies on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fleet import pki
from fleet.authority import Authority
from fleet.cli.app import EXIT_REFUSED
from fleet.errors import CertificateNotActiveError

from .helpers import Enroll, Run, csr_for


def report(fleet: Run, *args: str) -> tuple[int, dict[str, Any]]:
    result = fleet("health", "--json", *args)
    return result.exit_code, json.loads(result.stdout)


def kinds(document: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for finding in document["findings"]:
        found.setdefault(finding["kind"], []).append(finding["subject"])
    return found


def days_ago(days: float) -> Any:
    return lambda: datetime.now(UTC) - timedelta(days=days)


def test_health_fresh_fleet_has_nothing_needing_action(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1")
    code, document = report(fleet)
    assert code == 0
    assert document["needs_action"] is False
    assert "renewal-overdue" not in kinds(document)
    assert fleet.ok("health").stdout.strip().startswith(("nothing to report", "Findings"))


def test_health_reports_a_certificate_expiring_within_the_window(fleet: Run,
                                                                 enroll: Enroll) -> None:
    enroll("dev-1", clock=days_ago(27))  # 30-day certificates: 3 days left
    code, document = report(fleet, "--within", "7d")
    assert code == EXIT_REFUSED
    assert kinds(document)["certificate-expiring"] == ["device/dev-1"]
    code, document = report(fleet, "--within", "1d")
    assert "certificate-expiring" not in kinds(document)


def test_health_reports_a_device_that_never_renewed_past_its_renewal_point(
        fleet: Run, enroll: Enroll) -> None:
    enroll("late", clock=days_ago(21))  # renewal due at 2/3 of 30 days = day 20
    enroll("fresh", clock=days_ago(10))
    code, document = report(fleet, "--within", "1d")
    assert code == EXIT_REFUSED
    assert kinds(document)["renewal-overdue"] == ["device/late"]
    (finding,) = [f for f in document["findings"] if f["kind"] == "renewal-overdue"]
    assert "never renewed" in finding["detail"]


def test_health_a_renewed_device_is_no_longer_overdue(fleet: Run, enroll: Enroll,
                                                       sqlite_authority: Authority) -> None:
    old = enroll("late", clock=days_ago(21))
    sqlite_authority.reenroll(client_certificate=old.certificate,
                              csr=csr_for("late", pki.generate_private_key()), actor="device")
    _, document = report(fleet, "--within", "1d")
    assert "renewal-overdue" not in kinds(document)


def test_health_reports_a_revoked_certificate_still_presented(
        fleet: Run, enroll: Enroll, sqlite_authority: Authority) -> None:
    issued = enroll("dev-1")
    sqlite_authority.revoke_certificate(serial=issued.record.serial, reason="keyCompromise",
                                        actor="operator")
    with pytest.raises(CertificateNotActiveError):
        sqlite_authority.reenroll(client_certificate=issued.certificate,
                                  csr=csr_for("dev-1", pki.generate_private_key()),
                                  actor="device")
    code, document = report(fleet)
    assert code == EXIT_REFUSED
    (finding,) = [f for f in document["findings"]
                  if f["kind"] == "revoked-certificate-presented"]
    assert finding["subject"] == "device/dev-1"
    assert "keyCompromise" in finding["detail"]
    assert "to reenroll" in finding["detail"]
    _, later = report(fleet, "--since", "1ms")
    assert "revoked-certificate-presented" not in kinds(later)


def test_health_reports_suspended_devices_and_unused_tokens_without_failing(
        fleet: Run, enroll: Enroll, sqlite_authority: Authority) -> None:
    enroll("dev-1")
    sqlite_authority.suspend_device(device_id="dev-1", actor="operator")
    sqlite_authority.create_group(name="gateways", actor="operator")
    sqlite_authority.create_tokens(group="gateways", count=3, actor="factory",
                                   ttl=timedelta(hours=2))
    code, document = report(fleet, "--within", "1d")
    assert code == 0
    found = kinds(document)
    assert found["device-suspended"] == ["device/dev-1"]
    assert found["tokens-unused"] == ["group/gateways"]
    assert len(found["token-expiring-unused"]) == 3
    (unused,) = [f for f in document["findings"] if f["kind"] == "tokens-unused"]
    assert unused["detail"] == "3 live tokens not used yet"


def test_health_human_output_names_what_needs_action(fleet: Run, enroll: Enroll) -> None:
    enroll("dev-1", clock=days_ago(27))
    result = fleet("health")
    assert result.exit_code == EXIT_REFUSED
    assert "certificate-expiring" in result.stdout
    assert result.stderr.strip().endswith("need action")
