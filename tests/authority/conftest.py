"""A harness over the authority (both databases) with a movable clock and refusal checks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from pki.x509_factory import AnyKey, device_csr, new_key
from sqlalchemy import text
from sqlmodel import Session

from fleet.authority import Authority, Issued, TokenCredential
from fleet.registry import AuditEvent, BootstrapToken, Certificate, Device, utcnow
from fleet.registry import certificates as certs_db
from fleet.registry import events as events_db
from fleet.registry import tokens as tokens_db

STATE_TABLES = ("device_groups", "devices", "certificates", "bootstrap_tokens", "revocation_events",
                "crl_state", "vendors", "vendor_allowed_ids", "manufacturer_certificates")


class Clock:
    """The authority's notion of now, moved by tests."""

    def __init__(self) -> None:
        self.now = utcnow().replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Fleet:
    """The authority under test plus the facts a test wants to check afterwards."""

    authority: Authority
    clock: Clock
    secrets: list[str] = field(default_factory=list)
    keys: dict[str, AnyKey] = field(default_factory=dict)

    # -- acting ---------------------------------------------------------------------------

    def token(self, group: str = "sensors", device_id: str | None = None, **kwargs: Any) -> str:
        self.authority.ensure_group(name=group, actor="operator")
        issued = self.authority.create_tokens(group=group, device_id=device_id, actor="factory",
                                              **kwargs)
        self.secrets += [t.token.secret for t in issued]
        return str(issued[0].token)

    def csr(self, device_id: str, key: AnyKey | None = None, **kwargs: Any) -> bytes:
        key = key or self.keys.get(device_id) or new_key()
        self.keys.setdefault(device_id, key)
        return device_csr(device_id, key, **kwargs)

    def enroll(self, device_id: str = "dev-1", token: str | None = None, *,
               username: str | None = None, group: str | None = None,
               csr: bytes | None = None, key: AnyKey | None = None) -> Issued:
        return self.authority.enroll(
            credential=TokenCredential(self.token() if token is None else token, username),
            csr=csr if csr is not None else self.csr(device_id, key), actor="est", group=group)

    def reenroll(self, cert: x509.Certificate, *, csr: bytes | None = None,
                 key: AnyKey | None = None) -> Issued:
        device_id = str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
        return self.authority.reenroll(
            client_certificate=cert, csr=csr if csr is not None else self.csr(device_id, key),
            actor="est")

    # -- looking --------------------------------------------------------------------------

    def session(self) -> Session:
        return Session(self.authority.engine, expire_on_commit=False)

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every state table (not the audit log)."""
        with self.authority.engine.connect() as connection:
            return {table: [tuple(row) for row in connection.execute(
                text(f"SELECT * FROM {table} ORDER BY 1"))] for table in STATE_TABLES}

    def audit(self) -> list[AuditEvent]:
        with self.session() as session:
            return list(events_db.list_audit(session=session))

    def device(self, device_id: str) -> Device | None:
        with self.session() as session:
            return session.get(Device, device_id)

    def certificate(self, serial: str) -> Certificate | None:
        with self.session() as session:
            return session.get(Certificate, serial)

    def certificates(self, device_id: str | None = None) -> list[Certificate]:
        with self.session() as session:
            return list(certs_db.list_certificates(session=session, device_id=device_id))

    def tokens(self) -> list[BootstrapToken]:
        with self.session() as session:
            return list(tokens_db.list_tokens(session=session))

    def assert_no_secret_in_audit(self) -> None:
        for event in self.audit():
            blob = " ".join(str(v) for v in (event.actor, event.reason, event.detail,
                                             event.device_id, event.serial))
            for secret in self.secrets:
                assert secret not in blob, f"token secret in audit event {event.id}"

    @contextmanager
    def refused(self, error: type[Exception], action: str,
                match: str | None = None) -> Iterator[pytest.ExceptionInfo[Exception]]:
        """Expect *error*; afterwards nothing but one 'refused' audit event may have changed."""
        before, audit_before = self.snapshot(), len(self.audit())
        with pytest.raises(error, match=match) as info:
            yield info
        assert self.snapshot() == before, "a refusal changed the registry"
        new = self.audit()[audit_before:]
        assert [(e.action, e.outcome) for e in new] == [(action, "refused")], new
        assert new[0].reason is not None
        assert type(info.value).__name__ in new[0].reason
        self.assert_no_secret_in_audit()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fleet(authority: Authority, clock: Clock) -> Fleet:
    """The authority fixture (SQLite and PostgreSQL) driven by a test clock, with the group
    ``sensors`` declared."""
    authority = Authority(settings=authority.settings, engine=authority.engine,
                          ca=authority.ca, clock=clock)
    authority.create_group(name="sensors", actor="operator")
    return Fleet(authority, clock)
