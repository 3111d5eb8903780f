"""One settings object: a config file, overridden by FLEET_* variables, then by flags.

The config file is --config or FLEET_CONFIG; without either, the one shipped in the package
(fleet/config/fleet.toml, found with importlib.resources; config/ in the repository links to
it). A relative ``broker.acl_file`` in a config file is relative to that file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from fleet.errors import ConfigError
from fleet.logs import FORMATS as LOG_FORMATS
from fleet.logs import LEVELS as LOG_LEVELS
from fleet.pki.identity import DEVICE_ID_PATTERN, TRUST_DOMAIN_PATTERN
from fleet.pki.keys import KEY_TYPES

DEFAULT_CONFIG = Path(str(resources.files("fleet").joinpath("config", "fleet.toml")))
"""The configuration shipped in the package (installed as package data)."""
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, *, key: str = "duration") -> timedelta:
    """Parse ``250ms``, ``60s``, ``15m``, ``24h`` or ``30d`` (a bare number means seconds)."""
    value = str(text).strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        value += "s"
    match = _DURATION.match(value)
    if not match:
        raise ConfigError(key, text, "not a duration; write e.g. 250ms, 60s, 15m, 24h or 30d")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ConfigError(key, text, "must be greater than zero")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit in ("d", "h", "m", "s"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    milliseconds = delta / timedelta(milliseconds=1)  # exact: timedelta counts microseconds
    if milliseconds == int(milliseconds):
        return f"{int(milliseconds)}ms"
    return f"{seconds:.6f}".rstrip("0") + "s"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting Fleet reads, validated."""

    data_dir: Path
    trust_domain: str
    organization: str
    database_url: str
    database_busy_timeout: timedelta
    database_group_commit_max: int
    database_group_commit_wait: timedelta
    ca_key_type: str
    root_lifetime: timedelta
    issuing_lifetime: timedelta
    passphrase_file: Path
    device_lifetime: timedelta
    service_lifetime: timedelta
    server_lifetime: timedelta
    renewal_fraction: float
    superseded_grace: timedelta
    public_base_url: str
    hostnames: tuple[str, ...]
    token_ttl: timedelta
    token_uses: int
    crl_next_update: timedelta
    ocsp_next_update: timedelta
    ocsp_responder_lifetime: timedelta
    est_host: str
    est_port: int
    est_workers: int
    est_max_body_bytes: int
    est_max_concurrent_requests: int
    est_auth_failures_per_minute: int
    est_metrics_port: int
    est_handshake_timeout: timedelta
    est_header_timeout: timedelta
    est_body_timeout: timedelta
    est_body_min_rate: int
    est_keepalive_timeout: timedelta
    est_max_connections: int
    est_max_connections_per_source: int
    est_max_requests_per_source: int
    est_labels: Mapping[str, str]
    broker_host: str
    broker_port: int
    acl_file: Path
    handshake_timeout: timedelta
    connect_timeout: timedelta
    revocation_poll_interval: timedelta
    revocation_push: bool
    max_connections: int
    max_pending_connections: int
    max_pending_per_source: int
    max_queued_messages: int
    max_queued_bytes: int
    max_packet_bytes: int
    max_subscriptions: int
    max_retained_messages: int
    max_retained_bytes: int
    qos2_release_timeout: timedelta
    session_expiry: timedelta
    revocation_max_staleness: timedelta
    broker_metrics_port: int
    persistence: bool
    persistence_interval: timedelta
    audit_refusal_interval: timedelta
    audit_refusal_sources: int
    audit_checkpoint_interval: timedelta
    audit_checkpoint_key_file: Path
    log_level: str
    log_format: str
    config_file: Path = field(default=DEFAULT_CONFIG)

    # Paths inside the data dir, in one place.
    @property
    def ca_dir(self) -> Path:
        return self.data_dir / "ca"

    @property
    def server_dir(self) -> Path:
        return self.data_dir / "server"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'fleet.db').resolve()}"

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with CLI flag values applied (None means "not given") and re-validated."""
        given = {k: v for k, v in changes.items() if v is not None}
        return _validated(replace(self, **given)) if given else self


# (section, key) in fleet.toml -> attribute of Settings and its parser.
_SCHEMA: dict[tuple[str, str], tuple[str, str]] = {
    ("fleet", "data_dir"): ("data_dir", "path"),
    ("fleet", "trust_domain"): ("trust_domain", "str"),
    ("fleet", "organization"): ("organization", "str"),
    ("database", "url"): ("database_url", "str"),
    ("database", "busy_timeout"): ("database_busy_timeout", "duration"),
    ("database", "group_commit_max"): ("database_group_commit_max", "int"),
    ("database", "group_commit_wait"): ("database_group_commit_wait", "duration"),
    ("ca", "key_type"): ("ca_key_type", "str"),
    ("ca", "root_lifetime"): ("root_lifetime", "duration"),
    ("ca", "issuing_lifetime"): ("issuing_lifetime", "duration"),
    ("ca", "passphrase_file"): ("passphrase_file", "path"),
    ("certificates", "device_lifetime"): ("device_lifetime", "duration"),
    ("certificates", "service_lifetime"): ("service_lifetime", "duration"),
    ("certificates", "server_lifetime"): ("server_lifetime", "duration"),
    ("certificates", "renewal_fraction"): ("renewal_fraction", "float"),
    ("certificates", "superseded_grace"): ("superseded_grace", "grace"),
    ("certificates", "public_base_url"): ("public_base_url", "str"),
    ("certificates", "hostnames"): ("hostnames", "list"),
    ("tokens", "ttl"): ("token_ttl", "duration"),
    ("tokens", "uses"): ("token_uses", "int"),
    ("crl", "next_update"): ("crl_next_update", "duration"),
    ("ocsp", "next_update"): ("ocsp_next_update", "duration"),
    ("ocsp", "responder_lifetime"): ("ocsp_responder_lifetime", "duration"),
    ("est", "host"): ("est_host", "str"),
    ("est", "port"): ("est_port", "int"),
    ("est", "workers"): ("est_workers", "int"),
    ("est", "max_body_bytes"): ("est_max_body_bytes", "int"),
    ("est", "max_concurrent_requests"): ("est_max_concurrent_requests", "int"),
    ("est", "auth_failures_per_minute"): ("est_auth_failures_per_minute", "int"),
    ("est", "metrics_port"): ("est_metrics_port", "int"),
    ("est", "handshake_timeout"): ("est_handshake_timeout", "duration"),
    ("est", "header_timeout"): ("est_header_timeout", "duration"),
    ("est", "body_timeout"): ("est_body_timeout", "duration"),
    ("est", "body_min_rate"): ("est_body_min_rate", "int"),
    ("est", "keepalive_timeout"): ("est_keepalive_timeout", "duration"),
    ("est", "max_connections"): ("est_max_connections", "int"),
    ("est", "max_connections_per_source"): ("est_max_connections_per_source", "int"),
    ("est", "max_requests_per_source"): ("est_max_requests_per_source", "int"),
    ("est", "labels"): ("est_labels", "table"),
    ("broker", "host"): ("broker_host", "str"),
    ("broker", "port"): ("broker_port", "int"),
    ("broker", "acl_file"): ("acl_file", "path"),
    ("broker", "handshake_timeout"): ("handshake_timeout", "duration"),
    ("broker", "connect_timeout"): ("connect_timeout", "duration"),
    ("broker", "revocation_poll_interval"): ("revocation_poll_interval", "duration"),
    ("broker", "revocation_push"): ("revocation_push", "bool"),
    ("broker", "max_connections"): ("max_connections", "int"),
    ("broker", "max_pending_connections"): ("max_pending_connections", "int"),
    ("broker", "max_pending_per_source"): ("max_pending_per_source", "int"),
    ("broker", "max_queued_messages"): ("max_queued_messages", "int"),
    ("broker", "max_queued_bytes"): ("max_queued_bytes", "int"),
    ("broker", "max_packet_bytes"): ("max_packet_bytes", "int"),
    ("broker", "max_subscriptions"): ("max_subscriptions", "int"),
    ("broker", "max_retained_messages"): ("max_retained_messages", "int"),
    ("broker", "max_retained_bytes"): ("max_retained_bytes", "int"),
    ("broker", "qos2_release_timeout"): ("qos2_release_timeout", "duration"),
    ("broker", "session_expiry"): ("session_expiry", "duration"),
    ("broker", "revocation_max_staleness"): ("revocation_max_staleness", "duration"),
    ("broker", "metrics_port"): ("broker_metrics_port", "int"),
    ("broker", "persistence"): ("persistence", "bool"),
    ("broker", "persistence_interval"): ("persistence_interval", "duration"),
    ("audit", "refusal_interval"): ("audit_refusal_interval", "duration"),
    ("audit", "refusal_sources"): ("audit_refusal_sources", "int"),
    ("audit", "checkpoint_interval"): ("audit_checkpoint_interval", "duration"),
    ("audit", "checkpoint_key_file"): ("audit_checkpoint_key_file", "path"),
    ("log", "level"): ("log_level", "str"),
    ("log", "format"): ("log_format", "str"),
}


def env_name(section: str, key: str) -> str:
    return f"FLEET_{key.upper()}" if section == "fleet" else f"FLEET_{section}_{key}".upper()


def _parse(kind: str, key: str, raw: Any) -> Any:
    if kind == "duration":
        return parse_duration(raw, key=key)
    if kind == "grace":  # a duration that may be zero ("at once")
        return timedelta(0) if str(raw).strip() in ("0", "0s") else parse_duration(raw, key=key)
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if str(raw).strip().lower() in ("true", "1", "yes", "on"):
            return True
        if str(raw).strip().lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(key, raw, "not a boolean (true or false)")
    if kind == "int":
        # TOML booleans are ints to Python and floats would be truncated: refuse both.
        if isinstance(raw, bool | float):
            raise ConfigError(key, raw, "not an integer")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(key, raw, "not an integer") from None
    if kind == "float":
        if isinstance(raw, bool):
            raise ConfigError(key, raw, "not a number")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ConfigError(key, raw, "not a number") from None
    if kind == "path":
        return Path(str(raw)).expanduser() if str(raw) else Path()
    if kind == "list":
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list):
            raise ConfigError(key, raw, "not a list")
        return tuple(str(i).strip() for i in items if str(i).strip())
    if kind == "table":
        if isinstance(raw, str):  # env form: "label=group,label2=group2"
            pairs = [p.split("=", 1) for p in raw.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ConfigError(key, raw, "write label=group pairs separated by commas")
            raw = {k.strip(): v.strip() for k, v in pairs}
        if not isinstance(raw, dict):
            raise ConfigError(key, raw, "not a table")
        return {str(k): str(v) for k, v in raw.items()}
    if not isinstance(raw, str):
        raise ConfigError(key, raw, "not a string")
    return raw


def load_settings(
    config_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the config file, apply FLEET_* overrides, and validate everything."""
    env = os.environ if environ is None else environ
    path = Path(config_file or env.get("FLEET_CONFIG") or DEFAULT_CONFIG)
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("config", str(path), "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", str(path), f"not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for section, table in document.items():
        if not isinstance(table, dict):
            raise ConfigError(section, table, "expected a [section]")
        for key, raw in table.items():
            if (section, key) not in _SCHEMA:
                raise ConfigError(f"{section}.{key}", raw, "unknown setting")
    for (section, key), (attribute, kind) in _SCHEMA.items():
        dotted = f"{section}.{key}"
        variable = env_name(section, key)
        if variable in env:
            values[attribute] = _parse(kind, variable, env[variable])
        elif key in document.get(section, {}):
            values[attribute] = _parse(kind, dotted, document[section][key])
        elif kind == "table":
            values[attribute] = {}
        else:
            raise ConfigError(dotted, None, f"missing from {path}")
    acl = values["acl_file"]
    if not acl.is_absolute() and env_name("broker", "acl_file") not in env:
        values["acl_file"] = path.resolve().parent / acl  # relative to the file it came from
    return _validated(Settings(config_file=path, **values))


def _validated(s: Settings) -> Settings:
    def bad(attribute: str, reason: str) -> ConfigError:
        section, key = next(sk for sk, (a, _) in _SCHEMA.items() if a == attribute)
        return ConfigError(f"{section}.{key}", getattr(s, attribute), reason)

    if not TRUST_DOMAIN_PATTERN.fullmatch(s.trust_domain):
        raise bad("trust_domain", "use lower-case letters, digits, dots and hyphens")
    if s.database_url and not s.database_url.startswith(("sqlite:///", "postgresql")):
        raise bad("database_url", "use sqlite:///PATH or postgresql+psycopg://...")
    if s.ca_key_type not in KEY_TYPES:
        raise bad("ca_key_type", f"use one of {', '.join(KEY_TYPES)}")
    if not 0 < s.renewal_fraction < 1:
        raise bad("renewal_fraction", "must be between 0 and 1")
    if s.public_base_url and not s.public_base_url.startswith(("http://", "https://")):
        raise bad("public_base_url", "must start with http:// or https://")
    if not s.hostnames:
        raise bad("hostnames", "name at least one hostname or IP address")
    for attribute in ("est_port", "broker_port"):
        if not 0 <= getattr(s, attribute) <= 65535:
            raise bad(attribute, "must be a port number 0-65535")
    for attribute in ("est_metrics_port", "broker_metrics_port"):
        if not METRICS_OFF <= getattr(s, attribute) <= 65535:
            raise bad(attribute, f"must be a port number 0-65535, or {METRICS_OFF} for off")
    if s.log_level not in LOG_LEVELS:
        raise bad("log_level", f"use one of {', '.join(LOG_LEVELS)}")
    if s.log_format not in LOG_FORMATS:
        raise bad("log_format", f"use one of {', '.join(LOG_FORMATS)}")
    for attribute in (
        "token_uses", "est_workers", "est_max_body_bytes", "est_max_concurrent_requests",
        "est_auth_failures_per_minute", "est_body_min_rate", "est_max_connections",
        "est_max_connections_per_source", "est_max_requests_per_source", "max_connections",
        "max_pending_connections", "max_pending_per_source", "max_queued_messages",
        "max_queued_bytes", "max_packet_bytes", "max_subscriptions", "max_retained_messages",
        "max_retained_bytes", "audit_refusal_sources", "database_group_commit_max",
    ):
        if getattr(s, attribute) < 1:
            raise bad(attribute, "must be at least 1")
    if s.max_packet_bytes > MQTT_MAX_PACKET_BYTES:
        raise bad("max_packet_bytes", f"MQTT 3.1.1 packets are at most {MQTT_MAX_PACKET_BYTES}")
    if s.max_packet_bytes > s.max_queued_bytes:
        raise bad("max_queued_bytes", "must be at least broker.max_packet_bytes")
    if s.max_packet_bytes > s.max_retained_bytes:
        raise bad("max_retained_bytes", "must be at least broker.max_packet_bytes")
    if s.revocation_max_staleness <= s.revocation_poll_interval:
        raise bad("revocation_max_staleness",
                  "must be longer than broker.revocation_poll_interval (else the broker "
                  "refuses new connections between two polls)")
    if s.ocsp_responder_lifetime < 2 * s.ocsp_next_update:
        raise bad("ocsp_responder_lifetime",
                  "must be at least twice ocsp.next_update (a responder is renewed at half its "
                  "lifetime, and no response may outlive the certificate that signed it)")
    for label, group in s.est_labels.items():
        if label in RESERVED_LABELS or not DEVICE_ID_PATTERN.fullmatch(label):
            raise bad("est_labels", f"label {label!r} is not allowed")
        if not DEVICE_ID_PATTERN.fullmatch(group):
            raise bad("est_labels", f"group {group!r} is not a valid group name")
    return s


MQTT_MAX_PACKET_BYTES = 268_435_455
"""The largest remaining length MQTT 3.1.1 can encode (2.2.3)."""
METRICS_OFF = -1
"""The ``est.metrics_port`` / ``broker.metrics_port`` that serves no metrics (0: a free port)."""

RESERVED_LABELS = frozenset({"cacerts", "simpleenroll", "simplereenroll", "csrattrs",
                             "serverkeygen", "fullcmc"})
"""RFC 7030 3.2.2: a CA label must not equal an operation path segment."""
