"""Fleet errors as HTTP refusals: a status, the headers it needs and a plain-text reason."""

from __future__ import annotations

from aiohttp import web

from fleet.errors import (
    AuthenticationError,
    ConflictError,
    FleetError,
    ForbiddenError,
    NotFoundError,
    PKIError,
    RegistryUnavailableError,
)
from provisioning.auth import CHALLENGE
from provisioning.limits import (
    PayloadTooLargeError,
    RateLimitedError,
    RequestTimeoutError,
    ServerBusyError,
    UploadAbortedError,
)
from provisioning.wire import TEXT, UnsupportedMediaTypeError

REGISTRY_RETRY_AFTER = 5
BUSY_RETRY_AFTER = 1

# Most specific first: the first class an error is an instance of decides its status.
_STATUS: tuple[tuple[type[FleetError], int], ...] = (
    (PKIError, 400),  # CSRError, KeyPolicyError, IdentityError, ProfileError
    (UploadAbortedError, 400),  # nobody is left to read it
    (AuthenticationError, 401),
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (RequestTimeoutError, 408),
    (ConflictError, 409),
    (PayloadTooLargeError, 413),
    (UnsupportedMediaTypeError, 415),
    (RateLimitedError, 429),
    (RegistryUnavailableError, 503),
    (ServerBusyError, 503),
)


def status_of(error: FleetError) -> int:
    """The HTTP status of a refusal; anything unforeseen is a server error."""
    return next((status for kind, status in _STATUS if isinstance(error, kind)), 500)


def refusal(error: FleetError) -> web.Response:
    """The response for a refused request: status, reason body and required headers."""
    status = status_of(error)
    headers = {"Content-Type": TEXT}
    if status == 401:
        headers["WWW-Authenticate"] = CHALLENGE
    elif isinstance(error, RateLimitedError):
        headers["Retry-After"] = str(error.retry_after)
    elif isinstance(error, RegistryUnavailableError):
        headers["Retry-After"] = str(REGISTRY_RETRY_AFTER)
    elif isinstance(error, ServerBusyError):
        headers["Retry-After"] = str(BUSY_RETRY_AFTER)
    if isinstance(error, RegistryUnavailableError):
        message = "registry database unavailable; retry later"  # driver details stay in logs
    elif status >= 500 and not isinstance(error, ServerBusyError):
        message = "internal server error"
    else:
        message = error.message
    return web.Response(status=status, body=f"{message}\n".encode(), headers=headers)
