"""The broker's TLS server context: a client certificate from the fleet CA is required."""

from __future__ import annotations

import ssl

from cryptography import x509

from fleet.ca import Paths
from fleet.errors import CAError
from fleet.settings import Settings


def server_context(settings: Settings) -> ssl.SSLContext:
    """TLS >= 1.2, CERT_REQUIRED against the fleet chain, the fleet server certificate.

    No certificate, one from another CA, or an expired one fails in the handshake. Session
    tickets are off: every connection proves possession of its key in a full handshake.
    """
    paths = Paths.of(settings)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.num_tickets = 0
    try:
        context.load_verify_locations(cafile=str(paths.chain))
        context.load_cert_chain(str(paths.server_cert), str(paths.server_key))
    except (OSError, ssl.SSLError) as exc:
        raise CAError(f"cannot load the broker's TLS material from {settings.data_dir}: {exc}; "
                      "run `fleet init` first") from exc
    return context


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> x509.Certificate:
    """The certificate the peer presented on this connection (already verified by OpenSSL)."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise ssl.SSLError("no peer certificate on a CERT_REQUIRED connection")
    return x509.load_der_x509_certificate(der)
