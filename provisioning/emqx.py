"""EMQX 5's HTTP authentication and authorization contract, answered from Fleet's registry and
topic policy (fleet.integrations.emqx writes the EMQX side).

``POST /emqx/authn`` (at every CONNECT) and ``POST /emqx/authz`` (a PUBLISH or SUBSCRIBE)
take JSON objects of the strings EMQX fills in from its placeholders and answer 200 with
``{"result": "allow" | "deny"}``; an allowed authentication also carries ``is_superuser``
(never true), the identity's ACL rules and ``expire_at`` (Unix seconds: the soonest end of
use of its admitted certificates). Decisions are fleet.authority.named's: the identity is the
certificate CN EMQX passes (its user name, which EMQX takes from the CN, in authorization),
the client id must be the identity's, the device must be active and a certificate of it
admitted, and the topic must be granted by the policy.

Only a Fleet *service* may ask: the request must come over TLS with an active service
certificate. No certificate is 401, a device's certificate 403, both decided before the
registry is asked. A request EMQX could not have built (not JSON, a missing field) is 400
with the reason. Such refusals, and denials, are folded into the refusal digest (per source,
or per identity and topic), never one audit row per request. An unreachable registry is 503
(EMQX then treats the answer as ``ignore``, and the exported configuration has no other
authenticator and denies what no authorizer matches).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web

from fleet import pki
from fleet.acl import PolicyError, load_policy
from fleet.audit import actor_of
from fleet.authority.core import valid_id_or_none
from fleet.authority.named import NamedAdmission, admit_named
from fleet.errors import (
    AuthenticationError,
    FleetError,
    ForbiddenError,
    RegistryUnavailableError,
)
from fleet.integrations.emqx import AUTHN_PATH, AUTHZ_PATH, acl_rules
from provisioning import auth
from provisioning.limits import read_body
from provisioning.refusals import REGISTRY_RETRY_AFTER, refusal
from provisioning.wire import TEXT

if TYPE_CHECKING:
    from provisioning.app import EstService

log = logging.getLogger("provisioning.emqx")

EDGE = "emqx"
JSON = "application/json"
ACTIONS = ("publish", "subscribe")
OPTIONAL = ("username", "cert_subject", "peerhost", "qos", "retain")


class MalformedRequestError(FleetError):
    """A request EMQX's templates could not have produced (400)."""


class EmqxHooks:
    """The two endpoints, on the EST service's authority, thread pool and body limits."""

    def __init__(self, service: EstService) -> None:
        self.service = service
        self.authority = service.authority
        self._policy_error: str | None = None
        try:
            self.policy = load_policy(self.authority.settings.acl_file)
        except PolicyError as exc:  # EST works without it; these endpoints refuse
            self._policy_error = str(exc)
            log.warning("EMQX endpoints disabled: %s", exc)

    def routes(self) -> list[web.RouteDef]:
        return [web.post(AUTHN_PATH, self.authn), web.post(AUTHZ_PATH, self.authz)]

    async def authn(self, request: web.Request) -> web.Response:
        refused = await self._refuse_caller(request, "emqx.authn")
        if refused is not None:
            return refused
        try:
            body = await self._body(request, ("clientid", "cert_common_name"))
            common_name = body["cert_common_name"]
            username = body.get("username", common_name)
            if common_name and username not in (common_name, ""):
                raise MalformedRequestError(
                    f"username {username[:80]!r} is not the certificate CN {common_name[:80]!r}: "
                    "set mqtt.peer_cert_as_username = cn in EMQX")
        except FleetError as error:
            return self._malformed(request, "emqx.authn", error)
        subject = body.get("cert_subject") or None
        try:
            admitted = await self.service.call(
                admit_named, self.authority, common_name=common_name,
                client_id=body["clientid"], policy=self.policy, subject=subject)
        except FleetError as error:
            return self._denied("emqx.connect", error, common_name)
        log.debug("EMQX CONNECT of %s as %r allowed", admitted.identity, body["clientid"])
        return _answer({"result": "allow", "is_superuser": False,
                        "expire_at": int(admitted.usable_until.timestamp()),
                        "acl": acl_rules(admitted.grants)})

    async def authz(self, request: web.Request) -> web.Response:
        refused = await self._refuse_caller(request, "emqx.authz")
        if refused is not None:
            return refused
        try:
            body = await self._body(request, ("clientid", "username", "action", "topic"))
            action, topic = body["action"], body["topic"]
            if action not in ACTIONS:
                raise MalformedRequestError(f"action {action[:40]!r} is neither publish nor "
                                            "subscribe")
            _check_qos(body.get("qos"))
            _check_retain(body.get("retain"))
        except FleetError as error:
            return self._malformed(request, "emqx.authz", error)
        name = body["username"]
        try:
            admitted: NamedAdmission = await self.service.call(
                admit_named, self.authority, common_name=name, client_id=body["clientid"],
                policy=self.policy)
            allowed = (admitted.grants.may_publish(topic) if action == "publish"
                       else admitted.grants.may_subscribe(topic))
            if not allowed:
                raise ForbiddenError(f"{admitted.identity} may not {action} {topic!r}")
        except FleetError as error:
            return self._denied(f"emqx.{action}", error, name, topic=topic)
        return _answer({"result": "allow"})

    # -- the caller -------------------------------------------------------------------------

    async def _refuse_caller(self, request: web.Request, action: str) -> web.Response | None:
        """None when the request comes with an admitted service certificate; else the
        refusal (401 without a certificate, 403 for any other, 503 without the registry)."""
        if self._policy_error is not None:
            return _text(503, f"the topic policy cannot be used: {self._policy_error}")
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
            await self.service.call(self.authority.admit, certificate=certificate,
                                    chain_verified=True)
        except RegistryUnavailableError as exc:
            return self._unavailable(exc)
        except FleetError as exc:
            return self._refused_caller(request, action, exc, 403)
        return None

    def _refused_caller(self, request: web.Request, action: str, error: FleetError,
                        status: int) -> web.Response:
        self.authority.refused_unverified(action, error, actor=_actor(request))
        log.debug("%s refused with %d for %s: %s", action, status, request.remote, error)
        return _text(status, error.message)

    # -- the request ------------------------------------------------------------------------

    async def _body(self, request: web.Request, required: tuple[str, ...]) -> dict[str, Any]:
        media_type = (request.headers.get(hdrs.CONTENT_TYPE) or "").split(";")[0].strip()
        if media_type.lower() != JSON:
            raise MalformedRequestError(f"Content-Type must be {JSON}, not "
                                        f"{media_type[:60] or 'none'!r}")
        raw = await read_body(request, self.service.body)
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MalformedRequestError(f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise MalformedRequestError("the body must be a JSON object")
        missing = [name for name in required if name not in body]
        if missing:
            raise MalformedRequestError(f"missing field(s): {', '.join(missing)}")
        fields = {key: value for key, value in body.items() if key in (*required, *OPTIONAL)}
        wrong = sorted(key for key, value in fields.items()
                       if not isinstance(value, str) and key not in ("qos", "retain"))
        if wrong:
            raise MalformedRequestError(f"field(s) {', '.join(wrong)} must be strings")
        return fields

    def _malformed(self, request: web.Request, action: str, error: FleetError) -> web.Response:
        """400 for a body the contract does not allow; a body too large or too slow keeps
        the status the EST endpoints give it."""
        self.authority.refused_unverified(action, error, actor=_actor(request))
        log.debug("%s refused for %s: %s", action, request.remote, error.message)
        if isinstance(error, MalformedRequestError):
            return _text(400, error.message)
        return refusal(error)

    # -- the answers ------------------------------------------------------------------------

    def _denied(self, action: str, error: FleetError, name: str, *,
                topic: str | None = None) -> web.Response:
        if isinstance(error, RegistryUnavailableError):
            return self._unavailable(error)
        refusals = self.authority.refusals
        assert refusals is not None
        who = valid_id_or_none(name) or "unknown"
        refusals.add(action, actor=actor_of(EDGE, who),
                     reason=f"{type(error).__name__}: {error.message}", subject=topic,
                     **({"topic": topic} if topic is not None else {}))
        log.debug("%s denied for %s: %s", action, who, error.message)
        return _answer({"result": "deny"})

    def _unavailable(self, error: FleetError) -> web.Response:
        log.warning("EMQX request not decided: %s", error.message)
        response = _text(503, "registry database unavailable; retry later")
        response.headers["Retry-After"] = str(REGISTRY_RETRY_AFTER)
        return response


def _check_qos(value: object) -> None:
    if value is None:
        return
    if str(value) not in ("0", "1", "2"):
        raise MalformedRequestError(f"qos {str(value)[:20]!r} is not 0, 1 or 2")


def _check_retain(value: object) -> None:
    if value is None or value in (True, False) or value in ("true", "false"):
        return
    raise MalformedRequestError(f"retain {str(value)[:20]!r} is neither true nor false")


def _actor(request: web.Request) -> str:
    return actor_of(EDGE, request.remote or "unknown")


def _answer(body: Mapping[str, object]) -> web.Response:
    return web.Response(text=json.dumps(body), content_type=JSON)


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=f"{message}\n".encode(),
                        headers={"Content-Type": TEXT})

