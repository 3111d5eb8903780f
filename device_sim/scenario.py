"""A scenario: how many devices, how they behave, and what happens to them during a run.

Read from a TOML file (keys at the top level or under ``[scenario]``) and overridden by flags.
Durations are written like Fleet's settings (``250ms``, ``30s``, ``2m``) or as seconds.

    devices = 50
    duration = "30s"
    ramp = 25                  # devices started per second (0: as fast as the limits allow)
    telemetry_interval = "5s"
    payload_size = 64
    cert_lifetime = "12s"      # what the EST service is expected to issue
    revoke = 2                 # devices revoked by the operator during the run
    broker_restart_at = "12s"
    misbehaving = 0.08         # share of the devices that misbehave
    idevid = true              # enroll with manufacturer certificates, not tokens

Configuration, not the device side: it reads durations with Fleet's own parser so that a
scenario is written like Fleet's settings. Names are checked against the device id syntax of
the design contract (not Fleet's code), so a bad prefix is refused here, naming the key, rather
than in every enrollment.
"""

from __future__ import annotations

import enum
import re
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, cast

from device_sim.crypto import KEY_TYPES
from fleet.errors import ConfigError
from fleet.settings import parse_duration


class ScenarioError(ValueError):
    """A scenario value that cannot be used; the message names the key."""


class Misbehavior(enum.StrEnum):
    """What a misbehaving device tries; the system must refuse every one of them."""

    FOREIGN_TOPIC = "foreign-topic"
    """Publish to and subscribe on another device's topics."""
    SPOOF_CLIENT_ID = "spoof-client-id"
    """Connect with a valid certificate but another device's client id."""
    EXPIRED_CERTIFICATE = "expired-certificate"
    """Keep using a certificate after it expired (to connect and to re-enroll)."""
    FOREIGN_CA = "foreign-ca"
    """Present a certificate for another device's identity issued by a foreign CA."""


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A device id, group or label: a letter or digit, then letters, digits, ``.``, ``_``, ``-``
(one MQTT topic level, one URL path segment)."""
MAX_PREFIX = 40
"""A device id is ``<prefix>-<run id>-<index>``: the prefix leaves room for the rest."""
MAX_NAME = 64

_ZERO = re.compile(r"\s*0+(\.0*)?\s*(ms|s|m|h|d)?\s*")
DURATION_KEYS = frozenset({
    "duration", "telemetry_interval", "command_interval", "cert_lifetime", "revoke_at",
    "broker_restart_at", "connect_timeout", "drain", "backoff_initial", "backoff_max",
})


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything a run does, validated. Times are in seconds."""

    devices: int = 100
    duration: float = 60.0
    ramp: float = 50.0
    telemetry_interval: float = 10.0
    payload_size: int = 64
    telemetry_qos: int = 1
    command_interval: float = 30.0
    cert_lifetime: float | None = None
    renewal_fraction: float = 2 / 3
    renewal_jitter: float = 0.1
    rekey: bool = True
    key_type: str = "p256"
    revoke: int = 0
    revoke_at: float | None = None
    broker_restart_at: float | None = None
    misbehaving: float = 0.0
    misbehaviors: tuple[Misbehavior, ...] = tuple(Misbehavior)
    group: str = "sim"
    device_prefix: str = "sim"
    keepalive: int = 30
    enroll_concurrency: int = 32
    connect_concurrency: int = 64
    connect_timeout: float = 10.0
    drain: float = 5.0
    backoff_initial: float = 0.5
    backoff_max: float = 15.0
    seed: int | None = None
    store_dir: Path | None = None
    est_label: str | None = None
    idevid: bool = False
    """Devices leave the factory with a manufacturer certificate (IEEE 802.1AR IDevID) from a
    test vendor CA and enroll with it (RFC 7030 3.3.2) instead of a bootstrap token."""

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def misbehaving_devices(self) -> int:
        """How many of :attr:`devices` misbehave (at least one when the share is above 0)."""
        if self.misbehaving <= 0:
            return 0
        return max(1, round(self.devices * self.misbehaving))

    @property
    def well_behaved_devices(self) -> int:
        return self.devices - self.misbehaving_devices

    @property
    def effective_revoke_at(self) -> float:
        """When the operator revokes (default: 60 % into the run)."""
        return self.revoke_at if self.revoke_at is not None else round(self.duration * 0.6, 3)

    def with_overrides(self, **changes: Any) -> Scenario:
        """A copy with flag values applied; ``None`` means "not given"."""
        given = {key: _coerce(key, value) for key, value in changes.items() if value is not None}
        try:
            return replace(self, **given) if given else self
        except TypeError as exc:
            raise ScenarioError(str(exc)) from None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(v) for v in value]
            out[item.name] = value
        return out


SCENARIO_KEYS = frozenset(item.name for item in fields(Scenario))


def load_scenario(path: Path, **overrides: Any) -> Scenario:
    """Read a scenario file; *overrides* (flags) win over the file."""
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ScenarioError(f"scenario file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario file {path} is not valid TOML: {exc}") from None
    table = document.get("scenario", document)
    if not isinstance(table, dict):
        raise ScenarioError("[scenario] must be a table")
    unknown = sorted(set(table) - SCENARIO_KEYS)
    if unknown:
        raise ScenarioError(f"unknown scenario key(s) in {path}: {', '.join(unknown)}")
    values = {key: _coerce(key, value) for key, value in table.items()}
    values.update({k: _coerce(k, v) for k, v in overrides.items() if v is not None})
    try:
        return Scenario(**values)
    except TypeError as exc:
        raise ScenarioError(str(exc)) from None


def seconds(value: Any, *, key: str) -> float:
    """A duration given as ``"30s"``/``"250ms"`` or as a number of seconds."""
    if isinstance(value, bool):
        raise ScenarioError(f"{key}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if _ZERO.fullmatch(str(value)):
        return 0.0
    try:
        return parse_duration(str(value), key=key).total_seconds()
    except ConfigError as exc:
        raise ScenarioError(f"{key}: {exc.message}") from None


def _coerce(key: str, value: Any) -> Any:
    if key in DURATION_KEYS:
        return seconds(value, key=key)
    if key == "misbehaviors":
        items = value.split(",") if isinstance(value, str) else value
        try:
            return tuple(Misbehavior(str(item).strip()) for item in items if str(item).strip())
        except ValueError:
            choices = ", ".join(m.value for m in Misbehavior)
            raise ScenarioError(f"misbehaviors: choose from {choices}") from None
    if key == "store_dir":
        return Path(value) if value else None
    return value


def _validate(s: Scenario) -> None:
    def bad(key: str, reason: str) -> ScenarioError:
        return ScenarioError(f"{key} = {getattr(s, key)!r}: {reason}")

    def number(key: str, *, integer: bool = False) -> float:
        value: Any = getattr(s, key)
        kinds: tuple[type, ...] = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise bad(key, "expected an integer" if integer else "expected a number")
        return float(cast(float, value))

    if number("devices", integer=True) < 1:
        raise bad("devices", "must be at least 1")
    for key in ("duration", "telemetry_interval", "connect_timeout", "backoff_initial",
                "backoff_max"):
        if number(key) <= 0:
            raise bad(key, "must be greater than zero")
    for key in ("ramp", "command_interval", "drain"):
        if number(key) < 0:
            raise bad(key, "must not be negative")
    if s.backoff_initial > s.backoff_max:
        raise bad("backoff_initial", "must not exceed backoff_max")
    if not 16 <= number("payload_size", integer=True) <= 256 * 1024:
        raise bad("payload_size", "must be between 16 and 262144 bytes")
    if s.telemetry_qos not in (0, 1):
        raise bad("telemetry_qos", "use 0 or 1")
    if s.cert_lifetime is not None and number("cert_lifetime") <= 0:
        raise bad("cert_lifetime", "must be greater than zero")
    if not 0 < number("renewal_fraction") < 1:
        raise bad("renewal_fraction", "must be between 0 and 1")
    if not 0 <= number("renewal_jitter") < 0.5:
        raise bad("renewal_jitter", "must be between 0 and 0.5")
    if s.key_type not in KEY_TYPES:
        raise bad("key_type", f"use one of {', '.join(KEY_TYPES)}")
    if not 0 <= number("misbehaving") <= 0.5:
        raise bad("misbehaving", "is a share of the devices between 0 and 0.5")
    if s.misbehaving > 0 and not s.misbehaviors:
        raise bad("misbehaviors", "name at least one misbehavior")
    if number("revoke", integer=True) < 0:
        raise bad("revoke", "must not be negative")
    if s.revoke > s.well_behaved_devices:
        raise bad("revoke", f"only {s.well_behaved_devices} well-behaved devices to revoke")
    if s.revoke and not 0 < s.effective_revoke_at < s.duration:
        raise bad("revoke_at", "must fall inside the run")
    if s.broker_restart_at is not None and not 0 < number("broker_restart_at") < s.duration:
        raise bad("broker_restart_at", "must fall inside the run")
    if not 1 <= number("keepalive", integer=True) <= 65535:
        raise bad("keepalive", "must be 1..65535 seconds")
    for key in ("enroll_concurrency", "connect_concurrency"):
        if number(key, integer=True) < 1:
            raise bad(key, "must be at least 1")
    def name(key: str, limit: int) -> bool:
        value: Any = getattr(s, key)
        return isinstance(value, str) and len(value) <= limit and bool(NAME.fullmatch(value))

    for key in ("group", "device_prefix"):
        if not name(key, MAX_PREFIX):
            raise bad(key, f"use up to {MAX_PREFIX} of A-Z a-z 0-9 . _ - (a valid device-id "
                      "prefix)")
    if s.est_label is not None and not name("est_label", MAX_NAME):
        raise bad("est_label", "not a valid EST label")
    if not isinstance(s.idevid, bool):
        raise bad("idevid", "expected true or false")
