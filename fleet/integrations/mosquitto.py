"""Mosquitto driven by Fleet's identities: its configuration and ACL file from Fleet's.

Mosquitto takes the identity from the client certificate (``use_identity_as_username``: the CN,
which is the device id or service name) and forces the client id to it
(``use_username_as_clientid``), so no client can take over another's session. The topic
policy of ``config/acl.toml`` becomes an ACL file: a device template that names only
``{device_id}`` becomes a ``pattern`` over ``%u``; one that names ``{group}`` is filled in for
each device under a ``user`` block; a service's templates go under a ``user`` block per
service. Fleet's *publish* is Mosquitto's ``write``, *subscribe* its ``read`` (which Mosquitto
also checks on every delivery, as Fleet does). Revocation reaches Mosquitto through its
``crlfile``, kept current by ``fleet crl --watch --out FILE --signal PID``
(fleet.integrations.crl_watch), which rewrites it on every revocation and sends Mosquitto
SIGHUP, which makes it read the CRL again (it checks the CRL in new handshakes only).
``set_tcp_nodelay`` turns Nagle's algorithm off on client sockets, so that a small packet
(a CONNACK, a PUBACK) is sent at once, not held back until the client ACKs earlier data.

The CRL ends nothing that is connected: Mosquitto's dynamic security plugin (Mosquitto 2.0)
does, loaded next to the ACL file with a configuration (:func:`dynamic_security`) whose one
client is the service identity of ``fleet serve mosquitto-kick``
(fleet.integrations.mosquitto_kick), allowed the plugin's command and response topics and
nothing else. Every default access of the plugin is deny, and a plugin that denies by default
defers to the next check for whatever its roles do not grant: for every other identity the
ACL file decides, as without the plugin. No device can become that client: a service's name
and its client ids are never a device id (fleet.registry.names).
"""

from __future__ import annotations

import json
import string
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fleet.acl import Policy
from fleet.integrations.tlsfiles import TlsFiles

_ACCESS = {("publish",): "write", ("subscribe",): "read", ("publish", "subscribe"): "readwrite"}

DYNSEC_TOPIC = "$CONTROL/dynamic-security/v1"
"""Where the dynamic security plugin takes its commands."""
DYNSEC_RESPONSE_TOPIC = DYNSEC_TOPIC + "/response"
"""Where it answers them."""
KICK_ROLE = "fleet-revocation-kick"
PLUGIN_FILE = "mosquitto_dynamic_security.so"
PLUGIN_DIRECTORIES = tuple(  # where Debian, Fedora and ``make install`` put it
    Path(directory) for directory in (
        f"/usr/lib/{sysconfig.get_config_var('MULTIARCH') or 'x86_64-linux-gnu'}",
        "/usr/lib64", "/usr/lib", "/usr/local/lib"))


@dataclass(frozen=True, slots=True)
class DynamicSecurity:
    plugin: Path
    """The plugin's shared object, as Mosquitto loads it."""
    config_file: Path
    """Its configuration (:func:`dynamic_security`)."""


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int
    tls: TlsFiles
    crlfile: Path
    acl_file: Path
    dynamic_security: DynamicSecurity
    user: str | None = None
    """The user Mosquitto switches to when started as root (None: its default, mosquitto)."""


def configuration(listener: Listener) -> str:
    """mosquitto.conf for one mutual-TLS listener that admits only fleet certificates."""
    lines = [
        "# Written by `fleet export mosquitto`; re-run it rather than editing this file.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {listener.acl_file}",
        "set_tcp_nodelay true",
        f"plugin {listener.dynamic_security.plugin}",
        f"plugin_opt_config_file {listener.dynamic_security.config_file}",
    ]
    if listener.user is not None:
        lines.append(f"user {listener.user}")
    lines += [
        "",
        f"listener {listener.port} {listener.host}",
        f"cafile {listener.tls.cacertfile}",
        f"certfile {listener.tls.certfile}",
        f"keyfile {listener.tls.keyfile}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        f"crlfile {listener.crlfile}",
    ]
    return "\n".join(lines) + "\n"


def find_plugin() -> Path | None:
    """The dynamic security plugin in the first of PLUGIN_DIRECTORIES that has it."""
    return next((d / PLUGIN_FILE for d in PLUGIN_DIRECTORIES if (d / PLUGIN_FILE).is_file()),
                None)


def dynamic_security(admin: str) -> str:
    """The plugin's configuration: one client, *admin* (the CN of the kick hook's service
    certificate, its user name under ``use_identity_as_username``), allowed to send commands
    and read the answers; no password (Mosquitto checks none for certificate clients); every
    default access deny."""
    configuration = {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                             "subscribe": False, "unsubscribe": False},
        "clients": [{"username": admin, "textname": "fleet serve mosquitto-kick",
                     "roles": [{"rolename": KICK_ROLE}]}],
        "groups": [],
        "roles": [{"rolename": KICK_ROLE, "acls": [
            {"acltype": "publishClientSend", "topic": DYNSEC_TOPIC, "allow": True},
            {"acltype": "subscribeLiteral", "topic": DYNSEC_RESPONSE_TOPIC, "allow": True},
            {"acltype": "publishClientReceive", "topic": DYNSEC_RESPONSE_TOPIC, "allow": True},
        ]}],
    }
    return json.dumps(configuration, indent=2) + "\n"


def acl(policy: Policy, *, devices: Mapping[str, str], services: Iterable[str]) -> str:
    """The ACL file for *policy*; *devices* maps each device id to its group."""
    rules = policy.roles
    lines = ["# Written by `fleet export mosquitto` from the topic policy; re-run it when",
             "# devices or services are added."]
    device = rules.get("device")
    if device is not None:
        patterns: dict[str, list[str]] = {}
        grouped: dict[str, list[str]] = {}
        for action, templates in (("publish", device.publish), ("subscribe", device.subscribe)):
            for template in templates:
                names = _placeholders(template)
                if names <= {"device_id"}:
                    patterns.setdefault(template.replace("{device_id}", "%u"), []).append(action)
                else:
                    grouped.setdefault(template, []).append(action)
        lines += ["", *(f"pattern {_access(a)} {t}" for t, a in patterns.items())]
        for device_id, group in sorted(devices.items()):
            topics = [f"topic {_access(a)} {t.format(device_id=device_id, group=group)}"
                      for t, a in grouped.items()]
            if topics:
                lines += ["", f"user {device_id}", *topics]
    service = rules.get("service")
    if service is not None:
        fixed: dict[str, list[str]] = {}
        for action, templates in (("publish", service.publish),
                                  ("subscribe", service.subscribe)):
            for template in templates:
                if not _placeholders(template):  # Fleet grants no template with a gap
                    fixed.setdefault(template, []).append(action)
        for name in sorted(set(services)):
            lines += ["", f"user {name}", *(f"topic {_access(a)} {t}" for t, a in fixed.items())]
    return "\n".join(lines) + "\n"


def _placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _access(actions: list[str]) -> str:
    return _ACCESS[tuple(sorted(set(actions)))]
