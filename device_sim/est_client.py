"""An EST client (RFC 7030, wire details per RFC 8951) for simulated devices, on aiohttp.

Bodies are base64 of DER both ways. Every request opens its own TLS connection, the way a
device that enrolls once and renews weeks later does; callers bound the concurrency. Device
side: nothing from Fleet.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Sequence

import aiohttp
from cryptography import x509

from device_sim.crypto import certs_only

WELL_KNOWN = "/.well-known/est"
PKCS7_MIME = "application/pkcs7-mime"
PKCS10 = "application/pkcs10"


class ESTError(Exception):
    """An EST request that did not produce what was asked for."""

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class ESTRefused(ESTError):
    """The server answered and said no (4xx other than 429): asking again will not help."""


class ESTHandshakeRefused(ESTError):
    """The TLS handshake failed: the server did not accept the certificate presented."""


class ESTUnavailable(ESTError):
    """Try again later: 202, 429, 5xx, a timeout or a refused connection."""


class ESTClient:
    """The four operations a device needs, against one EST server (and optional CA label)."""

    def __init__(self, base_url: str, *, session: aiohttp.ClientSession,
                 label: str | None = None, timeout: float = 30.0) -> None:
        if not base_url.startswith("https://"):
            raise ValueError(f"EST needs an https:// URL, got {base_url!r}")
        segment = f"/{label}" if label else ""
        self.base = f"{base_url.rstrip('/')}{WELL_KNOWN}{segment}"
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def cacerts(self, *, context: ssl.SSLContext) -> list[x509.Certificate]:
        """``GET /cacerts``: the CA certificates (checking them is the caller's job)."""
        body = await self._request("GET", "cacerts", context=context)
        return _certificates(body)

    async def simpleenroll(self, csr_der: bytes, *, context: ssl.SSLContext,
                           username: str | None = None,
                           password: str | None = None) -> x509.Certificate:
        """``POST /simpleenroll`` authorized by HTTP Basic (device id, bootstrap token), or
        without credentials by the manufacturer certificate *context* presents in the TLS
        handshake (RFC 7030 3.3.2)."""
        authorization = (None if username is None
                         else basic_authorization(username, password or ""))
        body = await self._request("POST", "simpleenroll", context=context, csr_der=csr_der,
                                   authorization=authorization,
                                   client_certificate=authorization is None)
        return _one_certificate(body)

    async def simplereenroll(self, csr_der: bytes, *,
                             context: ssl.SSLContext) -> x509.Certificate:
        """``POST /simplereenroll`` over TLS authenticated by the certificate being renewed."""
        body = await self._request("POST", "simplereenroll", context=context, csr_der=csr_der,
                                   client_certificate=True)
        return _one_certificate(body)

    async def _request(self, method: str, operation: str, *, context: ssl.SSLContext,
                       csr_der: bytes | None = None, authorization: str | None = None,
                       client_certificate: bool = False) -> bytes:
        headers = {}
        data = None
        if csr_der is not None:
            headers = {"Content-Type": PKCS10, "Content-Transfer-Encoding": "base64"}
            data = base64.b64encode(csr_der)
        if authorization is not None:
            headers["Authorization"] = authorization
        url = f"{self.base}/{operation}"
        try:
            async with self.session.request(method, url, data=data, headers=headers,
                                            ssl=context, timeout=self.timeout) as response:
                body = await response.read()
                _raise_for_status(operation, response, body)
                kind = response.headers.get("Content-Type", "")
                if not kind.startswith(PKCS7_MIME):
                    raise ESTError(f"{operation}: expected {PKCS7_MIME}, got {kind or 'none'}",
                                   status=response.status)
                return body
        except aiohttp.ClientConnectorCertificateError as exc:
            raise ESTError(f"{operation}: the server certificate is not trusted: "
                           f"{exc.certificate_error}") from exc
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            raise ESTHandshakeRefused(f"{operation}: TLS handshake refused: {exc}") from exc
        except aiohttp.ClientConnectorError as exc:  # no connection: the OS says why
            raise ESTUnavailable(f"{operation}: cannot connect: {exc.os_error}") from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # With TLS 1.3 the server judges the client certificate after the client finished
            # its side of the handshake: a refusal is an alert on the first read or, from
            # servers that do not flush the alert, a connection closed without any answer.
            if _ssl_cause(exc) is not None:
                raise ESTHandshakeRefused(
                    f"{operation}: TLS handshake refused: {_ssl_cause(exc)}") from exc
            if client_certificate and isinstance(exc, _CLOSED_WITHOUT_ANSWER):
                raise ESTHandshakeRefused(
                    f"{operation}: connection closed without an answer (the server refused "
                    f"the client certificate): {type(exc).__name__}") from exc
            raise ESTUnavailable(f"{operation}: {type(exc).__name__}: {exc}") from exc


def basic_authorization(username: str, password: str) -> str:
    """RFC 7617 credentials: the device id as user name, the bootstrap token as password."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


_CLOSED_WITHOUT_ANSWER = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                          ConnectionResetError)


def _raise_for_status(operation: str, response: aiohttp.ClientResponse, body: bytes) -> None:
    status = response.status
    if status == 200:
        return
    reason = body[:300].decode("utf-8", "replace").strip() or response.reason or ""
    message = f"{operation}: HTTP {status} {reason}".rstrip()
    if status == 202 or status == 429 or status >= 500:
        raise ESTUnavailable(message, status=status,
                             retry_after=_retry_after(response.headers.get("Retry-After")))
    raise ESTRefused(message, status=status)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is treated as "unspecified")."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _certificates(body: bytes) -> list[x509.Certificate]:
    try:
        return certs_only(body)
    except ValueError as exc:
        raise ESTError(f"unreadable PKCS#7 response: {exc}") from exc


def _one_certificate(body: bytes) -> x509.Certificate:
    """RFC 7030 4.2.3: the enrollment response carries the issued certificate only."""
    certificates: Sequence[x509.Certificate] = _certificates(body)
    if len(certificates) != 1:
        raise ESTError(f"expected one certificate in the enrollment response, got "
                       f"{len(certificates)}")
    return certificates[0]
