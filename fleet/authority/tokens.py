"""Bootstrap tokens: creation, revocation and the check that authorizes an enrollment."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row

from fleet import pki
from fleet.authority.core import AuthorityCore
from fleet.authority.groups import require_group
from fleet.errors import (
    ConflictError,
    DeviceNotActiveError,
    InvalidTokenError,
    NotFoundError,
    TokenError,
)
from fleet.pki import Identity
from fleet.registry import devices as devices_db
from fleet.registry import names as names_db
from fleet.registry import tokens as tokens_db
from fleet.registry.models import BootstrapToken, DeviceStatus
from fleet.tokens import TOKEN_ID_PATTERN, TokenSecret, new_token, secret_matches

MAX_TOKENS_PER_CALL = 100_000


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly created token; ``token`` is the only copy of the secret."""

    row: BootstrapToken
    token: TokenSecret


class TokenPolicy(AuthorityCore):
    """Bootstrap tokens: minted for a group or a device, revoked by operators."""

    def create_tokens(
        self, *, group: str, actor: str, device_id: str | None = None, count: int = 1,
        uses: int | None = None, ttl: timedelta | None = None,
    ) -> list[IssuedToken]:
        """Mint *count* tokens for *group*; a device-bound token pre-registers the device."""
        with self._audited("token.create", actor=actor, device_id=device_id) as session:
            require_group(session, group, lock="share")
            if device_id is not None:
                pki.check_device_id(device_id)
                if count != 1:
                    raise ConflictError("a token bound to a device is created one at a time")
            if not 1 <= count <= MAX_TOKENS_PER_CALL:
                raise ConflictError(f"count must be 1..{MAX_TOKENS_PER_CALL}, got {count}")
            uses = self.settings.token_uses if uses is None else uses
            if uses < 1:
                raise ConflictError(f"uses must be at least 1, got {uses}")
            ttl = self.settings.token_ttl if ttl is None else ttl
            if ttl <= timedelta(0):
                raise ConflictError(f"ttl must be positive, got {ttl}")
            now = self.clock()
            if device_id is not None:
                existing = devices_db.get_device(session=session, device_id=device_id)
                if existing is None:
                    names_db.require_disjoint(session=session,
                                              identity=Identity("device", device_id))
                    devices_db.create_device(session=session, device_id=device_id, group=group,
                                             status=DeviceStatus.PENDING, now=now)
                elif existing.status == DeviceStatus.REVOKED:
                    raise DeviceNotActiveError(f"device {device_id} is revoked",
                                               device_id=device_id)
                elif existing.group != group:
                    raise ConflictError(f"device {device_id} is in group {existing.group!r}, "
                                        f"not {group!r}", device_id=device_id)
            issued = []
            for _ in range(count):
                secret = new_token()
                row = BootstrapToken(
                    id=secret.token_id, secret_hash=secret.secret_hash, group=group,
                    device_id=device_id, uses_left=uses, max_uses=uses,
                    expires_at=now + ttl, created_at=now, created_by=actor,
                )
                issued.append(IssuedToken(row=row, token=secret))
            tokens_db.add_tokens(session=session, tokens=[t.row for t in issued])
            self.audit(session, action="token.create", outcome="ok", actor=actor,
                       device_id=device_id,
                       detail={"group": group, "count": count, "uses": uses,
                               "ttl_seconds": int(ttl.total_seconds()),
                               "ids": [t.row.id for t in issued[:20]]})
        return issued

    def revoke_token(self, *, token_id: str, actor: str) -> BootstrapToken:
        with self._audited("token.revoke", actor=actor) as session:
            row = tokens_db.get_token(session=session, token_id=token_id) \
                if TOKEN_ID_PATTERN.fullmatch(token_id) else None
            if row is None:
                raise NotFoundError(f"unknown token {token_id!r}", token_id=token_id)
            if row.revoked_at is not None:
                raise ConflictError(f"token {token_id} is already revoked", token_id=token_id)
            now = self.clock()
            tokens_db.revoke_tokens(session=session, token_ids=[token_id], now=now)
            self.audit(session, action="token.revoke", outcome="ok", actor=actor,
                       device_id=row.device_id, detail={"token_id": token_id})
            row.revoked_at = now
        return row


def check_token(token: Row[Any] | None, presented: TokenSecret, *, now: datetime) -> Row[Any]:
    """The bootstrap token *presented*, whose row (tokens_db.enrollment_facts) is *token*,
    may authorize an enrollment now."""
    if token is None or not secret_matches(presented, token.secret_hash):
        raise InvalidTokenError("unknown or invalid bootstrap token",
                                token_id=presented.token_id,
                                reason="unknown" if token is None else "bad-secret")
    if token.revoked_at is not None:
        raise TokenError("bootstrap token has been revoked", token_id=token.id)
    if token.expires_at <= now:
        raise TokenError(f"bootstrap token expired at {token.expires_at.isoformat()}",
                         token_id=token.id)
    if token.uses_left <= 0:
        raise TokenError("bootstrap token already used", token_id=token.id)
    return token
