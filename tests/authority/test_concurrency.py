"""Races: a token is never used more often than allowed, a certificate is renewed only once."""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from cryptography import x509
from pki.x509_factory import new_key

from fleet.errors import (
    CertificateNotActiveError,
    ConflictError,
    FleetError,
    ForbiddenError,
    TokenError,
)
from fleet.registry import CertificateStatus, DeviceStatus
from fleet.registry import events as events_db

from .conftest import Fleet

T = TypeVar("T")


def race(calls: Sequence[Callable[[], T]]) -> tuple[list[T], list[FleetError]]:
    """Run every call at once (one thread each); anything but a FleetError fails the test."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T | FleetError:
        barrier.wait()
        try:
            return call()
        except FleetError as error:
            return error

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        outcomes = list(pool.map(run, calls))
    wins = [o for o in outcomes if not isinstance(o, FleetError)]
    return wins, [o for o in outcomes if isinstance(o, FleetError)]


def enroll_calls(fleet: Fleet, token: str, device_ids: Sequence[str]) -> list[Callable[[], object]]:
    csrs = [fleet.csr(device_id, new_key()) for device_id in device_ids]  # made before the race
    return [functools.partial(fleet.enroll, device_id, token, csr=csr)
            for device_id, csr in zip(device_ids, csrs, strict=True)]


def assert_one_enrollment(fleet: Fleet, wins: list[object]) -> None:
    assert len(wins) == 1
    assert len(fleet.certificates()) == 1
    outcomes = Counter((e.action, e.outcome) for e in fleet.audit() if e.action == "enroll")
    assert outcomes[("enroll", "ok")] == 1


def test_single_use_bound_token_raced_by_50_enrollments(fleet: Fleet) -> None:
    token = fleet.token(device_id="dev-1")
    wins, refusals = race(enroll_calls(fleet, token, ["dev-1"] * 50))
    assert_one_enrollment(fleet, wins)
    assert all(isinstance(e, TokenError) for e in refusals), Counter(map(type, refusals))
    device = fleet.device("dev-1")
    assert device is not None
    assert device.status == DeviceStatus.ACTIVE
    assert fleet.tokens()[0].uses_left == 0


def test_single_use_group_token_raced_by_50_different_devices(fleet: Fleet) -> None:
    token = fleet.token(group="sensors", uses=1)
    ids = [f"dev-{i}" for i in range(50)]
    wins, refusals = race(enroll_calls(fleet, token, ids))
    assert_one_enrollment(fleet, wins)
    assert all(isinstance(e, TokenError) for e in refusals), Counter(map(type, refusals))
    with fleet.session() as session:
        from fleet.registry import devices as devices_db

        assert len(devices_db.list_devices(session=session)) == 1
    assert fleet.tokens()[0].uses_left == 0


def test_multi_use_group_token_raced_by_50_enrollments_of_one_new_device(fleet: Fleet) -> None:
    """Only the first registers the device; the rest are identity takeovers and refused."""
    token = fleet.token(group="sensors", uses=50)
    wins, refusals = race(enroll_calls(fleet, token, ["dev-1"] * 50))
    assert_one_enrollment(fleet, wins)
    assert all(isinstance(e, ForbiddenError) for e in refusals), Counter(map(type, refusals))
    assert fleet.tokens()[0].uses_left == 49  # refusals gave their use back


def test_certificate_raced_by_20_reenrollments(fleet: Fleet) -> None:
    old = fleet.enroll("dev-1").certificate
    csrs = [fleet.csr("dev-1", new_key()) for _ in range(20)]
    calls = [functools.partial(fleet.reenroll, old, csr=csr) for csr in csrs]
    wins, refusals = race(calls)
    assert len(wins) == 1
    assert all(isinstance(e, CertificateNotActiveError) for e in refusals), \
        Counter(map(type, refusals))
    certs = fleet.certificates("dev-1")
    assert sorted(c.status for c in certs) == [CertificateStatus.ACTIVE,
                                               CertificateStatus.SUPERSEDED]
    active = next(c for c in certs if c.status == CertificateStatus.ACTIVE)
    assert active.replaces == format(old.serial_number, "x")
    won = wins[0]
    assert isinstance(won.certificate, x509.Certificate)
    assert active.serial == won.record.serial
    outcomes = Counter(e.outcome for e in fleet.audit() if e.action == "reenroll")
    assert outcomes == {"ok": 1, "refused": 19}


def test_revocation_racing_reenrollment_leaves_nothing_usable(fleet: Fleet) -> None:
    old = fleet.enroll("dev-1").certificate
    csrs = [fleet.csr("dev-1", new_key()) for _ in range(10)]
    calls: list[Callable[[], object]] = [functools.partial(fleet.reenroll, old, csr=csr)
                                         for csr in csrs]
    calls.append(lambda: fleet.authority.revoke_device(device_id="dev-1",
                                                       reason="keyCompromise", actor="ops"))
    race(calls)
    device = fleet.device("dev-1")
    assert device is not None
    assert device.status == DeviceStatus.REVOKED
    assert {c.status for c in fleet.certificates("dev-1")} == {CertificateStatus.REVOKED}


def test_certificate_revoked_by_10_operators_at_once_keeps_the_first_reason(
        fleet: Fleet) -> None:
    """One revocation wins; the others find it revoked (ConflictError) and rewrite nothing."""
    serial = fleet.enroll("dev-1").record.serial
    reasons = ["cessationOfOperation", "affiliationChanged"] * 5
    calls = [functools.partial(fleet.authority.revoke_certificate, serial=serial,
                               reason=reason, actor=f"ops-{i}")
             for i, reason in enumerate(reasons)]
    wins, refusals = race(calls)
    assert len(wins) == 1
    assert all(isinstance(e, ConflictError) for e in refusals), Counter(map(type, refusals))
    row = fleet.certificate(serial)
    assert row is not None
    assert row.revocation_reason == wins[0].revocation_reason
    [crl_entry] = fleet.authority.current_crl()
    assert crl_entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value \
        == row.revocation_reason
    with fleet.session() as session:
        events = events_db.revocations_after(session=session, after_id=0)
    assert [e.serial for e in events if e.kind == "revoked"] == [serial]
    outcomes = Counter(e.outcome for e in fleet.audit() if e.action == "cert.revoke")
    assert outcomes == {"ok": 1, "refused": 9}
