"""``fleet vendor add|list|show|remove`` and ``fleet device rearm``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import select

from device_sim.manufacturer import VendorCA
from fleet import pki
from fleet.authority import Authority, ManufacturerCredential
from fleet.registry.engine import session as new_session
from fleet.registry.models import AuditEvent

from .helpers import Run, csr_for


@pytest.fixture(scope="module")
def acme() -> VendorCA:
    return VendorCA("Acme")


@pytest.fixture
def acme_pem(tmp_path: Path, acme: VendorCA) -> Path:
    path = tmp_path / "acme-ca.pem"
    path.write_text(acme.pem())
    return path


def actions(authority: Authority) -> list[tuple[str, str]]:
    with new_session(authority.engine) as session:
        return [(e.action, e.outcome) for e in session.exec(select(AuditEvent))]


def test_vendor_add_list_show_remove(fleet: Run, declare: Callable[..., None], acme_pem: Path,
                                     acme: VendorCA, tmp_path: Path,
                                     sqlite_authority: Authority) -> None:
    declare("cameras")
    allow = tmp_path / "serials.csv"
    allow.write_text("device_id\nSN-1\nSN-2\n")
    added = fleet.json("vendor", "add", "acme", "--ca", str(acme_pem), "--group", "cameras",
                       "--allow", str(allow))
    fingerprint = pki.fingerprint_sha256(acme.certificate)
    assert (added["name"], added["group"], added["device_id_from"], added["allowed_ids"],
            added["fingerprint_sha256"]) == ("acme", "cameras", "serialNumber", 2, fingerprint)
    listed = fleet.json("vendor", "list")
    assert [(v["name"], v["enrolled"]) for v in listed] == [("acme", 0)]
    shown = fleet.json("vendor", "show", "acme")
    assert shown["ca"][0]["subject"] == acme.certificate.subject.rfc4514_string()
    assert shown["allowed_ids"] == 2
    assert "acme" in fleet.ok("vendor", "list").stdout
    assert fleet.json("vendor", "remove", "acme")["removed"] is True
    assert fleet.json("vendor", "list") == []
    assert ("vendor.add", "ok") in actions(sqlite_authority)
    assert ("vendor.remove", "ok") in actions(sqlite_authority)


def test_vendor_refusals_exit_codes(fleet: Run, declare: Callable[..., None], acme_pem: Path,
                                    acme: VendorCA, tmp_path: Path) -> None:
    declare("cameras")
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(pki.certificate_pem(acme.issue("SN-1").certificate))
    result = fleet("vendor", "add", "acme", "--ca", str(leaf), "--group", "cameras")
    assert result.exit_code == 1
    assert "not a CA certificate" in result.stderr
    result = fleet("vendor", "add", "acme", "--ca", str(acme_pem), "--group", "nope")
    assert result.exit_code == 3
    assert "unknown group" in result.stderr
    result = fleet("vendor", "add", "acme", "--ca", str(acme_pem), "--group", "cameras",
                   "--device-id-from", "mac")
    assert result.exit_code == 2
    result = fleet("vendor", "show", "nobody", "--json")
    assert result.exit_code == 3
    assert json.loads(result.stderr)["exit_code"] == 3
    assert fleet("vendor", "remove", "nobody").exit_code == 3


def test_device_rearm(fleet: Run, declare: Callable[..., None], acme_pem: Path,
                      acme: VendorCA, sqlite_authority: Authority) -> None:
    declare("cameras")
    fleet.ok("vendor", "add", "acme", "--ca", str(acme_pem), "--group", "cameras")
    idevid = acme.issue("SN-7")
    key = pki.generate_private_key()
    sqlite_authority.enroll_manufacturer(credential=ManufacturerCredential(idevid.certificate),
                                         csr=csr_for("SN-7", key), actor="est")
    rearmed = fleet.json("device", "rearm", "SN-7")
    (record,) = rearmed["manufacturer_certificates"]
    assert (record["vendor"], record["armed"], record["rearm_count"]) == ("acme", True, 1)
    assert record["fingerprint_sha256"] == pki.fingerprint_sha256(idevid.certificate)
    result = fleet("device", "rearm", "SN-7")
    assert result.exit_code == 1
    assert "armed already" in result.stderr
    assert fleet("device", "rearm", "SN-8").exit_code == 3
    assert ("device.rearm", "ok") in actions(sqlite_authority)
