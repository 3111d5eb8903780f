"""RabbitMQ 3.10+ driven by Fleet's identities: its configuration, and how its MQTT plugin
names what Fleet decides on.

RabbitMQ terminates mutual TLS itself on an MQTT listener of its own (``verify_peer``,
``fail_if_no_peer_cert``, the fleet CA chain) and takes the user name from the certificate's
CN (``mqtt.ssl_cert_login``, ``ssl_cert_login_from = common_name``): such a login carries no
password. Its HTTP auth backend (``auth_backends.1 = http``) asks Fleet's provisioning
service, over mutual TLS with a Fleet service certificate (``ssl_options`` of the
``rabbitmq_auth_backend_http`` application, which only advanced.config can set), at every
CONNECT (``user``, then ``vhost`` with the client id), for every queue and exchange operation
(``resource``) and for every PUBLISH and SUBSCRIBE (``topic``, the routing key being the MQTT
topic with ``/`` as ``.`` and ``+`` as ``*``). Fleet answers ``allow`` or ``deny``; anything
else (a 4xx or 5xx) RabbitMQ treats as a refusal.

The management API, on 127.0.0.1 only, is how the revocation hook
(fleet.integrations.rabbitmq_close) closes live connections. Its user is RabbitMQ's own
(the ``internal`` backend after Fleet's), loaded from the exported definitions with an
``administrator`` tag (closing another user's connection needs it) and no permission on any
virtual host, so it can open no MQTT session; its name is no fleet identity, so no fleet
certificate logs in as it. No other user (no ``guest``) exists.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from fleet.integrations.tlsfiles import TlsFiles

USER_PATH = "/rabbitmq/user"
VHOST_PATH = "/rabbitmq/vhost"
RESOURCE_PATH = "/rabbitmq/resource"
TOPIC_PATH = "/rabbitmq/topic"

VHOST = "/"
"""The virtual host of MQTT sessions."""
EXCHANGE = "amq.topic"
"""The exchange the MQTT plugin publishes to and binds subscription queues on."""
PLUGINS = ("rabbitmq_mqtt", "rabbitmq_auth_backend_http", "rabbitmq_management")
MANAGEMENT_USER = "_fleet-close"
"""The management API user of the revocation hook: no fleet identity starts with ``_`` (and
rabbitmq.conf keys, which name it, take no ``@``)."""


def subscription_queues(client_id: str) -> tuple[str, str]:
    """The queues the MQTT plugin declares for a client's QoS 0 and QoS 1 subscriptions."""
    base = f"mqtt-subscription-{client_id}qos"
    return base + "0", base + "1"


def topic_of(routing_key: str) -> str:
    """The MQTT topic (or filter) a routing key of the MQTT plugin stands for.

    The plugin writes ``/`` as ``.`` and ``+`` as ``*`` (``#`` stays), so the routing key's
    words are the topic's levels: a ``.`` inside an MQTT level becomes a level boundary
    here, as it is for RabbitMQ's routing, and a literal ``*`` reads as ``+``."""
    return routing_key.replace("*", "+").replace(".", "/")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where RabbitMQ reaches Fleet's provisioning service, and the files it presents."""

    url: str
    """https://host:port of the provisioning service (the host must be one the service's
    certificate names: Erlang's TLS client checks it)."""
    tls: TlsFiles


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int
    tls: TlsFiles
    management_port: int
    definitions: Path


def configuration(listener: Listener, fleet: Endpoint) -> str:
    """rabbitmq.conf (the new-style format): one mutual-TLS MQTT listener and no other
    protocol listener, Fleet as the first auth backend, management on 127.0.0.1."""
    lines = [
        "# Written by `fleet export rabbitmq`; re-run it rather than editing this file.",
        "listeners.tcp = none",
        "mqtt.listeners.tcp = none",
        f"mqtt.listeners.ssl.default = {_address(listener.host, listener.port)}",
        f"ssl_options.cacertfile = {listener.tls.cacertfile}",
        f"ssl_options.certfile = {listener.tls.certfile}",
        f"ssl_options.keyfile = {listener.tls.keyfile}",
        "ssl_options.verify = verify_peer",
        "ssl_options.fail_if_no_peer_cert = true",
        "ssl_options.depth = 3",
        "ssl_options.versions.1 = tlsv1.3",
        "ssl_options.versions.2 = tlsv1.2",
        "",
        "# The user name is the certificate's CN; a client cannot choose it.",
        "mqtt.ssl_cert_login = true",
        "ssl_cert_login_from = common_name",
        "mqtt.allow_anonymous = false",
        f"mqtt.vhost = {VHOST}",
        f"mqtt.exchange = {EXCHANGE}",
        "",
        "# Fleet decides for MQTT clients; RabbitMQ's own users are the management API's.",
        "auth_backends.1 = http",
        "auth_backends.2 = internal",
        "auth_http.http_method = post",
        *(f"auth_http.{name}_path = {fleet.url}{path}" for name, path in (
            ("user", USER_PATH), ("vhost", VHOST_PATH), ("resource", RESOURCE_PATH),
            ("topic", TOPIC_PATH))),
        "auth_http.request_timeout = 5000",
        "auth_http.connection_timeout = 5000",
        "",
        "management.tcp.ip = 127.0.0.1",
        f"management.tcp.port = {listener.management_port}",
        f"loopback_users.{MANAGEMENT_USER} = true",
        "definitions.import_backend = local_filesystem",
        f"definitions.local.path = {listener.definitions}",
    ]
    return "\n".join(lines) + "\n"


def advanced_config(fleet: Endpoint) -> str:
    """advanced.config: the client TLS of the HTTP auth backend (its certificate, Fleet's CA
    chain, verify_peer), which rabbitmq.conf cannot set in 3.10."""
    options = ", ".join([f"{{cacertfile, {_erlang_string(fleet.tls.cacertfile)}}}",
                         f"{{certfile, {_erlang_string(fleet.tls.certfile)}}}",
                         f"{{keyfile, {_erlang_string(fleet.tls.keyfile)}}}",
                         "{verify, verify_peer}", "{depth, 3}",
                         "{versions, ['tlsv1.3', 'tlsv1.2']}"])
    return ("%% Written by `fleet export rabbitmq`; re-run it rather than editing this file.\n"
            f"[{{rabbitmq_auth_backend_http, [{{ssl_options, [{options}]}}]}}].\n")


def enabled_plugins() -> str:
    return f"[{','.join(PLUGINS)}].\n"


def definitions(*, password: str) -> str:
    """definitions.json: the virtual host and the management user (no permissions)."""
    return json.dumps({
        "users": [{"name": MANAGEMENT_USER, "password_hash": password_hash(password),
                   "hashing_algorithm": "rabbit_password_hashing_sha256",
                   "tags": ["administrator"]}],
        "vhosts": [{"name": VHOST}],
        "permissions": [],
    }, indent=2) + "\n"


def password_hash(password: str, *, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + SHA-256(salt + password))
    with a 4-byte salt."""
    salt = os.urandom(4) if salt is None else salt
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def _address(host: str, port: int) -> str:
    return f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"


def _erlang_string(path: Path) -> str:
    text = str(path)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
