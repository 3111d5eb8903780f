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
from typing import Any

from aiohttp import hdrs, web

from fleet.authority.named import NamedAdmission, admit_named
from fleet.errors import FleetError, ForbiddenError, RegistryUnavailableError
from fleet.integrations.emqx import AUTHN_PATH, AUTHZ_PATH, acl_rules
from provisioning.limits import read_body
from provisioning.service_hooks import MalformedRequestError, ServiceHooks

log = logging.getLogger("provisioning.emqx")

JSON = "application/json"
ACTIONS = ("publish", "subscribe")
OPTIONAL = ("username", "cert_subject", "peerhost", "qos", "retain")


class EmqxHooks(ServiceHooks):
    """The two endpoints, on the EST service's authority, thread pool and body limits."""

    edge = "emqx"

    def routes(self) -> list[web.RouteDef]:
        return [web.post(AUTHN_PATH, self.authn), web.post(AUTHZ_PATH, self.authz)]

    async def authn(self, request: web.Request) -> web.Response:
        refused = await self.refuse_caller(request, "emqx.authn")
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
            return self.malformed(request, "emqx.authn", error)
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
        refused = await self.refuse_caller(request, "emqx.authz")
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
            return self.malformed(request, "emqx.authz", error)
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

    # -- the answers ------------------------------------------------------------------------

    def _denied(self, action: str, error: FleetError, name: str, *,
                topic: str | None = None) -> web.Response:
        if isinstance(error, RegistryUnavailableError):
            return self.unavailable(error)
        self.record_denial(action, error, name, topic=topic)
        return _answer({"result": "deny"})


def _check_qos(value: object) -> None:
    if value is None:
        return
    if str(value) not in ("0", "1", "2"):
        raise MalformedRequestError(f"qos {str(value)[:20]!r} is not 0, 1 or 2")


def _check_retain(value: object) -> None:
    if value is None or value in (True, False) or value in ("true", "false"):
        return
    raise MalformedRequestError(f"retain {str(value)[:20]!r} is neither true nor false")


def _answer(body: Mapping[str, object]) -> web.Response:
    return web.Response(text=json.dumps(body), content_type=JSON)

