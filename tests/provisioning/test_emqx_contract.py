"""Contract tests: EMQX 5's HTTP authentication and authorization requests, against the real
provisioning service over real mutual TLS.

The request bodies are the JSON objects EMQX renders from the body templates that
`fleet export emqx` writes, with the placeholders of EMQX's documentation:
- authentication: https://docs.emqx.com/en/emqx/latest/access-control/authn/http.html
  (${clientid}, ${username}, ${cert_common_name}, ${cert_subject}, ${peerhost}; the answer
  {"result": "allow" | "deny" | "ignore", "is_superuser", "acl", "expire_at"} of EMQX 5.8);
- ACL rules of the answer: https://docs.emqx.com/en/emqx/latest/access-control/authn/acl.html
- authorization: https://docs.emqx.com/en/emqx/latest/access-control/authz/http.html
  (${clientid}, ${username}, ${peerhost}, ${action}, ${topic}, ${qos}, ${retain}).
EMQX fills every placeholder in as a string.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from est_support import Enrolled, Est, Reply, make_csr

from fleet import pki
from fleet.audit import actor_of
from fleet.registry.models import AuditEvent

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def emqx(est: Est) -> Enrolled:
    """The service certificate EMQX presents to Fleet."""
    key = pki.generate_private_key()
    issued = est.authority.issue_service_certificate(name="emqx", public_key=key.public_key(),
                                                     actor="test")
    return Enrolled("emqx", key, issued.certificate, est.tmp)


def post(est: Est, path: str, body: object, *, caller: Enrolled | None,
         headers: dict[str, str] | None = None) -> Reply:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return est.request("POST", path, data, headers or JSON, device=caller)


def authn_body(device_id: str, *, client_id: str | None = None) -> dict[str, str]:
    return {"clientid": client_id or device_id, "username": device_id,
            "cert_common_name": device_id, "cert_subject": f"CN={device_id},O=Fleet",
            "peerhost": "192.0.2.10"}


def authz_body(device_id: str, action: str, topic: str, *, client_id: str | None = None,
               qos: str = "1", retain: str = "false") -> dict[str, str]:
    return {"clientid": client_id or device_id, "username": device_id,
            "peerhost": "192.0.2.10", "action": action, "topic": topic, "qos": qos,
            "retain": retain}


def answer(reply: Reply) -> dict[str, Any]:
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    result: dict[str, Any] = json.loads(reply.body)
    return result


def recorded(est: Est, action: str) -> list[AuditEvent]:
    est.record_refusals()
    return est.refusals(action)


def detail(event: AuditEvent) -> dict[str, Any]:
    assert event.detail is not None
    result: dict[str, Any] = json.loads(event.detail)
    return result


def test_emqx_contract_authn_allows_a_device_with_its_acl_and_certificate_end(
        est: Est, emqx: Enrolled) -> None:
    device = est.device("d1")
    result = answer(post(est, "/emqx/authn", authn_body("d1"), caller=emqx))
    assert result["result"] == "allow"
    assert result["is_superuser"] is False
    assert result["expire_at"] == int(device.certificate.not_valid_after_utc.timestamp())
    rules = result["acl"]
    assert {"permission": "allow", "action": "publish",
            "topic": "devices/d1/telemetry"} in rules
    assert {"permission": "allow", "action": "subscribe",
            "topic": "devices/d1/commands/#"} in rules
    assert {"permission": "allow", "action": "subscribe",
            "topic": "groups/sensors/broadcast/#"} in rules
    assert rules[-1] == {"permission": "deny", "action": "all", "topic": "#"}
    assert all(rule["permission"] == "allow" for rule in rules[:-1])
    assert not any("d2" in rule["topic"] or "+" in rule["topic"] for rule in rules)


def test_emqx_contract_authn_denies_revoked_suspended_unknown_and_foreign_client_ids(
        est: Est, emqx: Enrolled) -> None:
    est.device("revoked")
    est.device("suspended")
    est.device("d1")
    est.authority.revoke_device(device_id="revoked", reason="keyCompromise", actor="test")
    est.authority.suspend_device(device_id="suspended", actor="test")
    before = est.snapshot()
    for body in (authn_body("revoked"), authn_body("suspended"), authn_body("nobody"),
                 authn_body("d1", client_id="d2"), authn_body("d1", client_id="d1-x"),
                 {**authn_body("d1"), "cert_subject": "CN=d2,O=Fleet"},
                 {**authn_body("d1"), "cert_common_name": ""}):
        assert answer(post(est, "/emqx/authn", body, caller=emqx)) == {"result": "deny"}, body
    assert est.snapshot() == before
    # Aggregated per claimed identity: the same denial twice is one event with a count.
    post(est, "/emqx/authn", authn_body("revoked"), caller=emqx)
    events = {e.actor: e for e in recorded(est, "emqx.connect")}
    assert detail(events[actor_of("emqx", "revoked")])["count"] == 2
    assert "revoked" in (events[actor_of("emqx", "revoked")].reason or "")
    assert "suspended" in (events[actor_of("emqx", "suspended")].reason or "")
    assert "no unexpired certificate" in (events[actor_of("emqx", "nobody")].reason or "")
    assert "client id" in (events[actor_of("emqx", "d1")].reason or "")


def test_emqx_contract_authn_username_must_be_the_common_name(
        est: Est, emqx: Enrolled) -> None:
    est.device("d1")
    reply = post(est, "/emqx/authn", {**authn_body("d1"), "username": "d2"}, caller=emqx)
    assert reply.status == 400
    assert "peer_cert_as_username" in reply.text


def test_emqx_contract_authn_a_renewed_device_expires_with_its_superseded_certificate(
        est: Est, emqx: Enrolled) -> None:
    """The contract cannot say which certificate was presented: the answer ends where the
    first of the admitted ones (the superseded one, at the end of its grace) does."""
    old = est.device("d1")
    renewed = est.authority.reenroll(client_certificate=old.certificate,
                                     csr=make_csr("d1"), actor="test")
    result = answer(post(est, "/emqx/authn", authn_body("d1"), caller=emqx))
    assert result["result"] == "allow"
    assert result["expire_at"] < int(renewed.certificate.not_valid_after_utc.timestamp())
    assert result["expire_at"] <= int(
        (renewed.record.issued_at + est.settings.superseded_grace).timestamp()) + 1


def test_emqx_contract_authz_confines_a_device_to_its_topics(
        est: Est, emqx: Enrolled) -> None:
    est.device("d1")
    est.device("d2")
    allowed = [("publish", "devices/d1/telemetry"), ("subscribe", "devices/d1/commands/#"),
               ("subscribe", "devices/d1/commands/reboot")]
    denied = [("publish", "devices/d2/telemetry"), ("subscribe", "devices/+/commands/#"),
              ("subscribe", "#"), ("publish", "$SYS/x"), ("subscribe", "devices/d2/commands/#")]
    for action, topic in allowed:
        assert answer(post(est, "/emqx/authz", authz_body("d1", action, topic),
                           caller=emqx)) == {"result": "allow"}, topic
    for action, topic in denied:
        assert answer(post(est, "/emqx/authz", authz_body("d1", action, topic),
                           caller=emqx)) == {"result": "deny"}, topic
    # Another device's client id is refused whatever the topic.
    assert answer(post(est, "/emqx/authz", authz_body("d1", "publish", "devices/d1/telemetry",
                                                      client_id="d2"),
                       caller=emqx)) == {"result": "deny"}
    # Denials are folded per identity and topic: one row for many publishes.
    for _ in range(5):
        post(est, "/emqx/authz", authz_body("d1", "publish", "devices/d2/telemetry"),
             caller=emqx)
    events = [e for e in recorded(est, "emqx.publish") if e.actor == actor_of("emqx", "d1")]
    counts = {detail(e)["topic"]: detail(e)["count"] for e in events}
    assert counts == {"devices/d2/telemetry": 6, "$SYS/x": 1, "devices/d1/telemetry": 1}


def test_emqx_contract_authz_denies_a_revoked_device(est: Est, emqx: Enrolled) -> None:
    est.device("d1")
    body = authz_body("d1", "publish", "devices/d1/telemetry")
    assert answer(post(est, "/emqx/authz", body, caller=emqx)) == {"result": "allow"}
    est.authority.revoke_device(device_id="d1", reason="keyCompromise", actor="test")
    assert answer(post(est, "/emqx/authz", body, caller=emqx)) == {"result": "deny"}


@pytest.mark.parametrize(("path", "body", "says"), [
    ("/emqx/authn", b"{not json", "not JSON"),
    ("/emqx/authn", b"[1, 2]", "JSON object"),
    ("/emqx/authn", {"clientid": "d1"}, "cert_common_name"),
    ("/emqx/authn", {**authn_body("d1"), "clientid": 7}, "must be strings"),
    ("/emqx/authz", {"clientid": "d1", "username": "d1", "action": "publish"}, "topic"),
    ("/emqx/authz", authz_body("d1", "all", "t"), "neither publish nor subscribe"),
    ("/emqx/authz", authz_body("d1", "publish", "t", qos="3"), "qos"),
    ("/emqx/authz", authz_body("d1", "publish", "t", retain="maybe"), "retain"),
])
def test_emqx_contract_malformed_requests_are_400_with_a_reason_and_aggregated(
        est: Est, emqx: Enrolled, path: str, body: object, says: str) -> None:
    est.device("d1")
    action = "emqx.authn" if path.endswith("authn") else "emqx.authz"
    before = est.snapshot()
    for _ in range(3):
        reply = post(est, path, body, caller=emqx)
        assert reply.status == 400, reply.text
        assert says in reply.text, reply.text
    assert est.snapshot() == before
    [event] = recorded(est, action)
    assert detail(event)["count"] == 3
    assert detail(event)["aggregated"] is True


def test_emqx_contract_wrong_media_type_is_400(est: Est, emqx: Enrolled) -> None:
    reply = post(est, "/emqx/authn", authn_body("d1"), caller=emqx,
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 400
    assert "application/json" in reply.text


def test_emqx_contract_needs_a_service_certificate(est: Est, emqx: Enrolled) -> None:
    device = est.device("d1")
    before = est.snapshot()
    for path, body in (("/emqx/authn", authn_body("d1")),
                       ("/emqx/authz", authz_body("d1", "publish", "devices/d1/telemetry"))):
        nobody = post(est, path, body, caller=None)
        assert nobody.status == 401, nobody.text
        assert "service certificate" in nobody.text
        as_device = post(est, path, body, caller=device)
        assert as_device.status == 403, as_device.text
        assert "device/d1 is not a service" in as_device.text
    assert est.snapshot() == before
    events = recorded(est, "emqx.authn")
    assert sum(detail(e)["count"] for e in events) == 2


def test_emqx_contract_a_revoked_service_certificate_is_403(
        est: Est, emqx: Enrolled) -> None:
    est.device("d1")
    est.authority.revoke_certificate(serial=format(emqx.certificate.serial_number, "x"),
                                     reason="keyCompromise", actor="test")
    reply = post(est, "/emqx/authn", authn_body("d1"), caller=emqx)
    assert reply.status == 403
    assert "revoked" in reply.text
