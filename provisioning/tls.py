"""The EST server's TLS context: one port for token enrollment, certificate renewal and
enrollment with a manufacturer certificate."""

from __future__ import annotations

import ssl
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fleet import pki
from fleet.ca import Paths
from fleet.errors import CAError
from fleet.settings import Settings


def server_context(settings: Settings) -> ssl.SSLContext:
    """TLS >= 1.2 with the server certificate; a client certificate is optional.

    A presented client certificate must chain to the fleet CA or to a registered vendor's CA
    (VendorTrust): a foreign, expired or otherwise unverifiable one fails in the handshake
    (RFC 7030 3.3.2), before any HTTP is exchanged. Without one the client can still enroll
    with a bootstrap token.
    """
    paths = Paths.of(settings)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(paths.server_cert, paths.server_key)
        context.load_verify_locations(cafile=paths.chain)
    except (OSError, ssl.SSLError) as exc:
        raise CAError(f"cannot load the EST server certificate or CA chain from "
                      f"{settings.data_dir}: {exc}; run `fleet init` first") from exc
    context.verify_mode = ssl.CERT_OPTIONAL
    # Devices open one connection per enrollment and rarely resume sessions.
    context.num_tickets = 0
    return context


class VendorTrust:
    """The registered vendors' CA certificates join the EST handshake's trust store, for
    the handshake only: which CA a client certificate chains to is decided again by the
    policy (a manufacturer certificate only enrolls; renewal and the service hooks verify
    against Fleet's CA). Certificates are added as vendors are registered; a removed vendor's
    stay in the store until the service restarts and are refused by the policy."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.loaded: set[str] = set()

    def add(self, certificates: Iterable[x509.Certificate]) -> int:
        """Trust the certificates not trusted yet; how many were new."""
        added = 0
        for certificate in certificates:
            fingerprint = pki.fingerprint_sha256(certificate)
            if fingerprint not in self.loaded:
                self.context.load_verify_locations(
                    cadata=certificate.public_bytes(Encoding.PEM).decode("ascii"))
                self.loaded.add(fingerprint)
                added += 1
        return added
