"""Bootstrap token secrets: format, generation and constant-time checking.

A token as a device presents it is ``<id>.<secret>``: the id is public (listed, revoked and
audited by it), the secret is shown once at creation and only its SHA-256 is stored. Secrets
carry 192 bits of entropy, so a plain hash is enough (no password stretching needed).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from fleet.errors import InvalidTokenError

TOKEN_ID_PATTERN = re.compile(r"[a-f0-9]{16}")
"""A token's public id, as :func:`new_token` makes them."""
_TOKEN = re.compile(rf"^({TOKEN_ID_PATTERN.pattern})\.([A-Za-z0-9_-]{{32}})$")


@dataclass(frozen=True, slots=True)
class TokenSecret:
    token_id: str
    secret: str

    def __str__(self) -> str:
        return f"{self.token_id}.{self.secret}"

    def __repr__(self) -> str:  # never print the secret by accident
        return f"TokenSecret(token_id={self.token_id!r}, secret=***)"

    @property
    def secret_hash(self) -> str:
        return hash_secret(self.secret)


def new_token() -> TokenSecret:
    return TokenSecret(secrets.token_hex(8), secrets.token_urlsafe(24))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(presented: str) -> TokenSecret:
    """Split a presented token; a malformed one is refused like an unknown one."""
    match = _TOKEN.fullmatch(presented.strip())
    if not match:
        raise InvalidTokenError("unknown or invalid bootstrap token", reason="malformed")
    return TokenSecret(match.group(1), match.group(2))


def claimed_token_id(presented: str) -> str | None:
    """The public id a presented token claims (the part before the dot), when it has the form
    of one, whatever its secret looks like."""
    claimed, dot, _ = presented.strip().partition(".")
    return claimed if dot and TOKEN_ID_PATTERN.fullmatch(claimed) else None


def secret_matches(presented: TokenSecret, stored_hash: str) -> bool:
    return hmac.compare_digest(presented.secret_hash, stored_hash)
