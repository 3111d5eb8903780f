"""RabbitMQ's HTTP auth backend contract against the real provisioning service over real
mutual TLS.

The requests are the form fields rabbitmq_auth_backend_http 3.10 sends (POST, as `fleet
export rabbitmq` configures it, or GET), as its source builds them and as RabbitMQ 3.10.8
sent them for a paho-mqtt client over `mqtt.ssl_cert_login` (tests/integrations has the
real cluster): user (username; a password only when the client sent credentials), vhost
(username, vhost, ip, tags, client_id), resource (username, vhost, resource, name,
permission, tags, client_id), topic (username, vhost, resource=topic, name, permission,
tags, routing_key, variable_map.client_id/username/vhost). Answers: `allow` or `deny`.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest
from est_support import Enrolled, Est, EstFactory, Reply

from fleet import pki
from fleet.audit import actor_of
from fleet.integrations.rabbitmq import MANAGEMENT_USER
from fleet.registry.models import AuditEvent

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def rabbitmq(est: Est) -> Enrolled:
    """The service certificate RabbitMQ presents to Fleet."""
    return service_certificate(est)


def service_certificate(est: Est) -> Enrolled:
    key = pki.generate_private_key()
    issued = est.authority.issue_service_certificate(name="rabbitmq",
                                                     public_key=key.public_key(), actor="test")
    return Enrolled("rabbitmq", key, issued.certificate, est.tmp)


def ask(est: Est, path: str, fields: dict[str, str] | bytes, *, caller: Enrolled | None,
        method: str = "POST", headers: dict[str, str] | None = None) -> Reply:
    if method == "GET":
        assert isinstance(fields, dict)
        return est.request("GET", f"/rabbitmq/{path}?{urlencode(fields)}", device=caller)
    body = fields if isinstance(fields, bytes) else urlencode(fields).encode()
    return est.request("POST", f"/rabbitmq/{path}", body, headers or FORM, device=caller)


def decision(reply: Reply) -> str:
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/plain")
    return reply.text


def user(name: str, **extra: str) -> dict[str, str]:
    return {"username": name, **extra}


def vhost(name: str, *, client_id: str | None = None, vhost: str = "/") -> dict[str, str]:
    return {"username": name, "vhost": vhost, "ip": "192.0.2.10", "tags": "",
            "client_id": client_id or name}


def resource(name: str, kind: str, resource_name: str, permission: str, *,
             vhost: str = "/") -> dict[str, str]:
    return {"username": name, "vhost": vhost, "resource": kind, "name": resource_name,
            "permission": permission, "tags": "", "client_id": name}


def topic(name: str, permission: str, routing_key: str, *, client_id: str | None = None,
          exchange: str = "amq.topic", vhost: str = "/") -> dict[str, str]:
    return {"username": name, "vhost": vhost, "resource": "topic", "name": exchange,
            "permission": permission, "tags": "", "routing_key": routing_key,
            "variable_map.client_id": client_id or name, "variable_map.username": name,
            "variable_map.vhost": vhost}


def recorded(est: Est, action: str) -> list[AuditEvent]:
    est.record_refusals()
    return est.refusals(action)


def detail(event: AuditEvent) -> dict[str, Any]:
    assert event.detail is not None
    result: dict[str, Any] = json.loads(event.detail)
    return result


def test_rabbitmq_auth_allows_what_the_mqtt_plugin_asks_for_an_admitted_device(
        est: Est, rabbitmq: Enrolled) -> None:
    est.device("d1")
    allowed = [
        ("user", user("d1")),
        ("vhost", vhost("d1")),
        ("resource", resource("d1", "queue", "mqtt-subscription-d1qos1", "configure")),
        ("resource", resource("d1", "queue", "mqtt-subscription-d1qos0", "read")),
        ("resource", resource("d1", "queue", "mqtt-subscription-d1qos1", "write")),
        ("resource", resource("d1", "exchange", "amq.topic", "read")),
        ("resource", resource("d1", "exchange", "amq.topic", "write")),
        ("topic", topic("d1", "write", "devices.d1.telemetry")),
        ("topic", topic("d1", "write", "devices.d1.events.door.open")),
        ("topic", topic("d1", "read", "devices.d1.commands.#")),
        ("topic", topic("d1", "read", "devices.d1.commands.reboot")),
        ("topic", topic("d1", "read", "groups.sensors.broadcast.#")),
    ]
    for path, fields in allowed:
        assert decision(ask(est, path, fields, caller=rabbitmq)) == "allow", (path, fields)
    # GET (auth_http.http_method = get) sends the same fields as a query.
    assert decision(ask(est, "vhost", vhost("d1"), caller=rabbitmq, method="GET")) == "allow"


def test_rabbitmq_auth_user_denies_revoked_suspended_and_unknown(
        est: Est, rabbitmq: Enrolled) -> None:
    est.device("revoked")
    est.device("suspended")
    est.authority.revoke_device(device_id="revoked", reason="keyCompromise", actor="test")
    est.authority.suspend_device(device_id="suspended", actor="test")
    before = est.snapshot()
    for name in ("revoked", "suspended", "nobody"):
        assert decision(ask(est, "user", user(name), caller=rabbitmq)) == "deny", name
        assert decision(ask(est, "vhost", vhost(name), caller=rabbitmq)) == "deny", name
    assert est.snapshot() == before
    events = {e.actor: e for e in recorded(est, "rabbitmq.connect")}
    assert detail(events[actor_of("rabbitmq", "revoked")])["count"] == 2
    assert "revoked" in (events[actor_of("rabbitmq", "revoked")].reason or "")
    assert "suspended" in (events[actor_of("rabbitmq", "suspended")].reason or "")
    assert "no unexpired certificate" in (events[actor_of("rabbitmq", "nobody")].reason or "")


def test_rabbitmq_auth_user_with_a_password_is_denied(est: Est, rabbitmq: Enrolled) -> None:
    """A client that sent its own user name and password chose its name: denied, even an
    admitted device's. RabbitMQ's own management user is its internal backend's to decide,
    so its denial here is not a refusal worth a digest entry."""
    est.device("d1")
    assert decision(ask(est, "user", user("d1", password="guess"), caller=rabbitmq)) == "deny"
    assert decision(ask(est, "user", user(MANAGEMENT_USER, password="its-own-secret-value"),
                        caller=rabbitmq)) == "deny"
    [event] = recorded(est, "rabbitmq.connect")
    assert event.actor == actor_of("rabbitmq", "d1")
    assert "password" in (event.reason or "")
    assert "guess" not in (event.reason or "") + (event.detail or "")


def test_rabbitmq_auth_vhost_wrong_vhost_missing_or_foreign_client_id_denied(
        est: Est, rabbitmq: Enrolled) -> None:
    est.device("d1")
    est.device("d2")
    no_client_id = {k: v for k, v in vhost("d1").items() if k != "client_id"}
    for fields in (vhost("d1", vhost="other"), vhost("d1", client_id="d2"),
                   vhost("d1", client_id="d1-x"), no_client_id):
        assert decision(ask(est, "vhost", fields, caller=rabbitmq)) == "deny", fields
    [event] = recorded(est, "rabbitmq.connect")  # folded per identity
    assert (event.actor, detail(event)["count"]) == (actor_of("rabbitmq", "d1"), 4)
    assert "virtual host 'other'" in (event.reason or "")


def test_rabbitmq_auth_resource_denies_all_but_the_plugins_own(
        est: Est, rabbitmq: Enrolled) -> None:
    est.device("d1")
    est.device("d2")
    denied = [
        resource("d1", "queue", "mqtt-subscription-d2qos1", "read"),
        resource("d1", "queue", "mqtt-subscription-d2qos0", "configure"),
        resource("d1", "queue", "orders", "write"),
        resource("d1", "exchange", "amq.topic", "configure"),
        resource("d1", "exchange", "amq.direct", "write"),
        resource("d1", "queue", "mqtt-subscription-d1qos1", "read", vhost="other"),
    ]
    for fields in denied:
        assert decision(ask(est, "resource", fields, caller=rabbitmq)) == "deny", fields
    est.authority.revoke_device(device_id="d1", reason="keyCompromise", actor="test")
    assert decision(ask(est, "resource", resource("d1", "exchange", "amq.topic", "write"),
                        caller=rabbitmq)) == "deny"
    [event] = recorded(est, "rabbitmq.resource")  # folded per identity
    assert detail(event)["count"] == len(denied) + 1


def test_rabbitmq_auth_topic_confines_a_device_cross_device_publish_denied(
        est: Est, rabbitmq: Enrolled) -> None:
    est.device("d1")
    est.device("d2")
    denied = [
        topic("d1", "write", "devices.d2.telemetry"),  # publish as another device
        topic("d1", "write", "devices.d2.commands.unlock"),
        topic("d1", "read", "devices.*.telemetry"),  # devices/+/telemetry
        topic("d1", "read", "#"),
        topic("d1", "read", "devices.d2.commands.#"),
        topic("d1", "write", "$SYS.x"),
        topic("d1", "write", "devices.d1.telemetry", client_id="d2"),
        topic("d1", "write", "devices.d1.telemetry", exchange="amq.fanout"),
        topic("d1", "write", "devices.d1.telemetry", vhost="other"),
    ]
    for fields in denied:
        assert decision(ask(est, "topic", fields, caller=rabbitmq)) == "deny", fields
    no_client_id = {k: v for k, v in topic("d1", "write", "devices.d1.telemetry").items()
                    if k != "variable_map.client_id"}
    assert decision(ask(est, "topic", no_client_id, caller=rabbitmq)) == "deny"
    for _ in range(3):
        ask(est, "topic", topic("d1", "write", "devices.d2.telemetry"), caller=rabbitmq)
    counts = {detail(e)["topic"]: detail(e)["count"] for e in recorded(est, "rabbitmq.publish")
              if e.actor == actor_of("rabbitmq", "d1")}
    assert counts["devices/d2/telemetry"] == 4
    assert "devices/+/telemetry" in {detail(e)["topic"]
                                     for e in recorded(est, "rabbitmq.subscribe")}


def test_rabbitmq_auth_topic_denies_a_device_revoked_while_connected(
        est: Est, rabbitmq: Enrolled) -> None:
    est.device("d1")
    fields = topic("d1", "write", "devices.d1.telemetry")
    assert decision(ask(est, "topic", fields, caller=rabbitmq)) == "allow"
    est.authority.revoke_device(device_id="d1", reason="keyCompromise", actor="test")
    assert decision(ask(est, "topic", fields, caller=rabbitmq)) == "deny"


def test_rabbitmq_auth_needs_a_service_certificate(est: Est, rabbitmq: Enrolled) -> None:
    device = est.device("d1")
    before = est.snapshot()
    for path, fields in (("user", user("d1")), ("vhost", vhost("d1")),
                         ("resource", resource("d1", "exchange", "amq.topic", "write")),
                         ("topic", topic("d1", "write", "devices.d1.telemetry"))):
        nobody = ask(est, path, fields, caller=None)
        assert nobody.status == 401, nobody.text
        assert "service certificate" in nobody.text
        as_device = ask(est, path, fields, caller=device)
        assert as_device.status == 403, as_device.text
        assert "device/d1 is not a service" in as_device.text
    assert est.snapshot() == before
    assert sum(detail(e)["count"] for e in recorded(est, "rabbitmq.user")) == 2


def test_rabbitmq_auth_a_revoked_service_certificate_is_403(
        est: Est, rabbitmq: Enrolled) -> None:
    est.device("d1")
    est.authority.revoke_certificate(serial=format(rabbitmq.certificate.serial_number, "x"),
                                     reason="keyCompromise", actor="test")
    reply = ask(est, "user", user("d1"), caller=rabbitmq)
    assert reply.status == 403
    assert "revoked" in reply.text


@pytest.mark.parametrize(("path", "body", "headers", "says"), [
    ("user", b"", FORM, "missing field(s): username"),
    ("vhost", urlencode({"username": "d1"}).encode(), FORM, "vhost"),
    ("resource", urlencode({**resource("d1", "queue", "q", "delete")}).encode(), FORM,
     "permission 'delete'"),
    ("resource", urlencode({**resource("d1", "binding", "q", "read")}).encode(), FORM,
     "neither exchange nor queue"),
    ("topic", urlencode({**topic("d1", "configure", "a.b")}).encode(), FORM,
     "neither write nor read"),
    ("topic", urlencode({k: v for k, v in topic("d1", "write", "a").items()
                         if k != "routing_key"}).encode(), FORM, "routing_key"),
    ("user", b"username=d1&username=d2", FORM, "twice"),
    ("user", b"username=%ff", FORM, "not a form"),
    ("user", b"username=d1", {"Content-Type": "application/json"},
     "application/x-www-form-urlencoded"),
])
def test_rabbitmq_auth_malformed_requests_are_400_with_a_reason_and_aggregated(
        est: Est, rabbitmq: Enrolled, path: str, body: bytes, headers: dict[str, str],
        says: str) -> None:
    est.device("d1")
    before = est.snapshot()
    for _ in range(3):
        reply = ask(est, path, body, caller=rabbitmq, headers=headers)
        assert reply.status == 400, reply.text
        assert says in reply.text, reply.text
    assert est.snapshot() == before
    [event] = recorded(est, f"rabbitmq.{path}")
    assert detail(event)["count"] == 3


def test_rabbitmq_auth_registry_down_is_503_which_rabbitmq_takes_as_a_refusal(
        est: Est, rabbitmq: Enrolled, make_est: EstFactory) -> None:
    """A service whose registry cannot be reached decides nothing: 503 + Retry-After.
    rabbit_auth_backend_http reads any status but 200 and 201 as an error, and RabbitMQ
    refuses the login or the operation on an error."""
    est.device("d1")
    down = make_est("postgresql+psycopg://fleet@127.0.0.1:9/fleet")  # nothing listens
    for path, fields in (("user", user("d1")),
                         ("topic", topic("d1", "write", "devices.d1.telemetry"))):
        reply = ask(down, path, fields, caller=rabbitmq)
        assert reply.status == 503, reply.text
        assert reply.headers["Retry-After"]
        assert "registry database unavailable" in reply.text
