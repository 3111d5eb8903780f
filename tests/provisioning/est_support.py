"""Helpers for the EST tests: a blocking HTTPS client, CSRs, and the service in a thread."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from fleet import eventloop, pki
from fleet.audit import RefusalDigest
from fleet.authority import Authority, IssuedToken, TokenCredential
from fleet.ca import CA, Paths
from fleet.errors import RegistryUnavailableError
from fleet.registry import make_engine, migrate, utcnow
from fleet.registry.engine import session as new_session
from fleet.registry.models import AuditEvent, BootstrapToken, Certificate, Device
from fleet.settings import Settings, load_settings
from provisioning.server import RunningServer, start

EST = "/.well-known/est"
PKCS10 = {"Content-Type": "application/pkcs10"}


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def certificates(self) -> list[x509.Certificate]:
        """The certificates of a base64 certs-only PKCS#7 body."""
        return pki.load_certs_only(pki.decode_base64(self.body))


@dataclass
class Enrolled:
    """A device's key and its current certificate, with PEM files for TLS clients."""

    device_id: str
    key: pki.PrivateKey
    certificate: x509.Certificate
    directory: Path

    @property
    def key_file(self) -> Path:
        path = self.directory / f"{self.device_id}.key"
        path.write_bytes(pki.private_key_pem(self.key))
        return path

    @property
    def cert_file(self) -> Path:
        serial = format(self.certificate.serial_number, "x")
        path = self.directory / f"{self.device_id}-{serial}.pem"
        path.write_text(pki.certificate_pem(self.certificate))
        return path


@dataclass
class Est:
    """A running EST service and the registry behind it."""

    settings: Settings
    authority: Authority
    port: int
    metrics_port: int | None
    tmp: Path
    engine: Engine
    digest: RefusalDigest
    """The service's digest of refusals without a verified identity."""

    @property
    def ca_file(self) -> Path:
        return Paths.of(self.settings).root

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}{EST}"

    def context(self, device: Enrolled | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if device is not None:
            context.load_cert_chain(device.cert_file, device.key_file)
        return context

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, *, device: Enrolled | None = None,
                source: str | None = None) -> Reply:
        connection = http.client.HTTPSConnection(
            "localhost", self.port, context=self.context(device), timeout=30,
            source_address=(source, 0) if source else None)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            connection.close()

    def tls_socket(self, source: str | None = None) -> ssl.SSLSocket:
        """A TLS connection to the service (from *source* when given), for hand-made requests."""
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=30,
                                       source_address=(source, 0) if source else None)
        return self.context().wrap_socket(raw, server_hostname="localhost")

    def get(self, path: str, **kwargs: object) -> Reply:
        return self.request("GET", path, **kwargs)  # type: ignore[arg-type]

    def enroll(self, csr: bytes, token: str | None = None, *, username: str = "",
               bearer: bool = False, path: str = f"{EST}/simpleenroll",
               headers: dict[str, str] | None = None, source: str | None = None,
               encode: bool = True) -> Reply:
        sent = dict(PKCS10 if headers is None else headers)
        if token is not None:
            sent["Authorization"] = (f"Bearer {token}" if bearer else
                                     "Basic " + base64.b64encode(
                                         f"{username}:{token}".encode()).decode())
        body = b64(csr) if encode else csr
        return self.request("POST", path, body, sent, source=source)

    def reenroll(self, csr: bytes, device: Enrolled | None, *,
                 path: str = f"{EST}/simplereenroll", source: str | None = None) -> Reply:
        return self.request("POST", path, b64(csr), dict(PKCS10), device=device,
                            source=source)

    # -- registry set-up and inspection (through the authority, as operators would) --------

    def token(self, group: str = "sensors", **kwargs: object) -> str:
        self.authority.ensure_group(name=group, actor="operator")
        issued: IssuedToken = self.authority.create_tokens(group=group, actor="test",
                                                           **kwargs)[0]  # type: ignore[arg-type]
        return str(issued.token)

    def device(self, device_id: str, key: pki.PrivateKey | None = None,
               group: str = "sensors") -> Enrolled:
        """A device enrolled directly through the authority (not over HTTP)."""
        key = key or pki.generate_private_key()
        issued = self.authority.enroll(credential=TokenCredential(self.token(group)),
                                       csr=make_csr(device_id, key), actor="test")
        return Enrolled(device_id, key, issued.certificate, self.tmp)

    def audit(self, action: str | None = None) -> list[AuditEvent]:
        with new_session(self.engine) as session:
            statement = select(AuditEvent).order_by(col(AuditEvent.id))
            if action:
                statement = statement.where(AuditEvent.action == action)
            return list(session.exec(statement).all())

    def refusals(self, action: str) -> list[AuditEvent]:
        return [e for e in self.audit(action) if e.outcome == "refused"]

    def record_refusals(self) -> None:
        """Record the aggregated refusals now, as the service does every interval."""
        aggregates = self.digest.drain()
        if aggregates:
            self.authority.record_refusals(aggregates)

    def snapshot(self) -> tuple[list[tuple[object, ...]], ...]:
        """Everything but the audit log, to show a refusal changed nothing."""
        with new_session(self.engine) as session:
            return (
                sorted((d.id, d.status, d.group) for d in session.exec(select(Device))),
                sorted((c.serial, c.status) for c in session.exec(select(Certificate))),
                sorted((t.id, t.uses_left, t.revoked_at)
                       for t in session.exec(select(BootstrapToken))),
            )


Request = tuple[int, str, bytes, dict[str, str], ssl.SSLContext]
"""A POST to send: (port, path, body, headers, TLS context)."""


def simultaneously(requests: Sequence[Request]) -> Counter[int]:
    """Open every TLS connection first, then send all requests at once: their statuses."""
    barrier = threading.Barrier(len(requests))
    statuses: list[int] = []
    errors: list[BaseException] = []

    def client(port: int, path: str, body: bytes, headers: dict[str, str],
               context: ssl.SSLContext) -> None:
        connection = http.client.HTTPSConnection("localhost", port, context=context,
                                                 timeout=60)
        try:
            connection.connect()  # the TLS handshake happens before the barrier
            barrier.wait(timeout=60)
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        except BaseException as exc:  # reported below, with the statuses
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=request) for request in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return Counter(statuses)


def closed_after(sock: socket.socket, *, limit: float) -> float | None:
    """Seconds until the server closes *sock* (reading and discarding what it sends), or None
    if it is still open after *limit* seconds."""
    started = time.monotonic()
    while (left := limit - (time.monotonic() - started)) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except TimeoutError:
            return None
        except OSError:  # reset, or TLS aborted without close_notify
            return time.monotonic() - started
    return None


def b64(der: bytes, *, width: int = 64, newline: bytes = b"\r\n") -> bytes:
    text = base64.b64encode(der)
    if not width:
        return text
    return newline.join(text[i:i + width] for i in range(0, len(text), width)) + newline


def make_csr(device_id: str, key: pki.PrivateKey | None = None, *,
             extensions: Sequence[x509.ExtensionType] = (),
             subject: x509.Name | None = None) -> bytes:
    """A DER PKCS#10 request for CN=*device_id*."""
    key = key or pki.generate_private_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


class ServerThread:
    """The service's own event loop in a thread, so tests can use blocking clients."""

    def __init__(self, settings: Settings) -> None:
        self.loop = eventloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="est-test-loop",
                                       daemon=True)
        self.thread.start()
        self.server = self.run(start(settings, host="127.0.0.1", port=0))

    def run(self, coroutine: object) -> RunningServer:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]
        return future.result(timeout=60)  # type: ignore[no-any-return]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


EstFactory = Callable[..., Est]


@pytest.fixture
def make_est(data_dir: Path, ca: CA, tmp_path: Path) -> Iterator[EstFactory]:
    """Start EST services: ``make_est(database_url=None, **FLEET_* variables)``."""
    running: list[tuple[ServerThread, Engine]] = []

    def factory(database_url: str | None = None, **env: str) -> Est:
        url = database_url or f"sqlite:///{data_dir / 'fleet.db'}"
        environ = {"FLEET_DATABASE_URL": url, "FLEET_EST_METRICS_PORT": "-1", **env}
        settings = load_settings(environ={"FLEET_DATA_DIR": str(data_dir), **environ})
        engine = make_engine(url, pool_size=5)
        authority = Authority(settings=settings, engine=engine, ca=ca)
        with contextlib.suppress(RegistryUnavailableError):  # a service without its database
            migrate(engine)
            for group in settings.est_labels.values():  # labels point at declared groups
                authority.ensure_group(name=group, actor="operator")
        thread = ServerThread(settings)
        running.append((thread, engine))
        return Est(settings=settings, authority=authority, port=thread.server.port,
                   metrics_port=thread.server.metrics_port, tmp=tmp_path, engine=engine,
                   digest=thread.server.refusals)

    yield factory
    for thread, engine in running:
        thread.stop()
        engine.dispose()


def past_authority(est: Est, days: float) -> Authority:
    """An authority whose clock runs *days* behind, to make expired tokens and certificates."""
    return Authority(settings=est.settings, engine=est.engine, ca=est.authority.ca,
                     clock=lambda: utcnow() - timedelta(days=days))


@dataclass(frozen=True)
class Baseline:
    """The registry and the count of audited refusals before a request."""

    state: tuple[list[tuple[object, ...]], ...]
    refusals: int
    action: str


def baseline(est: Est, action: str) -> Baseline:
    est.record_refusals()
    return Baseline(est.snapshot(), len(est.refusals(action)), action)


def expect_refusal(est: Est, reply: Reply, status: int, before: Baseline,
                   says: str | None = None) -> AuditEvent:
    """A refusal: the status, a plain-text reason, one audit event, and no other change."""
    assert reply.status == status, reply.text
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert reply.text.strip()
    if says is not None:
        assert says in reply.text, reply.text
    if status == 401:
        assert reply.headers["WWW-Authenticate"] == 'Basic realm="fleet"'
    assert est.snapshot() == before.state
    est.record_refusals()
    refusals = est.refusals(before.action)
    assert len(refusals) == before.refusals + 1, [r.reason for r in refusals]
    return refusals[-1]
