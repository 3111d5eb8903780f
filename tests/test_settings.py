"""Settings: config/fleet.toml defaults, FLEET_* overrides and validation naming the bad key."""

from __future__ import annotations

import copy
import json
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.errors import ConfigError
from fleet.settings import (
    DEFAULT_CONFIG,
    METRICS_OFF,
    RESERVED_LABELS,
    format_duration,
    load_settings,
    parse_duration,
)

DEFAULTS = tomllib.loads(DEFAULT_CONFIG.read_text())


def test_defaults_load_from_the_shipped_config() -> None:
    s = load_settings(environ={})
    assert s.config_file == DEFAULT_CONFIG
    assert s.data_dir == Path("fleet-data")
    assert s.trust_domain == DEFAULTS["fleet"]["trust_domain"] == "fleet.local"
    assert s.organization == "Fleet"
    assert s.database_url == ""
    assert s.ca_key_type == "p256"
    assert s.device_lifetime == timedelta(days=30)
    assert s.service_lifetime == timedelta(days=90)
    assert s.renewal_fraction == pytest.approx(0.6667)
    assert s.hostnames == ("localhost", "127.0.0.1")
    assert s.token_ttl == timedelta(hours=24)
    assert s.token_uses == 1
    assert s.est_port == 8443
    assert s.broker_port == 8883
    assert s.revocation_poll_interval == timedelta(milliseconds=250)
    assert s.est_labels == {}
    assert s.acl_file == DEFAULT_CONFIG.parent / "acl.toml"
    assert s.acl_file.exists()


def test_default_database_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    s = load_settings(environ={"FLEET_DATA_DIR": str(tmp_path)})
    assert s.effective_database_url == f"sqlite:///{tmp_path.resolve() / 'fleet.db'}"
    assert s.ca_dir == tmp_path / "ca"
    assert s.server_dir == tmp_path / "server"


@pytest.mark.parametrize(("variable", "value", "attribute", "expected"), [
    pytest.param("FLEET_DATA_DIR", "/srv/fleet", "data_dir", Path("/srv/fleet"), id="data-dir"),
    pytest.param("FLEET_TRUST_DOMAIN", "iot.example.com", "trust_domain", "iot.example.com",
                 id="trust-domain"),
    pytest.param("FLEET_DATABASE_URL", "postgresql+psycopg://u@db/fleet", "database_url",
                 "postgresql+psycopg://u@db/fleet", id="database-url"),
    pytest.param("FLEET_BROKER_PORT", "1883", "broker_port", 1883, id="broker-port"),
    pytest.param("FLEET_EST_PORT", "0", "est_port", 0, id="est-port-any"),
    pytest.param("FLEET_CERTIFICATES_DEVICE_LIFETIME", "90s", "device_lifetime",
                 timedelta(seconds=90), id="device-lifetime"),
    pytest.param("FLEET_CERTIFICATES_RENEWAL_FRACTION", "0.5", "renewal_fraction", 0.5,
                 id="renewal-fraction"),
    pytest.param("FLEET_CERTIFICATES_HOSTNAMES", "a.example, 10.0.0.1", "hostnames",
                 ("a.example", "10.0.0.1"), id="hostnames-list"),
    pytest.param("FLEET_BROKER_REVOCATION_POLL_INTERVAL", "100ms", "revocation_poll_interval",
                 timedelta(milliseconds=100), id="poll-interval"),
    pytest.param("FLEET_TOKENS_TTL", "15m", "token_ttl", timedelta(minutes=15), id="token-ttl"),
    pytest.param("FLEET_TOKENS_USES", "5", "token_uses", 5, id="token-uses"),
    pytest.param("FLEET_CA_KEY_TYPE", "ed25519", "ca_key_type", "ed25519", id="ca-key-type"),
    pytest.param("FLEET_EST_LABELS", "factory-a=sensors, line2=gateways", "est_labels",
                 {"factory-a": "sensors", "line2": "gateways"}, id="est-labels"),
    pytest.param("FLEET_CERTIFICATES_PUBLIC_BASE_URL", "https://fleet.example.com",
                 "public_base_url", "https://fleet.example.com", id="public-base-url"),
    pytest.param("FLEET_BROKER_PERSISTENCE", "false", "persistence", False,
                 id="persistence-false"),
    pytest.param("FLEET_BROKER_PERSISTENCE", "On", "persistence", True, id="persistence-on"),
])
def test_environment_overrides_the_config(
    variable: str, value: str, attribute: str, expected: object,
) -> None:
    assert getattr(load_settings(environ={variable: value}), attribute) == expected


def test_environment_overrides_a_config_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, {("broker", "port"): 18883})
    assert load_settings(path, environ={}).broker_port == 18883
    assert load_settings(path, environ={"FLEET_BROKER_PORT": "28883"}).broker_port == 28883


def test_fleet_config_variable_selects_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, {("fleet", "trust_domain"): "plant.example"})
    assert load_settings(environ={"FLEET_CONFIG": str(path)}).trust_domain == "plant.example"


def test_unrelated_fleet_variables_are_ignored() -> None:
    load_settings(environ={"FLEET_CA_PASSPHRASE": "x", "FLEET_TEST_POSTGRES_URL": "y"})


def test_labels_from_the_config_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, {("est", "labels", "line-1"): "sensors"})
    assert load_settings(path, environ={}).est_labels == {"line-1": "sensors"}


BAD_ENV = [
    pytest.param("FLEET_CERTIFICATES_DEVICE_LIFETIME", "30 days",
                 "FLEET_CERTIFICATES_DEVICE_LIFETIME", id="duration-words"),
    pytest.param("FLEET_CERTIFICATES_DEVICE_LIFETIME", "-5s", "FLEET_CERTIFICATES_DEVICE_LIFETIME",
                 id="duration-negative"),
    pytest.param("FLEET_CERTIFICATES_DEVICE_LIFETIME", "0s", "FLEET_CERTIFICATES_DEVICE_LIFETIME",
                 id="duration-zero"),
    pytest.param("FLEET_TOKENS_TTL", "1w", "FLEET_TOKENS_TTL", id="duration-unknown-unit"),
    pytest.param("FLEET_BROKER_PORT", "70000", "broker.port", id="port-70000"),
    pytest.param("FLEET_EST_PORT", "-1", "est.port", id="port-negative"),
    pytest.param("FLEET_EST_METRICS_PORT", "65536", "est.metrics_port", id="metrics-port-65536"),
    pytest.param("FLEET_BROKER_PORT", "eighty", "FLEET_BROKER_PORT", id="port-not-a-number"),
    pytest.param("FLEET_BROKER_PORT", "8883.5", "FLEET_BROKER_PORT", id="port-fraction"),
    pytest.param("FLEET_CERTIFICATES_RENEWAL_FRACTION", "1.5", "certificates.renewal_fraction",
                 id="renewal-fraction-1.5"),
    pytest.param("FLEET_CERTIFICATES_RENEWAL_FRACTION", "0", "certificates.renewal_fraction",
                 id="renewal-fraction-0"),
    pytest.param("FLEET_CERTIFICATES_RENEWAL_FRACTION", "half",
                 "FLEET_CERTIFICATES_RENEWAL_FRACTION", id="renewal-fraction-word"),
    pytest.param("FLEET_CERTIFICATES_RENEWAL_FRACTION", "nan", "certificates.renewal_fraction",
                 id="renewal-fraction-nan"),
    pytest.param("FLEET_TRUST_DOMAIN", "Fleet.Local", "fleet.trust_domain",
                 id="trust-domain-upper-case"),
    pytest.param("FLEET_TRUST_DOMAIN", "fleet local", "fleet.trust_domain",
                 id="trust-domain-space"),
    pytest.param("FLEET_TRUST_DOMAIN", "fleet.local/x", "fleet.trust_domain",
                 id="trust-domain-slash"),
    pytest.param("FLEET_TRUST_DOMAIN", "", "fleet.trust_domain", id="trust-domain-empty"),
    pytest.param("FLEET_DATABASE_URL", "mysql://db/fleet", "database.url", id="database-mysql"),
    pytest.param("FLEET_CA_KEY_TYPE", "rsa1024", "ca.key_type", id="ca-key-type"),
    pytest.param("FLEET_CERTIFICATES_PUBLIC_BASE_URL", "fleet.example.com",
                 "certificates.public_base_url", id="public-base-url-no-scheme"),
    pytest.param("FLEET_CERTIFICATES_HOSTNAMES", " , ", "certificates.hostnames",
                 id="hostnames-empty"),
    pytest.param("FLEET_TOKENS_USES", "0", "tokens.uses", id="token-uses-0"),
    pytest.param("FLEET_BROKER_MAX_CONNECTIONS", "0", "broker.max_connections",
                 id="max-connections-0"),
    pytest.param("FLEET_EST_LABELS", "simpleenroll=sensors", "est.labels",
                 id="label-simpleenroll"),
    pytest.param("FLEET_EST_LABELS", "cacerts=sensors", "est.labels", id="label-cacerts"),
    pytest.param("FLEET_EST_LABELS", "a/b=sensors", "est.labels", id="label-slash"),
    pytest.param("FLEET_EST_LABELS", "line1=bad group", "est.labels", id="label-bad-group"),
    pytest.param("FLEET_EST_LABELS", "line1", "FLEET_EST_LABELS", id="label-no-equals"),
    pytest.param("FLEET_BROKER_PERSISTENCE", "maybe", "FLEET_BROKER_PERSISTENCE",
                 id="persistence-not-a-boolean"),
    pytest.param("FLEET_BROKER_METRICS_PORT", "70000", "broker.metrics_port",
                 id="metrics-port-70000"),
    pytest.param("FLEET_BROKER_METRICS_PORT", "-2", "broker.metrics_port",
                 id="metrics-port-below-off"),
    pytest.param("FLEET_EST_METRICS_PORT", "-2", "est.metrics_port",
                 id="est-metrics-port-below-off"),
    pytest.param("FLEET_LOG_LEVEL", "loud", "log.level", id="log-level-unknown"),
    pytest.param("FLEET_LOG_FORMAT", "xml", "log.format", id="log-format-unknown"),
]


@pytest.mark.parametrize("variable", ["FLEET_EST_METRICS_PORT", "FLEET_BROKER_METRICS_PORT"])
@pytest.mark.parametrize(("value", "port"), [("-1", -1), ("0", 0)])
def test_metrics_port_minus_one_is_off_and_zero_a_free_port(variable: str, value: str,
                                                            port: int) -> None:
    settings = load_settings(environ={variable: value})
    attribute = "est_metrics_port" if "EST" in variable else "broker_metrics_port"
    assert getattr(settings, attribute) == port == (METRICS_OFF if value == "-1" else 0)


def test_log_level_and_format_default_to_info_text_and_follow_the_environment() -> None:
    assert (load_settings(environ={}).log_level, load_settings(environ={}).log_format) \
        == ("info", "text")
    settings = load_settings(environ={"FLEET_LOG_LEVEL": "debug", "FLEET_LOG_FORMAT": "json"})
    assert (settings.log_level, settings.log_format) == ("debug", "json")


@pytest.mark.parametrize(("variable", "value", "key"), BAD_ENV)
def test_bad_environment_value_names_the_key_and_value(variable: str, value: str,
                                                       key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={variable: value})
    message = str(info.value)
    assert info.value.key == key, message
    assert key in message, message
    if variable == "FLEET_EST_LABELS":
        assert value.split("=")[0].split("/")[0] in message
    elif value.strip(" ,"):  # an empty list is shown as parsed: ()
        assert value in message, message


def test_group_commit_bounds_default_to_64_requests_and_2ms_and_follow_the_environment(
        ) -> None:
    settings = load_settings(environ={})
    assert settings.database_group_commit_max == 64
    assert settings.database_group_commit_wait == timedelta(milliseconds=2)
    settings = load_settings(environ={"FLEET_DATABASE_GROUP_COMMIT_MAX": "8",
                                      "FLEET_DATABASE_GROUP_COMMIT_WAIT": "10ms"})
    assert settings.database_group_commit_max == 8
    assert settings.database_group_commit_wait == timedelta(milliseconds=10)
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"FLEET_DATABASE_GROUP_COMMIT_MAX": "0"})
    assert info.value.key == "database.group_commit_max"


def test_revocation_max_staleness_must_be_longer_than_the_poll_interval() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"FLEET_BROKER_REVOCATION_MAX_STALENESS": "250ms"})
    assert info.value.key == "broker.revocation_max_staleness"
    assert "longer than broker.revocation_poll_interval" in str(info.value)
    assert load_settings(environ={"FLEET_BROKER_REVOCATION_MAX_STALENESS": "251ms"}) \
        .revocation_max_staleness.total_seconds() == 0.251


def test_ocsp_responder_lifetime_must_be_at_least_twice_next_update() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"FLEET_OCSP_NEXT_UPDATE": "1h",
                               "FLEET_OCSP_RESPONDER_LIFETIME": "119m"})
    assert info.value.key == "ocsp.responder_lifetime"
    assert "twice ocsp.next_update" in str(info.value)
    assert load_settings(environ={"FLEET_OCSP_NEXT_UPDATE": "1h",
                                  "FLEET_OCSP_RESPONDER_LIFETIME": "2h"}) \
        .ocsp_responder_lifetime.total_seconds() == 7200


@pytest.mark.parametrize(("label"), sorted(RESERVED_LABELS))
def test_reserved_labels_are_refused_from_the_config_file(tmp_path: Path, label: str) -> None:
    path = write_config(tmp_path, {("est", "labels", label): "g"})
    with pytest.raises(ConfigError, match=f"est.labels.*{label}.*not allowed"):
        load_settings(path, environ={})


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | list):
        return json.dumps(value)
    return repr(value)


def dump_toml(document: dict[str, Any]) -> str:
    """Enough of a TOML writer for fleet.toml (scalars, string lists, one level of sub-tables)."""
    lines = [f"{k} = {toml_value(v)}" for k, v in document.items() if not isinstance(v, dict)]
    for section, table in document.items():
        if not isinstance(table, dict):
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
        for sub, values in table.items():
            if isinstance(values, dict):
                lines.append(f"[{section}.{sub}]")
                lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def write_config(tmp_path: Path, changes: dict[tuple[str, ...], object]) -> Path:
    """The shipped defaults with *changes* applied, keyed by path ("broker", "port")."""
    document = copy.deepcopy(DEFAULTS)
    for path, value in changes.items():
        table = document
        for part in path[:-1]:
            table = table.setdefault(part, {})
        table[path[-1]] = value
    target = tmp_path / "fleet.toml"
    target.write_text(dump_toml(document))
    return target


def test_toml_writer_reproduces_the_defaults(tmp_path: Path) -> None:
    assert load_settings(write_config(tmp_path, {}), environ={}).broker_port == 8883


BAD_TOML = [
    pytest.param(("fleet", "colour"), "blue", "fleet.colour", "'blue'", "unknown setting",
                 id="unknown-key"),
    pytest.param(("bogus", "key"), 1, "bogus.key", "1", "unknown setting", id="unknown-section"),
    pytest.param(("stray",), 1, "stray", "1", "section", id="key-outside-a-section"),
    pytest.param(("broker", "port"), 70000, "broker.port", "70000", "port", id="port-70000"),
    pytest.param(("broker", "port"), "x", "broker.port", "'x'", "integer", id="port-string"),
    pytest.param(("broker", "port"), 8883.5, "broker.port", "8883.5", "integer",
                 id="port-fraction"),
    pytest.param(("broker", "port"), True, "broker.port", "True", "integer", id="port-boolean"),
    pytest.param(("certificates", "renewal_fraction"), 1.5, "certificates.renewal_fraction",
                 "1.5", "between 0 and 1", id="renewal-fraction-1.5"),
    pytest.param(("certificates", "renewal_fraction"), True, "certificates.renewal_fraction",
                 "True", "number", id="renewal-fraction-boolean"),
    pytest.param(("certificates", "device_lifetime"), "thirty days",
                 "certificates.device_lifetime", "'thirty days'", "duration",
                 id="bad-duration"),
    pytest.param(("certificates", "hostnames"), 5, "certificates.hostnames", "5", "list",
                 id="hostnames-not-a-list"),
    pytest.param(("fleet", "trust_domain"), 7, "fleet.trust_domain", "7", "string",
                 id="trust-domain-not-a-string"),
    pytest.param(("fleet", "trust_domain"), "-fleet", "fleet.trust_domain", "'-fleet'",
                 "lower-case", id="trust-domain-leading-hyphen"),
    pytest.param(("est", "labels", "simpleenroll"), "sensors", "est.labels", "simpleenroll",
                 "not allowed", id="label-simpleenroll"),
    pytest.param(("est", "labels"), "x", "est.labels", "'x'", "label=group",
                 id="labels-not-a-table"),
    pytest.param(("broker", "persistence"), "yes please", "broker.persistence", "'yes please'",
                 "boolean", id="persistence-not-a-boolean"),
]


@pytest.mark.parametrize(("path", "raw", "key", "value", "reason"), BAD_TOML)
def test_bad_config_file_value_names_the_key_and_value(
    tmp_path: Path, path: tuple[str, ...], raw: object, key: str, value: str, reason: str,
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write_config(tmp_path, {path: raw}), environ={})
    message = str(info.value)
    assert info.value.key == key, message
    for part in (key, value, reason):
        assert part in message, message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_config_file_that_is_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text("[fleet\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path, environ={})


def test_config_file_missing_a_key(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(DEFAULT_CONFIG.read_text().replace('trust_domain = "fleet.local"\n', ""))
    with pytest.raises(ConfigError, match=r"fleet\.trust_domain.*missing"):
        load_settings(path, environ={})


def test_with_overrides_applies_and_revalidates() -> None:
    s = load_settings(environ={})
    assert s.with_overrides(broker_port=1884, est_port=None).broker_port == 1884
    assert s.with_overrides(est_port=None) is s
    with pytest.raises(ConfigError, match=r"broker\.port=70000"):
        s.with_overrides(broker_port=70000)


def test_settings_are_frozen() -> None:
    s = load_settings(environ={})
    with pytest.raises(AttributeError):
        s.broker_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(("text", "expected"), [
    ("250ms", timedelta(milliseconds=250)),
    ("60s", timedelta(seconds=60)),
    ("15m", timedelta(minutes=15)),
    ("24h", timedelta(hours=24)),
    ("30d", timedelta(days=30)),
    ("1.5h", timedelta(minutes=90)),
    (" 10 s ", timedelta(seconds=10)),
    ("45", timedelta(seconds=45)),
])
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "s", "10 seconds", "-1s", "0", "0ms", "1e3s", "1h30m"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match=r"duration|greater than zero"):
        parse_duration(text, key="duration")


@given(st.integers(min_value=1, max_value=10**7))
def test_format_duration_roundtrips(milliseconds: int) -> None:
    delta = timedelta(milliseconds=milliseconds)
    assert parse_duration(format_duration(delta)) == delta
