"""`fleet health` hears of a revoked certificate the broker refused at CONNECT."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from fleet.authority import Authority
from fleet.cli.app import EXIT_REFUSED, app

from .conftest import Enroll
from .helpers import Client, audit_events, wait_until


def test_health_names_a_revoked_certificate_presented_to_the_broker(
        enroll: Enroll, sqlite_authority: Authority, connect: Callable[..., Client],
        sqlite_engine: Engine, data_dir: Path) -> None:
    device = enroll("d1")
    sqlite_authority.revoke_certificate(serial=device.serial, reason="keyCompromise",
                                        actor="operator")
    connect(device, expect=5)
    assert wait_until(lambda: any(e.outcome == "refused"
                                  for e in audit_events(sqlite_engine, "broker.connect")))
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "health", "--json"])
    assert result.exit_code == EXIT_REFUSED
    (finding,) = [f for f in json.loads(result.stdout)["findings"]
                  if f["kind"] == "revoked-certificate-presented"]
    assert finding["subject"] == "device/d1"
    assert "to broker.connect" in finding["detail"]
