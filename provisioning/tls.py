"""The EST server's TLS context: one port for token enrollment and certificate renewal."""

from __future__ import annotations

import ssl

from fleet.ca import Paths
from fleet.errors import CAError
from fleet.settings import Settings


def server_context(settings: Settings) -> ssl.SSLContext:
    """TLS >= 1.2 with the server certificate; a client certificate is optional.

    A presented client certificate must chain to the fleet CA: a foreign, expired or otherwise
    unverifiable one fails in the handshake (RFC 7030 3.3.2), before any HTTP is exchanged.
    Without one the client can still enroll with a bootstrap token.
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
