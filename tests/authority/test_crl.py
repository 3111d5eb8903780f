"""The CRL the authority publishes: contents, numbering, caching, and openssl's opinion."""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import fleet.authority.crl as fleet_crl
from fleet.authority import Authority
from fleet.ca import Paths
from fleet.registry import certificates as certs_db

from .conftest import Fleet


def number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def listed(crl: x509.CertificateRevocationList) -> set[str]:
    return {format(entry.serial_number, "x") for entry in crl}


def test_empty_crl_is_signed_by_the_issuing_ca(fleet: Fleet) -> None:
    crl = fleet.authority.current_crl()
    ca = fleet.authority.ca
    assert crl.issuer == ca.issuing.subject
    assert crl.is_signature_valid(ca.issuing.public_key())  # type: ignore[arg-type]
    assert len(crl) == 0
    assert number(crl) == 1
    assert crl.last_update_utc == fleet.clock.now
    assert crl.next_update_utc == fleet.clock.now + fleet.authority.settings.crl_next_update


def test_crl_lists_revoked_serials_with_reasons(fleet: Fleet) -> None:
    a = fleet.enroll("dev-a").record.serial
    b = fleet.enroll("dev-b").record.serial
    c = fleet.enroll("dev-c").record.serial
    fleet.authority.revoke_certificate(serial=a, reason="keyCompromise", actor="ops")
    fleet.authority.revoke_device(device_id="dev-b", reason="cessationOfOperation", actor="ops")
    crl = fleet.authority.current_crl()
    assert listed(crl) == {a, b}
    assert c not in listed(crl)
    reasons = {format(e.serial_number, "x"): e.extensions.get_extension_for_class(
        x509.CRLReason).value.reason for e in crl}
    assert reasons == {a: x509.ReasonFlags.key_compromise,
                       b: x509.ReasonFlags.cessation_of_operation}
    entry = crl.get_revoked_certificate_by_serial_number(int(a, 16))
    assert entry is not None
    assert entry.revocation_date_utc == fleet.clock.now


def test_crl_number_increases_only_when_something_changed(fleet: Fleet) -> None:
    serial = fleet.enroll("dev-1").record.serial
    first = fleet.authority.current_crl()
    assert number(fleet.authority.current_crl()) == number(first)  # nothing changed
    fleet.enroll("dev-2")  # issuing is not a revocation
    assert number(fleet.authority.current_crl()) == number(first)
    fleet.authority.revoke_certificate(serial=serial, reason="superseded", actor="ops")
    second = fleet.authority.current_crl()
    assert number(second) > number(first)
    assert listed(second) == {serial}
    assert number(fleet.authority.current_crl()) == number(second)


def test_crl_is_refreshed_before_next_update(fleet: Fleet) -> None:
    first = fleet.authority.current_crl()
    fleet.clock.advance(seconds=fleet.authority.settings.crl_next_update.total_seconds() / 2)
    refreshed = fleet.authority.current_crl()
    assert number(refreshed) > number(first)
    assert refreshed.next_update_utc is not None
    assert first.next_update_utc is not None
    assert refreshed.next_update_utc > first.next_update_utc


def test_crl_number_strictly_increases_across_authorities(fleet: Fleet) -> None:
    """Two processes (EST service and CLI) share the counter in the registry."""
    other = Authority(settings=fleet.authority.settings, engine=fleet.authority.engine,
                      ca=fleet.authority.ca, clock=fleet.clock)
    numbers = [number(a.build_crls()[0].crl)
               for a in (fleet.authority, other, fleet.authority, other)]
    assert numbers == sorted(numbers)
    assert len(set(numbers)) == len(numbers)


def test_expired_revoked_certificates_leave_the_crl(fleet: Fleet) -> None:
    serial = fleet.enroll("dev-1").record.serial
    fleet.authority.revoke_certificate(serial=serial, reason="keyCompromise", actor="ops")
    assert listed(fleet.authority.current_crl()) == {serial}
    fleet.clock.advance(days=31)
    assert listed(fleet.authority.current_crl()) == set()


def test_suspension_does_not_list_the_certificate(fleet: Fleet) -> None:
    fleet.enroll("dev-1")
    fleet.authority.suspend_device(device_id="dev-1", actor="ops")
    assert listed(fleet.authority.current_crl()) == set()


def test_openssl_accepts_the_crl_and_lists_the_serial(fleet: Fleet, tmp_path: Path) -> None:
    serial = fleet.enroll("dev-1").record.serial
    fleet.authority.revoke_certificate(serial=serial, reason="keyCompromise", actor="ops")
    crl = fleet.authority.current_crl()
    chain = Paths.of(fleet.authority.settings).chain
    crl_file = tmp_path / "fleet.crl"
    crl_file.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    check = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(crl_file),
                            "-CAfile", str(chain), "-noout"],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    assert "verify OK" in check.stdout + check.stderr
    text = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", str(crl_file), "-noout",
                           "-text"], capture_output=True, text=True, check=True).stdout
    assert f"Serial Number: {serial.upper().zfill(len(serial) + len(serial) % 2)}" in text
    assert "Key Compromise" in text
    shown = re.search(r"CRL Number:\s*(\d+)", text)
    assert shown is not None
    assert int(shown.group(1)) == number(crl)


def test_crl_built_while_a_revocation_commits_never_outnumbers_one_that_lists_it(
        fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """The number is taken (and the counter held) before the revoked certificates are read:
    a CRL built around a concurrent revocation either lists it or has the lower number."""
    serial = fleet.enroll("dev-1").record.serial
    other = Authority(settings=fleet.authority.settings, engine=fleet.authority.engine,
                      ca=fleet.authority.ca, clock=fleet.clock)
    reading, proceed = threading.Event(), threading.Event()
    read = certs_db.revoked_certificates

    def held_read(**kwargs: Any) -> Any:
        rows = read(**kwargs)
        if not reading.is_set():  # the first build has read what is revoked: hold it open
            reading.set()
            assert proceed.wait(60)
        return rows

    monkeypatch.setattr(fleet_crl.certs_db, "revoked_certificates", held_read)
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(lambda: fleet.authority.build_crls()[0].crl)
        assert reading.wait(60)

        def revoke_then_build() -> x509.CertificateRevocationList:
            other.revoke_certificate(serial=serial, reason="keyCompromise", actor="ops")
            return other.build_crls()[0].crl

        fast = pool.submit(revoke_then_build)
        with contextlib.suppress(TimeoutError):
            fast.result(timeout=2)  # it may finish now, or wait for the held build
        proceed.set()
        crls = sorted([slow.result(timeout=60), fast.result(timeout=60)], key=number)
    assert number(crls[0]) < number(crls[1])
    assert listed(crls[0]) <= listed(crls[1])
    assert listed(crls[1]) == {serial}
