"""Findings about a fleet that an operator should hear of: what ``fleet health`` reports.

Each finding has a kind, what it is about and whether it needs action. ``fleet health`` exits
non-zero when one does, so cron or an alerting system can run it:

- ``certificate-expiring`` (action): a device's or service's current certificate expires within
  the window and nothing has replaced it;
- ``renewal-overdue`` (action): a device's current certificate is past its renewal point
  (``certificates.renewal_fraction`` of its lifetime) and the device has not renewed; the
  detail says whether it ever did;
- ``revoked-certificate-presented`` / ``superseded-certificate-presented`` (action): the broker
  or EST refused a certificate that is revoked, or superseded past its grace, within the
  look-back: its key is in use somewhere, by a device not updated or by whoever took the key;
- ``certificate-shared`` (action): within the look-back the broker saw one certificate
  connected from two addresses at once (``broker.shared``): a copied key, or at best a device
  that reconnected from a new address while its old connection lingered;
- ``client-id-shared`` (action): the same, for two certificates of one identity holding its
  client id from two addresses at once (the old and the new certificate of one device);
- ``device-suspended``: a device is suspended;
- ``token-expiring-unused``: a bootstrap token still unused expires within the window;
- ``tokens-unused``: the live tokens of a group that no device has used yet.

:func:`gauges` reads the two figures the EST service's ``/metrics`` publishes from the
registry: the earliest expiry of a current certificate and the unused tokens of each group.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func
from sqlmodel import Session, col, select

from fleet.registry.models import (
    AuditEvent,
    BootstrapToken,
    Certificate,
    CertificateStatus,
    Device,
    DeviceStatus,
)

PRESENTING_ACTIONS = ("broker.connect", "reenroll")
"""Refusals of these actions carry the serial of the certificate the client presented."""
SHARED_ACTION = "broker.shared"
"""A certificate or client id connected from two addresses at once (fleet.broker.gate)."""


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    subject: str
    detail: str
    needs_action: bool
    at: datetime | None = None
    """When it happens or last happened (expiry, last refusal, token expiry)."""


def findings(session: Session, *, now: datetime, within: timedelta, since: datetime,
             renewal_fraction: float, superseded_grace: timedelta) -> list[Finding]:
    """Every finding, those needing action first."""
    current = _current(session)
    found = [*_expiring(current, now, within),
             *_overdue(session, current, now, renewal_fraction),
             *_presented(session, since, superseded_grace), *_shared(session, since),
             *_suspended(session),
             *_tokens(session, now, within)]
    return sorted(found, key=lambda f: (not f.needs_action, f.kind, f.subject))


@dataclass(frozen=True, slots=True)
class Gauges:
    earliest_expiry: datetime | None
    """The soonest not_after of an active certificate not yet expired (None: there is none)."""
    unused_tokens: dict[str, int]
    """Live tokens no device has used, by group (groups without one are left out)."""


def gauges(session: Session, *, now: datetime) -> Gauges:
    """Two aggregate queries, whatever the size of the fleet."""
    earliest = session.exec(select(func.min(Certificate.not_after)).where(
        Certificate.status == CertificateStatus.ACTIVE, Certificate.not_after > now)).one()
    rows = session.exec(select(BootstrapToken.group, func.count()).where(
        *_live_tokens(now), BootstrapToken.uses_left == BootstrapToken.max_uses)
        .group_by(BootstrapToken.group)).all()
    return Gauges(earliest_expiry=earliest, unused_tokens={group: n for group, n in rows})


def _live_tokens(now: datetime) -> tuple[ColumnElement[bool], ...]:
    return (col(BootstrapToken.revoked_at).is_(None), col(BootstrapToken.uses_left) > 0,
            col(BootstrapToken.expires_at) > now)


def _owner(cert: Certificate) -> str:
    return f"device/{cert.device_id}" if cert.device_id else f"service/{cert.service}"


def _current(session: Session) -> list[Certificate]:
    statement = select(Certificate).where(Certificate.status == CertificateStatus.ACTIVE)
    return list(session.exec(statement).all())


def _expiring(current: list[Certificate], now: datetime,
              within: timedelta) -> Iterator[Finding]:
    for cert in current:
        if now < cert.not_after <= now + within:
            yield Finding("certificate-expiring", _owner(cert),
                          f"certificate {cert.serial} expires {cert.not_after.isoformat()}",
                          needs_action=True, at=cert.not_after)


def _overdue(session: Session, current: list[Certificate], now: datetime,
             fraction: float) -> Iterator[Finding]:
    devices = {d.id: d for d in session.exec(
        select(Device).where(Device.status == DeviceStatus.ACTIVE)).all()}
    for cert in current:
        device = devices.get(cert.device_id or "")
        if device is None or cert.not_after <= now:
            continue
        renew_at = cert.not_before + (cert.not_after - cert.not_before) * fraction
        if now >= renew_at:
            history = "renewed before" if cert.replaces else "never renewed"
            yield Finding("renewal-overdue", f"device/{device.id}",
                          f"certificate {cert.serial} was due for renewal at "
                          f"{renew_at.isoformat()} ({history})", needs_action=True, at=renew_at)


def _presented(session: Session, since: datetime, grace: timedelta) -> Iterator[Finding]:
    refusals = session.exec(
        select(AuditEvent)
        .where(col(AuditEvent.action).in_(PRESENTING_ACTIONS), AuditEvent.outcome == "refused",
               col(AuditEvent.serial).is_not(None), AuditEvent.at >= since)
        .order_by(col(AuditEvent.id))).all()
    by_serial: dict[str, list[AuditEvent]] = {}
    for event in refusals:
        by_serial.setdefault(event.serial or "", []).append(event)
    if not by_serial:
        return
    certs = session.exec(select(Certificate).where(
        col(Certificate.serial).in_(list(by_serial)))).all()
    for cert in certs:
        events = by_serial[cert.serial]
        last = events[-1]
        if cert.status == CertificateStatus.REVOKED:
            kind, state = "revoked-certificate-presented", (
                f"revoked ({cert.revocation_reason or 'unspecified'})")
        elif (cert.status == CertificateStatus.SUPERSEDED and cert.superseded_at is not None
              and last.at >= cert.superseded_at + grace):
            kind, state = "superseded-certificate-presented", "superseded past its grace"
        else:
            continue
        places = sorted({e.action for e in events})
        yield Finding(kind, _owner(cert),
                      f"certificate {cert.serial}, {state}, was presented {len(events)} times "
                      f"to {', '.join(places)}; last refusal: {last.reason}",
                      needs_action=True, at=last.at)


def _shared(session: Session, since: datetime) -> Iterator[Finding]:
    events = session.exec(
        select(AuditEvent)
        .where(AuditEvent.action == SHARED_ACTION, col(AuditEvent.serial).is_not(None),
               AuditEvent.at >= since)
        .order_by(col(AuditEvent.id))).all()
    seen: dict[tuple[str, str], list[tuple[AuditEvent, dict[str, str]]]] = {}
    for event in events:
        detail = {k: str(v) for k, v in json.loads(event.detail or "{}").items()}
        key = (("certificate-shared", event.serial or "")
               if detail.get("other_serial") == event.serial
               else ("client-id-shared", detail.get("client_id", "")))
        seen.setdefault(key, []).append((event, detail))
    owners = {cert.serial: _owner(cert) for cert in session.exec(select(Certificate).where(
        col(Certificate.serial).in_({e.serial for found in seen.values() for e, _ in found})
    )).all()}
    for (kind, held), found in seen.items():
        addresses = ", ".join(sorted({d.get(key, "?") for _, d in found
                                      for key in ("address", "other_address")}))
        serials = sorted({s for e, d in found for s in (e.serial or "", d.get("other_serial"))
                          if s})
        what = (f"certificate {held}" if kind == "certificate-shared" else
                f"client id {held} (certificates {', '.join(serials)})")
        last = found[-1][0]
        times = f"{len(found)} time{'s' if len(found) != 1 else ''}"
        yield Finding(kind, owners.get(last.serial or "", f"certificate/{last.serial}"),
                      f"{what} connected from {addresses} at once, {times}",
                      needs_action=True, at=last.at)


def _suspended(session: Session) -> Iterator[Finding]:
    for device in session.exec(select(Device).where(
            Device.status == DeviceStatus.SUSPENDED).order_by(col(Device.id))).all():
        reason = f": {device.status_reason}" if device.status_reason else ""
        yield Finding("device-suspended", f"device/{device.id}",
                      f"suspended since {device.updated_at.isoformat()}{reason}",
                      needs_action=False, at=device.updated_at)


def _tokens(session: Session, now: datetime, within: timedelta) -> Iterator[Finding]:
    live = session.exec(select(BootstrapToken).where(*_live_tokens(now))).all()
    unused: dict[str, int] = {}
    for token in live:
        if token.uses_left == token.max_uses:
            unused[token.group] = unused.get(token.group, 0) + 1
            if token.expires_at <= now + within:
                yield Finding("token-expiring-unused", f"token/{token.id}",
                              f"token {token.id} of group {token.group} expires "
                              f"{token.expires_at.isoformat()} unused", needs_action=False,
                              at=token.expires_at)
    for group, count in sorted(unused.items()):
        yield Finding("tokens-unused", f"group/{group}",
                      f"{count} live token{'s' if count != 1 else ''} not used yet",
                      needs_action=False)
