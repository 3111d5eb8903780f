"""TLS as a device does it: trust anchors from EST, client contexts, non-blocking handshakes.

``ssl.SSLContext.load_cert_chain`` reads files only; a simulated device that keeps its key in
memory hands it over through an anonymous memory file (Linux ``memfd``), falling back to a
private temporary file elsewhere. Device side: nothing from Fleet.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from device_sim.crypto import certificate_pem, fingerprint_sha256


class TrustError(Exception):
    """The CA certificates offered by a server are not the ones this device was built to trust."""


def pinned_trust_anchors(
    certificates: Sequence[x509.Certificate], *, pinned_root_sha256: str
) -> list[x509.Certificate]:
    """Accept */cacerts* only if it holds the pinned root and everything else chains to it.

    RFC 7030 4.1.1: a device that fetched the CA certificates over a provisionally trusted
    connection must check them out of band; a factory-provisioned device carries the root's
    SHA-256 fingerprint for that.
    """
    pin = pinned_root_sha256.lower().replace(":", "")
    roots = [c for c in certificates if fingerprint_sha256(c) == pin]
    if not roots:
        raise TrustError("the CA certificates offered do not include the pinned root "
                         f"(SHA-256 {pin[:16]}...)")
    root = roots[0]
    anchors = [root]
    for cert in certificates:
        if cert is root or fingerprint_sha256(cert) == pin:
            continue
        if cert.issuer != root.subject:
            raise TrustError(f"CA certificate {cert.subject.rfc4514_string()} is not issued "
                             "by the pinned root")
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise TrustError(f"CA certificate {cert.subject.rfc4514_string()} does not verify "
                             f"against the pinned root: {exc}") from exc
        anchors.append(cert)
    return anchors


def provisional_context() -> ssl.SSLContext:
    """For the one bootstrap request whose answer is checked against the pin afterwards."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def trust_context(anchors: Sequence[x509.Certificate]) -> ssl.SSLContext:
    """Verify the server (chain and host name) against *anchors* only, TLS 1.2 or newer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata="".join(certificate_pem(c) for c in anchors))
    return context


def client_context(
    anchors: Sequence[x509.Certificate], certificate: x509.Certificate, key_pem: bytes
) -> ssl.SSLContext:
    """A trust context that also presents *certificate* (mutual TLS)."""
    context = trust_context(anchors)
    load_client_certificate(context, certificate_pem(certificate).encode(), key_pem)
    return context


def load_client_certificate(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate and its key that exist only in memory into *context*."""
    blob = cert_pem + key_pem
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("fleet-sim-credential", os.MFD_CLOEXEC)
        try:
            os.write(fd, blob)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="fleet-sim-") as private:  # mode 0700
        path = Path(private) / "credential.pem"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(blob)
        context.load_cert_chain(str(path))


async def open_tls(
    host: str, port: int, context: ssl.SSLContext, *, timeout: float
) -> ssl.SSLSocket:
    """TCP connect and TLS handshake without blocking the event loop.

    Returns a non-blocking ``ssl.SSLSocket`` ready for a client library that expects one.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, kind, proto, _, address = infos[0]
    raw = socket.socket(family, kind, proto)
    raw.setblocking(False)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        async with asyncio.timeout(timeout):
            await loop.sock_connect(raw, address)
            sock = context.wrap_socket(raw, server_hostname=host,
                                       do_handshake_on_connect=False)
            try:
                await _handshake(loop, sock)
            except BaseException:
                sock.close()
                raise
    except BaseException:
        raw.close()
        raise
    return sock


async def _handshake(loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket) -> None:
    fd = sock.fileno()
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            await _ready(loop, fd, write=False)
        except ssl.SSLWantWriteError:
            await _ready(loop, fd, write=True)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    if write:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await waiter
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
