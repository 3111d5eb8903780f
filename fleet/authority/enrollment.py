"""Enrollment with a bootstrap token (RFC 7030 simpleenroll)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session

from fleet import pki
from fleet.authority.core import (
    AuthorityCore,
    Issued,
    key_compromised,
    require_enrollable,
    valid_id_or_none,
)
from fleet.authority.tokens import check_token
from fleet.errors import FleetError, ForbiddenError, IdentityError, TokenError
from fleet.pki import Identity
from fleet.registry import certificates as certs_db
from fleet.registry import devices as devices_db
from fleet.registry import events as events_db
from fleet.registry import names as names_db
from fleet.registry import tokens as tokens_db
from fleet.registry.models import DeviceStatus
from fleet.tokens import claimed_token_id, parse_token


@dataclass(frozen=True, slots=True)
class TokenCredential:
    """What the EST edge extracted from HTTP Basic or Bearer authentication."""

    token: str
    username: str | None = None

    def __repr__(self) -> str:
        return f"TokenCredential(username={self.username!r}, token=***)"


class EnrollmentPolicy(AuthorityCore):
    """simpleenroll (RFC 7030): a bootstrap token authorizes a device's certificate."""

    def enroll(
        self, *, credential: TokenCredential, csr: bytes, actor: str,
        group: str | None = None,
    ) -> Issued:
        """simpleenroll: a bootstrap token authorizes the device named in the CSR.

        *group* is the group an EST label maps to; the token must belong to it.
        """
        device_id: str | None = credential.username or None
        try:
            presented = parse_token(credential.token)
            request = pki.inspect_csr(pki.load_csr(csr))
            if claimed_token_id(request.common_name or "") is not None:
                raise IdentityError("the CSR's CN holds a bootstrap token: put the device id "
                                    "in the CN and the token in the HTTP Basic password")
            device_id = request.common_name
            ident = Identity("device", pki.check_device_id(request.common_name))
            pki.check_requested_identity(request, ident, self.settings.trust_domain)
            if credential.username and credential.username != ident.name:
                raise IdentityError(
                    f"username {credential.username!r} does not match the CSR's "
                    f"CN={ident.name!r}", device_id=ident.name)
        except FleetError as error:  # nothing is verified before the token is checked
            self.refused_unverified("enroll", error, actor=actor,
                                    device_id=valid_id_or_none(device_id))
            raise

        def apply(session: Session) -> Issued:
            now = self.clock()
            spki = pki.spki_sha256(request.csr.public_key())
            facts = tokens_db.enrollment_facts(session=session, token_id=presented.token_id,
                                               spki_sha256=spki)
            token = check_token(facts, presented, now=now)
            if not token.group_declared:
                raise ForbiddenError(f"token {token.id} is for group {token.group!r}, which is "
                                     "not declared", token_id=token.id)
            if group is not None and token.group != group:
                raise TokenError(f"token is for group {token.group!r}, not {group!r}",
                                 token_id=token.id)
            if token.device_id is not None and token.device_id != ident.name:
                raise IdentityError(
                    f"token is bound to device {token.device_id!r}, the CSR names "
                    f"{ident.name!r}", token_id=token.id)
            device = devices_db.get_device(session=session, device_id=ident.name,
                                           for_update=True)
            if device is not None:
                require_enrollable(device)
                if token.device_id != device.id:
                    raise _already_registered(device.id)
            if not tokens_db.consume_token_use(session=session, token_id=token.id, now=now):
                raise TokenError("bootstrap token already used", token_id=token.id)
            superseded: list[str] = []
            if device is None:
                names_db.require_disjoint(session=session, identity=ident)
                # Another enrollment of the same new device may have committed meanwhile.
                device = devices_db.create_device_if_absent(
                    session=session, device_id=ident.name, group=token.group,
                    status=DeviceStatus.ACTIVE, now=now)
                if device is None:
                    raise _already_registered(ident.name)
            else:  # re-provisioning with a token bound to this device
                devices_db.set_device_status(session=session, device=device,
                                             status=DeviceStatus.ACTIVE, reason=None, now=now)
                superseded = certs_db.supersede_active(session=session, device_id=device.id,
                                                       now=now)
            if token.key_compromised:
                raise key_compromised(ident.name)
            cert = self._sign(ident, request.csr.public_key(),
                              self.settings.device_lifetime, now)
            row = self._record(session, cert, ident, now)
            for old in superseded:
                events_db.record_revocation(session=session, now=now, kind="superseded",
                                            serial=old, device_id=device.id)
            self.audit(session, action="enroll", outcome="ok", actor=actor, device_id=device.id,
                       serial=row.serial,
                       detail={"token_id": token.id, "group": device.group,
                               "key": request.key_name, "superseded": superseded})
            return Issued(cert, row)

        return self._apply("enroll", apply, actor=actor, device_id=ident.name)


def _already_registered(device_id: str) -> ForbiddenError:
    return ForbiddenError(
        f"device {device_id} is already registered; renew with its certificate "
        "(simplereenroll) or use a token bound to it", device_id=device_id)
