"""A superseded certificate stays usable for certificates.superseded_grace, then is out:
refused at admission and listed on the CRL as superseded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509

from fleet.authority import Authority
from fleet.errors import CertificateNotActiveError

from .conftest import Fleet


def serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def with_grace(fleet: Fleet, grace: timedelta) -> Fleet:
    authority = fleet.authority
    return Fleet(Authority(settings=authority.settings.with_overrides(superseded_grace=grace),
                           engine=authority.engine, ca=authority.ca, clock=fleet.clock),
                 fleet.clock)


def crl_reason(fleet: Fleet, cert: x509.Certificate) -> x509.ReasonFlags | None:
    entry = fleet.authority.current_crl().get_revoked_certificate_by_serial_number(
        cert.serial_number)
    if entry is None:
        return None
    return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason


def test_superseded_certificate_usable_within_grace_then_refused(fleet: Fleet) -> None:
    fleet = with_grace(fleet, timedelta(hours=1))
    old = fleet.enroll("dev-1").certificate
    fleet.reenroll(old)
    admission = fleet.authority.admit(certificate=old)
    assert admission.superseded
    assert admission.usable_until == fleet.clock.now + timedelta(hours=1)
    assert crl_reason(fleet, old) is None
    fleet.clock.advance(hours=1)
    with pytest.raises(CertificateNotActiveError, match="grace ended"):
        fleet.authority.admit(certificate=old)
    assert crl_reason(fleet, old) == x509.ReasonFlags.superseded


def test_zero_grace_refuses_at_once(fleet: Fleet) -> None:
    fleet = with_grace(fleet, timedelta(0))
    old = fleet.enroll("dev-1").certificate
    new = fleet.reenroll(old).certificate
    with pytest.raises(CertificateNotActiveError, match="superseded"):
        fleet.authority.admit(certificate=old)
    assert crl_reason(fleet, old) == x509.ReasonFlags.superseded
    assert fleet.authority.admit(certificate=new).usable_until == new.not_valid_after_utc


def test_crl_is_rebuilt_when_a_grace_ends(fleet: Fleet) -> None:
    """No revocation happens when a grace ends; the cached CRL must still pick it up."""
    fleet = with_grace(fleet, timedelta(minutes=5))
    old = fleet.enroll("dev-1").certificate
    fleet.reenroll(old)
    before = fleet.authority.current_crl()
    fleet.clock.advance(minutes=5)
    after = fleet.authority.current_crl()
    assert after is not before
    assert crl_reason(fleet, old) == x509.ReasonFlags.superseded


def test_superseded_certificate_cannot_renew_again(fleet: Fleet) -> None:
    fleet = with_grace(fleet, timedelta(hours=1))
    old = fleet.enroll("dev-1").certificate
    fleet.reenroll(old)
    with fleet.refused(CertificateNotActiveError, "reenroll", match="superseded"):
        fleet.reenroll(old)


def test_supersession_is_announced_to_brokers(fleet: Fleet) -> None:
    old = fleet.enroll("dev-1").certificate
    fleet.reenroll(old)
    events = fleet.authority.revocations_after(0)
    assert [(e.kind, e.serial) for e in events] == [("superseded", serial(old))]
