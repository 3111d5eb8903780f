"""RabbitMQ's HTTP auth backend contract (rabbitmq_auth_backend_http), answered from Fleet's
registry and topic policy (fleet.integrations.rabbitmq writes the RabbitMQ side).

RabbitMQ sends form fields (a POST body, or the query of a GET) to four paths and reads the
plain-text answer ``allow`` or ``deny`` (a 4xx or 5xx it treats as a refusal):

- ``user``: ``username`` (the certificate's CN, from ``mqtt.ssl_cert_login``), and
  ``password`` only when the client sent credentials of its own: such a login is denied, the
  name must come from the certificate.
- ``vhost``: ``username``, ``vhost``, ``ip``, and the MQTT ``client_id``, at every CONNECT.
- ``resource``: ``username``, ``vhost``, ``resource`` (exchange, queue), ``name``,
  ``permission`` (configure, write, read): the MQTT plugin's own (publishing to and binding
  on its exchange, the client's subscription queues); everything else is denied.
- ``topic``: ``username``, ``vhost``, ``name`` (the exchange), ``permission`` (write for a
  PUBLISH, read for a SUBSCRIBE), ``routing_key`` (the topic or filter) and
  ``variable_map.client_id``.

Every decision runs fleet.authority.named's admission on the name RabbitMQ passes with the
client id it passes (the identity must be active, a certificate of it admitted, the client
id its own) before the request's own check; topics are decided by the same policy Fleet's
broker applies. The caller, malformed requests and the refusal digest are
provisioning.service_hooks'.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import parse_qsl

from aiohttp import hdrs, web

from fleet.authority.named import NamedAdmission, admit_named
from fleet.errors import FleetError, ForbiddenError, RegistryUnavailableError
from fleet.integrations.rabbitmq import (
    EXCHANGE,
    MANAGEMENT_USER,
    RESOURCE_PATH,
    TOPIC_PATH,
    USER_PATH,
    VHOST,
    VHOST_PATH,
    subscription_queues,
    topic_of,
)
from provisioning.limits import read_body
from provisioning.service_hooks import MalformedRequestError, ServiceHooks

log = logging.getLogger("provisioning.rabbitmq")

FORM = "application/x-www-form-urlencoded"
ALLOW, DENY = "allow", "deny"
PERMISSIONS = ("configure", "write", "read")
RESOURCES = ("exchange", "queue")
CLIENT_ID = "variable_map.client_id"

Fields = Mapping[str, str]


class RabbitmqHooks(ServiceHooks):
    """The four paths, on the EST service's authority, thread pool and body limits."""

    edge = "rabbitmq"

    def routes(self) -> list[web.RouteDef]:
        table: list[web.RouteDef] = []
        for path, handler in ((USER_PATH, self.user), (VHOST_PATH, self.vhost),
                              (RESOURCE_PATH, self.resource), (TOPIC_PATH, self.topic)):
            table += [web.get(path, handler, allow_head=False), web.post(path, handler)]
        return table

    async def user(self, request: web.Request) -> web.Response:
        return await self._decide(request, "user", ("username",), self._user)

    async def vhost(self, request: web.Request) -> web.Response:
        return await self._decide(request, "vhost", ("username", "vhost"), self._vhost)

    async def resource(self, request: web.Request) -> web.Response:
        return await self._decide(request, "resource",
                                  ("username", "vhost", "resource", "name", "permission"),
                                  self._resource)

    async def topic(self, request: web.Request) -> web.Response:
        return await self._decide(request, "topic", ("username", "vhost", "resource", "name",
                                                     "permission", "routing_key"), self._topic)

    # -- the decisions (each raises the reason of a denial) ---------------------------------

    async def _user(self, fields: Fields) -> None:
        if "password" in fields:
            raise ForbiddenError("a login with a password: the user name must come from the "
                                 "certificate (mqtt.ssl_cert_login)")
        await self._admit(fields, client_id=fields["username"])

    async def _vhost(self, fields: Fields) -> None:
        _check_vhost(fields)
        client_id = fields.get("client_id")
        if client_id is None:
            raise ForbiddenError("no MQTT client id: only MQTT sessions are Fleet's")
        await self._admit(fields, client_id=client_id)

    async def _resource(self, fields: Fields) -> None:
        kind, name, permission = fields["resource"], fields["name"], fields["permission"]
        if kind not in RESOURCES:
            raise MalformedRequestError(f"resource {kind[:40]!r} is neither exchange nor queue")
        _check_permission(permission)
        _check_vhost(fields)
        username = fields["username"]
        if kind == "exchange" and not (name == EXCHANGE and permission in ("write", "read")):
            raise ForbiddenError(f"{permission} on exchange {name[:80]!r}: only write and "
                                 f"read on {EXCHANGE}")
        if kind == "queue" and name not in subscription_queues(username):
            raise ForbiddenError(f"queue {name[:80]!r} is not a subscription queue of "
                                 f"{username[:80]!r}")
        await self._admit(fields, client_id=fields.get("client_id", username))

    async def _topic(self, fields: Fields) -> None:
        permission = fields["permission"]
        if fields["resource"] != "topic":
            raise MalformedRequestError(f"resource {fields['resource'][:40]!r} is not topic")
        if permission not in ("write", "read"):
            raise MalformedRequestError(f"permission {permission[:40]!r} is neither write nor "
                                        "read")
        _check_vhost(fields)
        if fields["name"] != EXCHANGE:
            raise ForbiddenError(f"exchange {fields['name'][:80]!r} is not {EXCHANGE}")
        client_id = fields.get(CLIENT_ID)
        if client_id is None:
            raise ForbiddenError(f"no {CLIENT_ID}: only MQTT sessions are Fleet's")
        admitted = await self._admit(fields, client_id=client_id)
        topic = topic_of(fields["routing_key"])
        action = "publish" if permission == "write" else "subscribe"
        allowed = (admitted.grants.may_publish(topic) if action == "publish"
                   else admitted.grants.may_subscribe(topic))
        if not allowed:
            raise ForbiddenError(f"{admitted.identity} may not {action} {topic!r}")

    async def _admit(self, fields: Fields, *, client_id: str) -> NamedAdmission:
        admitted: NamedAdmission = await self.service.call(
            admit_named, self.authority, common_name=fields["username"], client_id=client_id,
            policy=self.policy)
        return admitted

    # -- the request and the answer ---------------------------------------------------------

    async def _decide(self, request: web.Request, path: str, required: tuple[str, ...],
                      decide: Callable[[Fields], Awaitable[None]]) -> web.Response:
        action = f"rabbitmq.{path}"
        refused = await self.refuse_caller(request, action)
        if refused is not None:
            return refused
        try:
            fields = await self._fields(request, required)
        except FleetError as error:
            return self.malformed(request, action, error)
        try:
            await decide(fields)
        except MalformedRequestError as error:
            return self.malformed(request, action, error)
        except RegistryUnavailableError as error:
            return self.unavailable(error)
        except FleetError as error:
            name = fields["username"]
            if not (path == "user" and name == MANAGEMENT_USER):  # RabbitMQ's own user
                self.record_denial(_denial_action(path, fields), error, name,
                                   topic=_topic_or_none(path, fields))
            return _answer(DENY)
        return _answer(ALLOW)

    async def _fields(self, request: web.Request, required: tuple[str, ...]) -> Fields:
        if request.method == hdrs.METH_GET:
            pairs = list(request.query.items())
        else:
            media_type = (request.headers.get(hdrs.CONTENT_TYPE) or "").split(";")[0].strip()
            if media_type.lower() != FORM:
                raise MalformedRequestError(f"Content-Type must be {FORM}, not "
                                            f"{media_type[:60] or 'none'!r}")
            raw = await read_body(request, self.service.body)
            try:
                pairs = parse_qsl(raw.decode(), keep_blank_values=True, strict_parsing=True,
                                  errors="strict") if raw else []
            except (UnicodeDecodeError, ValueError) as exc:
                raise MalformedRequestError(f"the body is not a form: {exc}") from None
        fields = dict(pairs)
        if len(fields) != len(pairs):
            raise MalformedRequestError("a field is given twice")
        missing = [name for name in required if not fields.get(name)]
        if missing:
            raise MalformedRequestError(f"missing field(s): {', '.join(missing)}")
        return fields


def _check_vhost(fields: Fields) -> None:
    if fields["vhost"] != VHOST:
        raise ForbiddenError(f"virtual host {fields['vhost'][:80]!r} is not {VHOST!r}")


def _check_permission(permission: str) -> None:
    if permission not in PERMISSIONS:
        raise MalformedRequestError(f"permission {permission[:40]!r} is not one of "
                                    f"{', '.join(PERMISSIONS)}")


def _denial_action(path: str, fields: Fields) -> str:
    if path in ("user", "vhost"):
        return "rabbitmq.connect"
    if path == "topic":
        return "rabbitmq.publish" if fields["permission"] == "write" else "rabbitmq.subscribe"
    return "rabbitmq.resource"


def _topic_or_none(path: str, fields: Fields) -> str | None:
    return topic_of(fields["routing_key"]) if path == "topic" else None


def _answer(decision: str) -> web.Response:
    return web.Response(text=decision, content_type="text/plain")
