from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleet import pki
from fleet.authority import Authority, TokenCredential
from fleet.cli.app import EXIT_USAGE

from .helpers import Enroll, Run, csr_for


def days_ago(days: int) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


def test_expiring_lists_certificates_in_use_within_the_window(fleet: Run, enroll: Enroll) -> None:
    soon = enroll("old-1", clock=lambda: days_ago(27))  # 30-day certificate, ~3 days left
    enroll("new-1")
    revoked = enroll("old-2", clock=lambda: days_ago(27))
    enroll("dead-1", clock=lambda: days_ago(40))  # already expired
    fleet.ok("device", "revoke", "old-2", "--reason", "keyCompromise")
    listed = fleet.json("expiring")
    assert [c["serial"] for c in listed] == [format(soon.certificate.serial_number, "x")]
    assert listed[0]["device_id"] == "old-1"
    assert {"serial", "status", "not_after"} <= set(listed[0])
    assert format(revoked.certificate.serial_number, "x") not in str(listed)
    assert len(fleet.json("expiring", "--within", "31d")) == 2
    assert fleet.json("expiring", "--within", "1d") == []
    assert "old-1" in fleet.ok("expiring").stdout


def test_expiring_leaves_out_superseded(fleet: Run, enroll: Enroll,
                                        sqlite_authority: Authority) -> None:
    enroll("dev-1", clock=lambda: days_ago(27))
    # Enrolling again with a token bound to the device supersedes the old certificate: it
    # ends with its grace, and the device holds a new one that expires in 30 days.
    token = sqlite_authority.create_tokens(group="sensors", device_id="dev-1", actor="factory")
    sqlite_authority.enroll(credential=TokenCredential(str(token[0].token)),
                            csr=csr_for("dev-1", pki.generate_private_key()), actor="device")
    assert fleet.json("expiring") == []
    [current] = fleet.json("expiring", "--within", "31d")
    assert current["status"] == "active"


def test_expiring_refused_bad_window(fleet: Run) -> None:
    result = fleet("expiring", "--within", "a week")
    assert result.exit_code == EXIT_USAGE
    assert "Invalid value for '--within'" in result.stderr


def test_expiring_refused_zero_window_says_it_must_be_positive(fleet: Run) -> None:
    result = fleet("expiring", "--within", "0s")
    assert result.exit_code == EXIT_USAGE
    assert "'0s': must be greater than zero" in result.stderr
    assert "not a duration" not in result.stderr
