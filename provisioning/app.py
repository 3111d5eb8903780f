"""The EST HTTP surface (RFC 7030): routes and handlers over ``fleet.authority``.

Policy lives in the authority; this module reads requests, applies the edge's own limits and
maps the outcome to HTTP. Refusals the edge decides itself (no credential, body too large or
too slow, wrong media type, rate limit, load shedding) are audited here; the authority audits
its own. Refusals without a verified identity (every simpleenroll refusal decided here, any
request shed for load) go to the authority's refusal digest, folded per source and interval;
those of a renewal with a TLS-verified certificate are recorded one by one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
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
from fleet.authority import Authority, Issued, serial_hex
from fleet.errors import (
    AuthenticationError,
    ConflictError,
    FleetError,
    InvalidTokenError,
    PKIError,
)
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
from provisioning.refusals import refusal, status_of

EST_ROOT = "/.well-known/est"
OPERATIONS = ("cacerts", "simpleenroll", "simplereenroll", "csrattrs")
ACTIONS = {"simpleenroll": "enroll", "simplereenroll": "reenroll"}
"""The audit action of each enrollment operation."""

log = logging.getLogger("provisioning")
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class EstService:
    """One process's EST service: the authority, its thread pool, limits and cached bodies.

    The authority must have a refusal digest: the refusals a stranger can provoke at will
    then cost no database write each.
    """

    def __init__(self, *, authority: Authority, executor: Executor,
                 metrics: Metrics | None = None) -> None:
        if authority.refusals is None:
            raise ValueError("the EST service needs an Authority with a RefusalDigest")
        settings = authority.settings
        self.authority = authority
        self.executor = executor
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
        """RFC 7030 4.2.1: a bootstrap token (Basic password or Bearer) authorizes the CSR.

        Failed authentications are throttled per source and token id, so neither another
        token nor a renewal from the same address is refused because of them.
        """
        group = self.group_of(request)
        source, actor = _source(request)
        key: AuthKey = (source, None)
        device_id: str | None = None
        try:
            credential = auth.token_credential(request.headers.get(hdrs.AUTHORIZATION))
            key = (source, auth.token_id(credential))
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

    async def simplereenroll(self, request: web.Request) -> web.Response:
        """RFC 7030 4.2.2: the verified TLS client certificate authorizes its own renewal."""
        self.group_of(request)
        source, actor = _source(request)
        certificate = auth.peer_certificate(request.transport)
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
            return await self.call(operation, actor=actor, **kwargs)
        except IntegrityError as exc:
            # Two first enrollments of one device id raced; the loser's transaction rolled back.
            error = ConflictError("a concurrent request changed this device; retry",
                                  detail=type(exc.orig).__name__)
            await self._audit_edge_refusal(action, error, actor)
            raise error from exc

    def _issued(self, operation: str, issued: Issued) -> web.Response:
        self.metrics.certificate_issued(operation)
        log.info("%s issued serial %s to %s", operation, issued.record.serial,
                 issued.record.device_id)
        return web.Response(body=wire.certs_only_body([issued.certificate]),
                            headers=wire.base64_headers(wire.CERTS_ONLY))

    # -- refusals ---------------------------------------------------------------------------

    async def _audit_edge_refusal(self, action: str, error: FleetError, actor: str,
                                  **subject: str | None) -> None:
        try:
            await self.call(self.authority.audit_refusal, action, error, actor=actor, **subject)
        except FleetError as failure:  # the refusal stands even when it cannot be recorded
            log.warning("could not audit a refused %s: %s", action, failure.message)

    def _refused(self, operation: str, error: FleetError, source: str | None = None, *,
                 failed: AuthKey | None = None, verified: bool = False) -> web.Response:
        """The refusal's response and log line; a failed authentication counts against
        *failed*. Without a verified identity the line is DEBUG (the refusal digest sums
        them up), but a timed-out or aborted request always gets its line."""
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
        log.log(level, "%s refused with %d for %s: %s", operation, status, source or "-",
                error.message)
        return refusal(error)

    @web.middleware
    async def observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Bound the requests in progress (in total and per source), answer unforeseen
        errors with 500, count outcomes."""
        started = time.perf_counter()
        operation = _operation(request.path)
        source, actor = _source(request)
        connection = request.protocol
        if isinstance(connection, EstConnection):
            connection.request_started()
        status = 500
        try:
            self.requests.enter(source)
        except ServerBusyError as error:
            if operation in ACTIONS:
                self.authority.refused_unverified(ACTIONS[operation], error, actor=actor)
            status = 503
            return self._refused(operation, error, source)
        else:
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            except Exception:
                log.exception("%s failed", operation)
                return web.Response(status=500, text="internal server error\n")
            finally:
                self.requests.leave(source)
        finally:
            if isinstance(connection, EstConnection):
                connection.request_finished()
            self.metrics.observe(operation, status, time.perf_counter() - started)


def build_app(service: EstService) -> web.Application:
    app = web.Application(middlewares=[service.observe], client_max_size=service.body.max_bytes)
    app.add_routes(service.routes())
    app.add_routes(EmqxHooks(service).routes())
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


def _device_id_or_none(value: str | None) -> str | None:
    return value if value and pki.DEVICE_ID_PATTERN.fullmatch(value) else None
