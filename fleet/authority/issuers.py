"""The issuing CAs over time: rotation, overlap, retirement, and the root key kept offline.

``rotate_issuing`` makes a new issuing CA under the same root (fleet.ca); it signs every
certificate from then on. The one it replaces stays trusted, in its overlap: its devices
connect as before and move over at their next renewal (simplereenroll with a certificate of
the old CA returns one of the new CA). It is retired once none of its certificates is usable
any more, at the latest the longest device or service lifetime after the rotation; retiring
sooner needs *force* and revokes (cessationOfOperation) each certificate of it still usable,
so that live connections are dropped and those devices must enroll again with a token.
Retirement is always an operator's act, never automatic; ``issuing_report`` says when it is
due. Every operation is audited (ca.rotate, ca.retire, ca.export-root-key).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fleet import pki
from fleet.authority.core import AuthorityCore
from fleet.ca import (
    CA,
    Issuing,
    IssuingState,
    export_root_key,
    issuing_cas,
    load_root_key,
    retire_issuing,
    retiring_issuing,
    rotate_issuing,
)
from fleet.errors import ConflictError
from fleet.registry import certificates as certs_db
from fleet.registry import events as events_db
from fleet.registry.engine import session as new_session
from fleet.registry.engine import unavailable_as_error

RETIREMENT_REASON = "cessationOfOperation"
"""What certificates of an issuing CA retired before they expire are revoked for."""


@dataclass(frozen=True, slots=True)
class IssuingStatus:
    """An issuing CA and the certificates of it still usable."""

    issuing: Issuing
    usable: int
    """Unexpired certificates that are active, or superseded and still in their grace."""
    usable_until: datetime | None
    """When the last of them expires (None: there is none)."""

    @property
    def retirable(self) -> bool:
        return self.issuing.state is IssuingState.RETIRING and self.usable == 0


@dataclass(frozen=True, slots=True)
class Retirement:
    issuing: Issuing
    revoked: list[str]
    """Serials revoked because the CA was retired before they expired (with force)."""


class IssuingPolicy(AuthorityCore):
    """Rotate and retire issuing CAs; export the root key to keep it offline."""

    def issuing_report(self) -> list[IssuingStatus]:
        """Every issuing CA there has been (in use first, active first) with its usable
        certificates."""
        now = self.clock()
        after = now - self.settings.superseded_grace
        report = []
        with unavailable_as_error(), new_session(self.engine) as session:
            for issuing in issuing_cas(self.settings):
                usable, until = certs_db.usable_summary(
                    session=session, authority_key_id=issuing.key_id, now=now,
                    superseded_after=after)
                report.append(IssuingStatus(issuing, usable, until))
        return report

    def rotate_issuing(self, *, actor: str, root_key_file: Path | None = None,
                       root_key_passphrase: bytes | None = None) -> CA:
        """Make a new issuing CA under the root (whose key comes from *root_key_file* when it
        is kept offline) and make it the active one."""
        with self._audited("ca.rotate", actor=actor) as session:
            root_key = load_root_key(self.settings, path=root_key_file,
                                     passphrase=root_key_passphrase)
            previous = self.ca
            ca = rotate_issuing(self.settings, root_key=root_key, now=self.clock())
            self.audit(session, action="ca.rotate", outcome="ok", actor=actor, detail={
                "number": ca.number, "fingerprint_sha256": pki.fingerprint_sha256(ca.issuing),
                "not_after": ca.issuing.not_valid_after_utc.isoformat(),
                "replaces": previous.number,
                "replaces_fingerprint_sha256": pki.fingerprint_sha256(previous.issuing),
                "root_key": "offline" if root_key_file is not None else "data dir"})
        self._reload(ca)
        return ca

    def retire_issuing(self, *, actor: str, number: int | None = None,
                       force: bool = False) -> Retirement:
        """Retire issuing CA *number* (without one: the only one in its overlap); refused
        while certificates of it are usable, unless *force*, which revokes them."""
        with self._audited("ca.retire", actor=actor) as session:
            issuing = retiring_issuing(self.settings, number)
            now = self.clock()
            after = now - self.settings.superseded_grace
            usable, until = certs_db.usable_summary(
                session=session, authority_key_id=issuing.key_id, now=now,
                superseded_after=after)
            if usable and not force:
                assert until is not None
                raise ConflictError(
                    f"issuing CA {issuing.number} still has {usable} usable certificate(s), "
                    f"the last until {until.isoformat()}: devices move to the active issuing "
                    "CA at their next renewal; retire it once they have, or force it (the "
                    f"certificates are then revoked, {RETIREMENT_REASON}, and those devices "
                    "must enroll again with a token)")
            live = certs_db.usable_issued_by(session=session, authority_key_id=issuing.key_id,
                                             now=now, superseded_after=after)
            serials = [serial for serial, _ in live]
            certs_db.revoke_certificates(session=session, serials=serials,
                                         reason=RETIREMENT_REASON, now=now)
            for serial, device_id in live:
                events_db.record_revocation(session=session, now=now, kind="revoked",
                                            serial=serial, device_id=device_id)
            retired = retire_issuing(self.settings, issuing.number)
            self.audit(session, action="ca.retire", outcome="ok", actor=actor,
                       reason=RETIREMENT_REASON if serials else None, detail={
                           "number": issuing.number,
                           "fingerprint_sha256": pki.fingerprint_sha256(issuing.certificate),
                           "forced": force, "revoked": len(serials)})
        self._reload(None)
        return Retirement(retired, serials)

    def export_root_key(self, *, actor: str, out: Path, remove: bool, force: bool = False,
                        passphrase: bytes | None = None) -> None:
        """Write the root CA key to *out*; with *remove*, the data dir keeps no copy."""
        with self._audited("ca.export-root-key", actor=actor) as session:
            export_root_key(self.settings, out, remove=remove, force=force,
                            passphrase=passphrase)
            self.audit(session, action="ca.export-root-key", outcome="ok", actor=actor,
                       detail={"file": str(out), "removed_from_data_dir": remove,
                               "passphrase": "own" if passphrase is not None else "CA"})

    def _reload(self, ca: CA | None) -> None:
        """Sign and verify with the CAs on disk from now on."""
        self._ca = ca
        self._trust = ca
        self._crl_cache = None
