"""Who is asking: HTTP Basic/Bearer credentials and the TLS client certificate.

RFC 7030 3.2.3: the one-time enrollment secret travels as the Basic password (the username may
be the device id, or empty). ``Authorization: Bearer <token>`` is accepted as a convenience.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ssl

from cryptography import x509

from fleet.authority import TokenCredential
from fleet.errors import AuthenticationError
from fleet.tokens import claimed_token_id

REALM = "fleet"
CHALLENGE = f'Basic realm="{REALM}"'


class MissingCredentialsError(AuthenticationError):
    """The request carries no credential at all (the RFC 7030 challenge case)."""


def token_credential(authorization: str | None) -> TokenCredential:
    """The bootstrap token an ``Authorization`` header presents.

    Raises MissingCredentialsError without a header and AuthenticationError for a header
    that cannot be read or a Basic username with a token's shape; messages never echo what
    was sent.
    """
    if not authorization or not authorization.strip():
        raise MissingCredentialsError(
            "authentication required: send the bootstrap token as the HTTP Basic password "
            "(username = device id) or as a Bearer token")
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return TokenCredential(token=value)
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise AuthenticationError("malformed HTTP Basic credentials") from None
        username, colon, password = decoded.partition(":")
        if not colon:
            raise AuthenticationError("malformed HTTP Basic credentials (no ':')")
        if (pasted := claimed_token_id(username)) is not None:
            # ``curl -u "$TOKEN:"``: the username is never recorded, not even as a claim.
            raise AuthenticationError(
                "the HTTP Basic username holds a bootstrap token: send the token as the "
                "password and the device id (or nothing) as the username, "
                "e.g. curl -u \"DEVICE_ID:$TOKEN\"", token_id=pasted)
        return TokenCredential(token=password, username=username or None)
    raise AuthenticationError("unsupported Authorization scheme: use Basic or Bearer")


def _ssl_object(transport: asyncio.BaseTransport | None) -> ssl.SSLObject | ssl.SSLSocket | None:
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    return ssl_object if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket) else None


def peer_certificate(transport: asyncio.BaseTransport | None) -> x509.Certificate | None:
    """The client certificate the TLS handshake verified, if the client presented one.

    The server context verifies any presented certificate during the handshake against the
    fleet CA or a registered vendor's CA (provisioning.tls); the policy decides again which:
    a renewal verifies the signature with Fleet's issuing CA, the service hooks admit only a
    certificate the registry holds (by its SHA-256 fingerprint), and a manufacturer
    certificate is verified against its vendor's CAs.
    """
    ssl_object = _ssl_object(transport)
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return x509.load_der_x509_certificate(der) if der else None


def tls_unique(transport: asyncio.BaseTransport | None) -> bytes | None:
    """The session's tls-unique channel binding (RFC 5929 3) under TLS 1.2; None under TLS
    1.3, which defines none (RFC 8446 C.5): Python's ssl would hand back its Finished message,
    which binds nothing RFC 7030 3.5 can rely on, and offers no exporter (RFC 9266)."""
    ssl_object = _ssl_object(transport)
    if ssl_object is None or ssl_object.version() != "TLSv1.2":
        return None
    return ssl_object.get_channel_binding("tls-unique")


def missing_certificate() -> AuthenticationError:
    return MissingCredentialsError(
        "simplereenroll requires the TLS client certificate being renewed")


def token_id(credential: TokenCredential) -> str | None:
    """The public id a credential claims: the part of ``<id>.<secret>`` before the dot, when
    it has the form of a token id (its secret may be anything)."""
    return claimed_token_id(credential.token)
