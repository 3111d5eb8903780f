"""The EST HTTP surface (RFC 7030): routes and handlers over ``fleet.authority``.

Policy lives in the authority; this module reads requests, applies the edge's own limits and
maps the outcome to HTTP. Refusals the edge decides itself (no credential, body too large or
too slow, wrong media type, rate limit, load shedding) are audited here; the authority audits
its own. Refusals without a verified identity (every simpleenroll refusal decided here, any
request shed for load) go to the authority's refusal digest, folded per source and interval;
those of a renewal with a TLS-verified certificate are recorded one by one.

Every request gets one log line with its outcome (fleet.logs fields: request id, method,
path, status, duration, source, the token id or certificate it presented, the serial issued
or the refusal's reason; never a token's secret) at INFO, DEBUG for refusals without a
verified identity (the refusal digest sums those up), WARNING for server errors; the request
id is also sent back as ``X-Request-ID``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import TypeVar

from aiohttp import hdrs, web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy.exc import IntegrityError

from fleet import pki
from fleet.audit import actor_of
from fleet.authority import Authority, Issued, ManufacturerCredential, serial_hex
from fleet.errors import (
    AuthenticationError,
    ConflictError,
    FleetError,
    IdentityError,
    InvalidTokenError,
    ManufacturerCertificateError,
    PKIError,
)
from fleet.logs import fields
from provisioning import auth, wire
from provisioning.connections import EstConnection
from provisioning.emqx import EmqxHooks
from provisioning.limits import (
    AuthKey,
    BodyLimits,
    FailedAuthLimiter,
    Occupancy,
    RequestTimeoutError,
    ServerBusyError,
    UploadAbortedError,
    read_body,
)
from provisioning.metrics import Metrics
from provisioning.ocsp import OCSP_PATH, OcspResponder
from provisioning.rabbitmq import RabbitmqHooks
from provisioning.refusals import refusal, status_of

EST_ROOT = "/.well-known/est"
OPERATIONS = ("cacerts", "simpleenroll", "simplereenroll", "csrattrs")
ACTIONS = {"simpleenroll": "enroll", "simplereenroll": "reenroll"}
"""The audit action of each enrollment operation."""

REQUEST_ID = "X-Request-ID"
SUBJECT = web.RequestKey("fleet.subject", dict[str, str | None])
"""The fields naming who asked: the token id, or the certificate's identity and serial."""
OUTCOME = web.ResponseKey("fleet.outcome", dict[str, str | None])
"""The fields of a response's outcome: the serial issued, or the refusal's reason."""
LEVEL = web.ResponseKey("fleet.level", int)
"""The level of the request's log line, when not INFO."""

log = logging.getLogger("provisioning")
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class EstService:
    """One process's EST service: the authority, its thread pool, limits and cached bodies.

    The authority must have a refusal digest: the refusals a stranger can provoke at will
    then cost no database write each.
    """

    def __init__(self, *, authority: Authority, executor: Executor,
                 enrollments: Executor | None = None, metrics: Metrics | None = None) -> None:
        if authority.refusals is None:
            raise ValueError("the EST service needs an Authority with a RefusalDigest")
        settings = authority.settings
        self.authority = authority
        self.executor = executor
        self.enrollments = enrollments or executor
        self.metrics = metrics or Metrics()
        self.labels = dict(settings.est_labels)
        self.body = BodyLimits(max_bytes=settings.est_max_body_bytes,
                               timeout=settings.est_body_timeout.total_seconds(),
                               min_rate=settings.est_body_min_rate)
        self.limiter = FailedAuthLimiter(settings.est_auth_failures_per_minute)
        self.requests = Occupancy(total=settings.est_max_concurrent_requests,
                                  per_source=settings.est_max_requests_per_source,
                                  what="requests in progress")
        # Built once: the CA chain and the CSR attributes do not change while running.
        self.cacerts_body = wire.certs_only_body(list(authority.ca.chain))
        self.csrattrs_body = wire.encode_body(wire.csr_attributes())
        self._crl: dict[int | None, tuple[x509.CertificateRevocationList, bytes]] = {}

    async def call(self, function: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        """Run a blocking registry call in the bounded thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor,
                                          functools.partial(function, *args, **kwargs))

    # -- routing ----------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        handlers: dict[str, tuple[str, Handler]] = {
            "cacerts": (hdrs.METH_GET, self.cacerts),
            "csrattrs": (hdrs.METH_GET, self.csrattrs),
            "simpleenroll": (hdrs.METH_POST, self.simpleenroll),
            "simplereenroll": (hdrs.METH_POST, self.simplereenroll),
        }
        table = []
        for operation, (method, handler) in handlers.items():
            for prefix in (EST_ROOT, EST_ROOT + "/{label}"):
                table.append(web.route(method, f"{prefix}/{operation}", handler))
        table += [web.get("/crl", self.crl), web.get("/crl/{number:[1-9][0-9]{0,8}}", self.crl),
                  web.get("/healthz", self.healthz)]
        return table

    def group_of(self, request: web.Request) -> str | None:
        """The group an EST label selects (None without a label); unknown labels are 404."""
        label = request.match_info.get("label")
        if label is None:
            return None
        group = self.labels.get(label)
        if group is None:
            raise web.HTTPNotFound(text=f"unknown EST label {label[:64]!r}\n")
        return group

    # -- distribution endpoints -------------------------------------------------------------

    async def cacerts(self, request: web.Request) -> web.Response:
        self.group_of(request)
        return web.Response(body=self.cacerts_body, headers=wire.base64_headers(wire.PKCS7_MIME))

    async def csrattrs(self, request: web.Request) -> web.Response:
        self.group_of(request)
        return web.Response(body=self.csrattrs_body, headers=wire.base64_headers(wire.CSRATTRS))

    async def crl(self, request: web.Request) -> web.Response:
        """``/crl/<n>``: the CRL of issuing CA n, the distribution point its certificates
        name; ``/crl``: of the oldest issuing CA in use (fleet.authority.crl)."""
        number = int(request.match_info["number"]) if "number" in request.match_info else None
        try:
            current = await self.call(self.authority.current_crl, number)
        except FleetError as error:
            return self._refused("crl", error)
        cached = self._crl.get(number)
        if cached is None or cached[0] is not current:
            cached = self._crl[number] = (current, current.public_bytes(Encoding.DER))
        return web.Response(body=cached[1], headers={"Content-Type": wire.PKIX_CRL})

    async def healthz(self, _request: web.Request) -> web.Response:
        try:
            await self.call(self.authority.last_revocation_id)
        except FleetError as error:
            return self._refused("healthz", error)
        return web.Response(text="ok\n")

    # -- enrollment -------------------------------------------------------------------------

    async def simpleenroll(self, request: web.Request) -> web.Response:
        """RFC 7030 4.2.1: a bootstrap token (Basic password or Bearer) authorizes the CSR;
        without an Authorization header, a manufacturer certificate presented in the TLS
        handshake does (fleet.authority.manufacturer).

        Failed authentications are throttled per source and token id, so neither another
        token nor a renewal from the same address is refused because of them.
        """
        group = self.group_of(request)
        source, actor = _source(request)
        certificate = auth.peer_certificate(request.transport)
        if certificate is not None and not request.headers.get(hdrs.AUTHORIZATION):
            return await self._enroll_manufacturer(request, certificate, group)
        key: AuthKey = (source, None)
        device_id: str | None = None
        try:
            credential = auth.token_credential(request.headers.get(hdrs.AUTHORIZATION))
            key = (source, auth.token_id(credential))
            request[SUBJECT] = {"token_id": key[1]}
            device_id = _device_id_or_none(credential.username)
            self.limiter.check(key)
            csr = await self._csr(request)
        except FleetError as error:
            self.authority.refused_unverified("enroll", error, actor=actor, device_id=device_id)
            return self._refused("simpleenroll", error, source, failed=key)
        try:
            issued = await self._issue("enroll", self.authority.enroll, actor,
                                       credential=credential, csr=csr, group=group)
        except FleetError as error:
            # The authority checks the CSR, then the token's secret: other refusals come
            # from a caller holding a real token (used, expired, of another group...).
            return self._refused("simpleenroll", error, source, failed=key,
                                 verified=not isinstance(error, InvalidTokenError | PKIError))
        return self._issued("simpleenroll", issued)

    async def _enroll_manufacturer(self, request: web.Request, certificate: x509.Certificate,
                                   group: str | None) -> web.Response:
        """RFC 7030 3.3.2: simpleenroll authenticated by the TLS client certificate alone, a
        manufacturer certificate (IDevID) a registered vendor vouches for. Failures to verify
        it are throttled per source like bad tokens."""
        source, actor = _source(request)
        key: AuthKey = (source, None)
        request[SUBJECT] = self._presented(certificate)
        try:
            self.limiter.check(key)
            csr = await self._csr(request)
        except FleetError as error:
            self.authority.refused_unverified("enroll", error, actor=actor)
            return self._refused("simpleenroll", error, source, failed=key)
        credential = ManufacturerCredential(certificate, auth.tls_unique(request.transport))
        try:
            issued = await self._issue("enroll", self.authority.enroll_manufacturer, actor,
                                       credential=credential, csr=csr, group=group)
        except FleetError as error:
            return self._refused("simpleenroll", error, source, failed=key,
                                 verified=not isinstance(error, ManufacturerCertificateError))
        return self._issued("simpleenroll", issued)

    async def simplereenroll(self, request: web.Request) -> web.Response:
        """RFC 7030 4.2.2: the verified TLS client certificate authorizes its own renewal."""
        self.group_of(request)
        source, actor = _source(request)
        certificate = auth.peer_certificate(request.transport)
        if certificate is not None:
            request[SUBJECT] = self._presented(certificate)
        if certificate is None:
            error: FleetError = auth.missing_certificate()
            self.authority.refused_unverified("reenroll", error, actor=actor)
            return self._refused("simplereenroll", error, source)
        try:
            csr = await self._csr(request)
        except FleetError as error:
            await self._audit_edge_refusal("reenroll", error, actor,
                                           serial=serial_hex(certificate.serial_number))
            return self._refused("simplereenroll", error, source, verified=True)
        try:
            issued = await self._issue("reenroll", self.authority.reenroll, actor,
                                       client_certificate=certificate, csr=csr)
        except FleetError as error:
            return self._refused("simplereenroll", error, source, verified=True)
        return self._issued("simplereenroll", issued)

    async def _csr(self, request: web.Request) -> bytes:
        wire.check_media_type(request.headers.get(hdrs.CONTENT_TYPE))
        return wire.decode_csr_body(await read_body(request, self.body))

    async def _issue(self, action: str, operation: Callable[..., Issued], actor: str,
                     **kwargs: object) -> Issued:
        try:
            # In a thread of its own: with group commit, it waits there for its shared commit.
            return await asyncio.get_running_loop().run_in_executor(
                self.enrollments, functools.partial(operation, actor=actor, **kwargs))
        except IntegrityError as exc:
            # Two first enrollments of one device id raced; the loser's transaction rolled back.
            error = ConflictError("a concurrent request changed this device; retry",
                                  detail=type(exc.orig).__name__)
            await self._audit_edge_refusal(action, error, actor)
            raise error from exc

    def _presented(self, certificate: x509.Certificate) -> dict[str, str | None]:
        presented: dict[str, str | None] = {"serial": serial_hex(certificate.serial_number)}
        try:
            identity = pki.identity_from_certificate(certificate,
                                                     self.authority.settings.trust_domain)
        except IdentityError:
            return presented
        return {"identity": str(identity), **presented}

    def _issued(self, operation: str, issued: Issued) -> web.Response:
        response = web.Response(body=wire.certs_only_body([issued.certificate]),
                                headers=wire.base64_headers(wire.CERTS_ONLY))
        response[OUTCOME] = {"issued": issued.record.serial,
                             "device_id": issued.record.device_id}
        return response

    # -- refusals ---------------------------------------------------------------------------

    async def _audit_edge_refusal(self, action: str, error: FleetError, actor: str,
                                  **subject: str | None) -> None:
        try:
            await self.call(self.authority.audit_refusal, action, error, actor=actor, **subject)
        except FleetError as failure:  # the refusal stands even when it cannot be recorded
            log.warning("could not audit a refused %s: %s", action, failure.message)

    def _refused(self, operation: str, error: FleetError, source: str | None = None, *,
                 failed: AuthKey | None = None, verified: bool = False) -> web.Response:
        """The refusal's response, with the reason and level of its request's log line; a
        failed authentication counts against *failed*. Without a verified identity the line
        is DEBUG (the refusal digest sums them up), but a timed-out or aborted request always
        gets its line."""
        status = status_of(error)
        if (failed is not None and isinstance(error, AuthenticationError)
                and not isinstance(error, auth.MissingCredentialsError)):
            self.limiter.record_failure(failed)
        if status >= 500 and not isinstance(error, ServerBusyError):
            level = logging.WARNING
        elif verified or isinstance(error, RequestTimeoutError | UploadAbortedError):
            level = logging.INFO
        else:
            level = logging.DEBUG
        response = refusal(error)
        outcome: dict[str, str | None] = {"reason": error.message}
        response[OUTCOME] = outcome
        response[LEVEL] = level
        return response

    @web.middleware
    async def observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Bound the requests in progress (in total and per source), answer unforeseen
        errors with 500, count outcomes, log each request's outcome."""
        started = time.perf_counter()
        request_id = secrets.token_hex(8)
        operation = _operation(request.path)
        source, actor = _source(request)
        connection = request.protocol
        if isinstance(connection, EstConnection):
            connection.request_started()
        status = 500
        response: web.StreamResponse | None = None
        try:
            self.requests.enter(source)
        except ServerBusyError as error:
            if operation in ACTIONS:
                self.authority.refused_unverified(ACTIONS[operation], error, actor=actor)
            response = self._refused(operation, error, source)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                status = exc.status
                exc.headers[REQUEST_ID] = request_id
                raise
            except Exception:
                log.exception("%s failed", operation, extra=fields(request_id=request_id))
                response = web.Response(status=500, text="internal server error\n")
            finally:
                self.requests.leave(source)
        finally:
            if isinstance(connection, EstConnection):
                connection.request_finished()
            seconds = time.perf_counter() - started
            if response is not None:
                status = response.status
                response.headers[REQUEST_ID] = request_id
            self.metrics.observe(operation, status, seconds)
            outcome = response.get(OUTCOME, {}) if response is not None else {}
            level = response.get(LEVEL, logging.WARNING if status >= 500 else logging.INFO) \
                if response is not None else logging.INFO
            log.log(level, _outcome_line(operation, request, status, source, outcome),
                    extra=fields(
                        request_id=request_id, method=request.method, path=request.path,
                        status=status, duration_ms=round(seconds * 1000, 3), source=source,
                        operation=operation, **request.get(SUBJECT, {}), **outcome))
        assert response is not None  # an HTTPException was raised again above
        return response


def build_app(service: EstService) -> web.Application:
    app = web.Application(middlewares=[service.observe], client_max_size=service.body.max_bytes)
    app.add_routes(service.routes())
    app.add_routes(EmqxHooks(service).routes())
    app.add_routes(RabbitmqHooks(service).routes())
    app.add_routes(OcspResponder(service).routes())
    return app


def _source(request: web.Request) -> tuple[str, str]:
    source = request.remote or "unknown"
    return source, actor_of("est", source)


def _operation(path: str) -> str:
    if path.startswith("/crl/"):
        return "crl"
    if path == OCSP_PATH or path.startswith(OCSP_PATH + "/"):
        return "ocsp"
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return last if last in (*OPERATIONS, "crl", "healthz") else "other"


def _outcome_line(operation: str, request: web.Request, status: int, source: str,
                  outcome: dict[str, str | None]) -> str:
    if "reason" in outcome:
        return f"{operation} refused with {status} for {source}: {outcome['reason']}"
    if "issued" in outcome:
        return f"{operation} issued serial {outcome['issued']} to {outcome['device_id']}"
    return f"{request.method} {request.path} {status}"


def _device_id_or_none(value: str | None) -> str | None:
    return value if value and pki.DEVICE_ID_PATTERN.fullmatch(value) else None
