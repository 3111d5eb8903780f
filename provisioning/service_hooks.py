"""What the endpoints other brokers ask share (provisioning.emqx, provisioning.rabbitmq):
only a Fleet *service* may ask, decisions come from the topic policy, and refusals and
denials are folded into the refusal digest.

The request must come over TLS with an active service certificate: no certificate is 401, a
device's certificate (or a revoked service's) 403, both decided before the registry is asked
about the request itself. A request the broker could not have built is 400 with the reason.
Such refusals, and denials, go to the refusal digest (per source, or per identity and
topic), never one audit row per request. An unreachable registry is 503 with Retry-After.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from fleet import pki
from fleet.acl import Policy, PolicyError, load_policy
from fleet.audit import actor_of
from fleet.authority.core import valid_id_or_none
from fleet.errors import (
    AuthenticationError,
    FleetError,
    ForbiddenError,
    RegistryUnavailableError,
)
from provisioning import auth
from provisioning.refusals import REGISTRY_RETRY_AFTER, refusal
from provisioning.wire import TEXT

if TYPE_CHECKING:
    from provisioning.app import EstService

log = logging.getLogger("provisioning.hooks")


class MalformedRequestError(FleetError):
    """A request the broker's contract could not have produced (400)."""


class ServiceHooks:
    """Endpoints for one broker (*edge* names it in audit actors and logs)."""

    edge = "hooks"

    def __init__(self, service: EstService) -> None:
        self.service = service
        self.authority = service.authority
        self._policy_error: str | None = None
        self.policy = Policy(roles={})
        try:
            self.policy = load_policy(self.authority.settings.acl_file)
        except PolicyError as exc:  # EST works without it; these endpoints refuse
            self._policy_error = str(exc)
            log.warning("%s endpoints disabled: %s", self.edge, exc)

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    # -- the caller -------------------------------------------------------------------------

    async def refuse_caller(self, request: web.Request, action: str) -> web.Response | None:
        """None when the request comes with an admitted service certificate; else the
        refusal (401 without a certificate, 403 for any other, 503 without the registry)."""
        if self._policy_error is not None:
            return text_response(503, f"the topic policy cannot be used: {self._policy_error}")
        certificate = auth.peer_certificate(request.transport)
        error: FleetError
        if certificate is None:
            error = AuthenticationError("a Fleet service certificate is required (mutual TLS)")
            return self._refused_caller(request, action, error, 401)
        try:
            identity = pki.identity_from_certificate(certificate,
                                                     self.authority.settings.trust_domain)
            if identity.kind != "service":
                raise ForbiddenError(f"{identity} is not a service: only a Fleet service "
                                     "certificate may ask")
            # The EST listener also accepts manufacturer (vendor) chains in its handshake,
            # so the handshake does not prove a fleet signature: admission checks it.
            await self.service.call(self.authority.admit, certificate=certificate)
        except RegistryUnavailableError as exc:
            return self.unavailable(exc)
        except FleetError as exc:
            return self._refused_caller(request, action, exc, 403)
        return None

    def _refused_caller(self, request: web.Request, action: str, error: FleetError,
                        status: int) -> web.Response:
        self.authority.refused_unverified(action, error, actor=self.actor(request))
        log.debug("%s refused with %d for %s: %s", action, status, request.remote, error)
        return text_response(status, error.message)

    def actor(self, request: web.Request) -> str:
        return actor_of(self.edge, request.remote or "unknown")

    # -- the answers ------------------------------------------------------------------------

    def malformed(self, request: web.Request, action: str,
                  error: FleetError) -> web.Response:
        """400 for a request the contract does not allow; a body too large or too slow keeps
        the status the EST endpoints give it."""
        self.authority.refused_unverified(action, error, actor=self.actor(request))
        log.debug("%s refused for %s: %s", action, request.remote, error.message)
        if isinstance(error, MalformedRequestError):
            return text_response(400, error.message)
        return refusal(error)

    def record_denial(self, action: str, error: FleetError, name: str, *,
                      topic: str | None = None) -> None:
        """Fold a denial of *name* (and *topic*) into the refusal digest."""
        refusals = self.authority.refusals
        assert refusals is not None
        who = valid_id_or_none(name) or "unknown"
        refusals.add(action, actor=actor_of(self.edge, who),
                     reason=f"{type(error).__name__}: {error.message}", subject=topic,
                     **({"topic": topic} if topic is not None else {}))
        log.debug("%s denied for %s: %s", action, who, error.message)

    def unavailable(self, error: FleetError) -> web.Response:
        log.warning("%s request not decided: %s", self.edge, error.message)
        response = text_response(503, "registry database unavailable; retry later")
        response.headers["Retry-After"] = str(REGISTRY_RETRY_AFTER)
        return response


def text_response(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=f"{message}\n".encode(),
                        headers={"Content-Type": TEXT})
