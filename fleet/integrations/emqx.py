"""EMQX 5 driven by Fleet's identities: its configuration, and the topic policy as EMQX ACL
rules.

EMQX terminates mutual TLS itself (``verify_peer``, ``fail_if_no_peer_cert``, the fleet CA
chain), takes the user name from the certificate's CN (``mqtt.peer_cert_as_username = cn``,
so a client cannot choose it) and asks Fleet's provisioning service at every CONNECT
(``POST /emqx/authn``) and for any PUBLISH or SUBSCRIBE its cached rules do not decide
(``POST /emqx/authz``), over mutual TLS with a Fleet service certificate. From EMQX 5.8 the
authentication answer carries the identity's rules (``acl``) and the end of its certificate's
use (``expire_at``), so EMQX enforces both without a call per packet.

The rules: each filter the policy grants becomes an ``allow`` rule (``publish``,
``subscribe``, or ``all`` when both are granted), followed by one ``deny`` of everything
(``#``), so nothing outside the policy reaches another authorizer. EMQX allows a SUBSCRIBE
when one rule's filter matches the requested filter (a ``+`` or ``#`` in it matches only
the same wildcard in the rule), which never admits more than Fleet's containment check. A
filter EMQX would read otherwise is left out (denied): one holding ``${`` (EMQX fills
placeholders in rule topics) and one starting with ``eq `` (EMQX's exact-match prefix), which
is written as ``eq <filter>`` when it has no wildcard.

Revocation reaches EMQX at the next CONNECT (authentication asks the registry) and, for live
sessions, through its REST API (fleet.integrations.emqx_kick).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fleet.acl import Grants
from fleet.integrations.tlsfiles import TlsFiles

AUTHN_PATH = "/emqx/authn"
AUTHZ_PATH = "/emqx/authz"

AUTHN_BODY = {
    "clientid": "${clientid}",
    "username": "${username}",
    "cert_common_name": "${cert_common_name}",
    "cert_subject": "${cert_subject}",
    "peerhost": "${peerhost}",
}
"""The authentication request: EMQX 5 placeholders of its HTTP authenticator."""
AUTHZ_BODY = {
    "clientid": "${clientid}",
    "username": "${username}",
    "peerhost": "${peerhost}",
    "action": "${action}",
    "topic": "${topic}",
    "qos": "${qos}",
    "retain": "${retain}",
}
"""The authorization request: EMQX 5 placeholders of its HTTP authorizer (which has no
certificate placeholders: the identity is the user name EMQX took from the CN)."""

Rule = dict[str, str]


def acl_rules(grants: Grants) -> list[Rule]:
    """EMQX ACL rules (the format of the authentication answer's ``acl``) for *grants*."""
    actions: dict[str, set[str]] = {}
    for action, filters in (("publish", grants.publish), ("subscribe", grants.subscribe)):
        for topic_filter in filters:
            topic = _rule_topic(topic_filter)
            if topic is not None:
                actions.setdefault(topic, set()).add(action)
    rules = [{"permission": "allow",
              "action": "all" if len(granted) == 2 else next(iter(granted)),
              "topic": topic} for topic, granted in actions.items()]
    return [*rules, {"permission": "deny", "action": "all", "topic": "#"}]


def _rule_topic(topic_filter: str) -> str | None:
    if "${" in topic_filter:
        return None
    if topic_filter.startswith("eq "):
        return None if any(c in topic_filter for c in "+#") else f"eq {topic_filter}"
    return topic_filter


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where EMQX reaches Fleet's provisioning service, and the files it presents."""

    url: str
    """https://host:port of the provisioning service."""
    tls: TlsFiles


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int
    tls: TlsFiles


def configuration(listener: Listener, fleet: Endpoint) -> str:
    """HOCON for EMQX 5: one mutual-TLS MQTT listener, the other listeners off, Fleet as the
    HTTP authenticator and the only authorizer, deny when nothing matches."""
    lines = [
        "# Written by `fleet export emqx`; re-run it rather than editing this file.",
        "",
        "listeners.tcp.default.enable = false",
        "listeners.ws.default.enable = false",
        "listeners.wss.default.enable = false",
        "listeners.ssl.default {",
        f"  bind = {_value(f'{listener.host}:{listener.port}')}",
        _block("ssl_options", {**_files(listener.tls),
                               "verify": "verify_peer", "fail_if_no_peer_cert": True,
                               "versions": ["tlsv1.3", "tlsv1.2"]}, indent=2),
        "}",
        "",
        "# The user name is the certificate's CN; the client cannot choose it.",
        "mqtt.peer_cert_as_username = cn",
        "",
        "authentication = [",
        "  {",
        "    mechanism = password_based",
        "    backend = http",
        "    method = post",
        f"    url = {_value(fleet.url + AUTHN_PATH)}",
        *_http_backend(fleet, AUTHN_BODY, indent=4),
        "  }",
        "]",
        "",
        "authorization {",
        "  no_match = deny",
        "  deny_action = ignore",
        "  sources = [",
        "    {",
        "      type = http",
        "      method = post",
        f"      url = {_value(fleet.url + AUTHZ_PATH)}",
        *_http_backend(fleet, AUTHZ_BODY, indent=6),
        "    }",
        "  ]",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _http_backend(fleet: Endpoint, body: dict[str, str], *, indent: int) -> list[str]:
    """The headers, request body and client TLS of an HTTP backend pointed at Fleet."""
    return [_block("headers", {"content-type": "application/json"}, indent=indent),
            _block("body", dict(body), indent=indent),
            _block("ssl", {"enable": True, "verify": "verify_peer", **_files(fleet.tls)},
                   indent=indent)]


def _files(tls: TlsFiles) -> dict[str, object]:
    return {"cacertfile": str(tls.cacertfile), "certfile": str(tls.certfile),
            "keyfile": str(tls.keyfile)}


def _block(name: str, values: dict[str, object], *, indent: int) -> str:
    pad = " " * indent
    inner = [f"{pad}  {_key(key)} = {_value(value)}" for key, value in values.items()]
    return "\n".join([f"{pad}{name} {{", *inner, f"{pad}}}"])


def _key(key: str) -> str:
    return key if key.replace("_", "").isalnum() else json.dumps(key)


def _value(value: object) -> str:
    """A HOCON value: booleans and the bare words of EMQX enums as they are, strings quoted
    (JSON strings are HOCON quoted strings), lists of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    text = str(value)
    return text if text in ("verify_peer", "password_based", "http", "post") else \
        json.dumps(text)
