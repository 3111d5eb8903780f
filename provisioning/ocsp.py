"""OCSP over HTTP (RFC 6960 appendix A, RFC 5019 sections 5 and 6): ``POST /ocsp`` with an
``application/ocsp-request`` body, or ``GET /ocsp/<request>`` with the DER request in
base64 (or base64url), URL-encoded. Public: no authentication, the EST service's bounds.

The answer is always an ``application/ocsp-response`` (fleet.authority.ocsp decides it):
a request that cannot be read (wrong media type, not base64, not an OCSP request) gets
malformedRequest, an unreachable registry tryLater with Retry-After, a CA that cannot be
read internalError. Only a body over est.max_body_bytes, or one too slow, is refused in
HTTP as on every EST endpoint.

A response to a request without a nonce is cacheable (RFC 5019 6.2): ``Cache-Control:
max-age`` up to its nextUpdate, ``Expires``, ``Last-Modified`` (its thisUpdate) and an
``ETag`` (SHA-1 of the response); a GET with a matching ``If-None-Match`` gets 304. Every
other response is ``no-store``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from datetime import datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING
from urllib.parse import unquote

from aiohttp import hdrs, web
from cryptography.x509 import ocsp

from fleet import pki
from fleet.authority import OcspAnswer
from fleet.errors import FleetError, RegistryUnavailableError
from provisioning.limits import read_body
from provisioning.refusals import REGISTRY_RETRY_AFTER, refusal, status_of

if TYPE_CHECKING:
    from provisioning.app import EstService

log = logging.getLogger("provisioning.ocsp")

OCSP_PATH = "/ocsp"
OCSP_REQUEST = "application/ocsp-request"
OCSP_RESPONSE = "application/ocsp-response"


class OcspResponder:
    """The two routes, on the EST service's authority, thread pool and body limits."""

    def __init__(self, service: EstService) -> None:
        self.service = service
        self.authority = service.authority

    def routes(self) -> list[web.RouteDef]:
        return [web.post(OCSP_PATH, self.post), web.get(OCSP_PATH + "/{request:.*}", self.get)]

    async def post(self, request: web.Request) -> web.Response:
        media_type = (request.headers.get(hdrs.CONTENT_TYPE) or "").split(";", 1)[0]
        try:
            body = await read_body(request, self.service.body)
        except FleetError as error:
            log.info("ocsp refused with %d for %s: %s", status_of(error), request.remote or "-",
                     error.message)
            return refusal(error)
        if media_type.strip().lower() != OCSP_REQUEST:
            return self._malformed(f"Content-Type must be {OCSP_REQUEST}")
        return await self._answer(request, body)

    async def get(self, request: web.Request) -> web.Response:
        # The raw path: a decoded one may have lost what '/', '+' and '%2F' were.
        encoded = request.rel_url.raw_path[len(OCSP_PATH) + 1:]
        try:
            der = decode_get_request(encoded)
        except ValueError as exc:
            return self._malformed(str(exc))
        return await self._answer(request, der)

    async def _answer(self, request: web.Request, der: bytes) -> web.Response:
        try:
            answer = await self.service.call(self.authority.ocsp_answer, der)
        except RegistryUnavailableError as error:
            log.warning("ocsp answered tryLater: %s", error.message)
            return _response(ocsp.OCSPResponseStatus.TRY_LATER,
                             {"Retry-After": str(REGISTRY_RETRY_AFTER)})
        except FleetError as error:
            log.warning("ocsp answered internalError: %s", error.message)
            return _response(ocsp.OCSPResponseStatus.INTERNAL_ERROR)
        log.debug("ocsp %s for %s%s", answer.outcome, request.remote or "-",
                  f": {answer.detail}" if answer.detail else "")
        if answer.next_update is None or answer.this_update is None:
            return web.Response(body=answer.der, headers=_uncacheable())
        headers = self._cache_headers(answer, answer.this_update, answer.next_update)
        if request.method == hdrs.METH_GET and _matches(request, headers[hdrs.ETAG]):
            return web.Response(status=304, headers=headers)
        return web.Response(body=answer.der, headers=headers)

    def _cache_headers(self, answer: OcspAnswer, this_update: datetime,
                       next_update: datetime) -> dict[str, str]:
        max_age = max(0, int((next_update - self.authority.clock()).total_seconds()))
        return {
            hdrs.CONTENT_TYPE: OCSP_RESPONSE,
            hdrs.CACHE_CONTROL: f"max-age={max_age}, public, no-transform, must-revalidate",
            hdrs.EXPIRES: format_datetime(next_update, usegmt=True),
            hdrs.LAST_MODIFIED: format_datetime(this_update, usegmt=True),
            hdrs.ETAG: f'"{hashlib.sha1(answer.der).hexdigest()}"',  # noqa: S324 - RFC 5019 6.2
        }

    def _malformed(self, detail: str) -> web.Response:
        log.debug("ocsp malformedRequest: %s", detail)
        return _response(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)


def decode_get_request(encoded: str) -> bytes:
    """The DER request of a GET path segment: URL-decoded, then base64 (RFC 6960 A.1) or
    base64url, padded or not (what clients send in practice)."""
    text = unquote(encoded, errors="strict").strip()
    if not text:
        raise ValueError("no request after /ocsp/")
    text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the request is not base64: {exc}") from exc


def _response(status: ocsp.OCSPResponseStatus,
              headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=pki.unsuccessful_ocsp_response(status),
                        headers={**_uncacheable(), **(headers or {})})


def _uncacheable() -> dict[str, str]:
    return {hdrs.CONTENT_TYPE: OCSP_RESPONSE, hdrs.CACHE_CONTROL: "no-store"}


def _matches(request: web.Request, etag: str) -> bool:
    wanted = request.headers.get(hdrs.IF_NONE_MATCH, "")
    return any(tag.strip() in (etag, "*") for tag in wanted.split(","))
