"""Scenarios from TOML files and flags; every bad value is refused with its key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_sim.scenario import Misbehavior, Scenario, ScenarioError, load_scenario, seconds


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


def test_defaults_are_a_valid_scenario() -> None:
    scenario = Scenario()
    assert scenario.devices == 100
    assert scenario.renewal_fraction == pytest.approx(2 / 3)
    assert scenario.key_type == "p256"
    assert scenario.misbehaving_devices == 0
    assert scenario.effective_revoke_at == pytest.approx(36.0)


def test_toml_under_a_scenario_table(tmp_path: Path) -> None:
    path = write(tmp_path, """
[scenario]
devices = 50
duration = "30s"
ramp = 25
telemetry_interval = "500ms"
cert_lifetime = "2m"
revoke = 2
revoke_at = 20
broker_restart_at = "12s"
misbehaving = 0.08
misbehaviors = ["foreign-topic", "foreign-ca"]
""")
    scenario = load_scenario(path)
    assert scenario.devices == 50
    assert scenario.duration == 30.0
    assert scenario.telemetry_interval == 0.5
    assert scenario.cert_lifetime == 120.0
    assert scenario.revoke_at == 20.0
    assert scenario.broker_restart_at == 12.0
    assert scenario.misbehaviors == (Misbehavior.FOREIGN_TOPIC, Misbehavior.FOREIGN_CA)
    assert scenario.misbehaving_devices == 4
    assert scenario.well_behaved_devices == 46


def test_toml_at_the_top_level_and_flags_override_it(tmp_path: Path) -> None:
    path = write(tmp_path, 'devices = 10\nduration = "1m"\nkey_type = "ed25519"\n')
    scenario = load_scenario(path, devices=20, duration=None, revoke=3)
    assert scenario.devices == 20  # the flag wins
    assert scenario.duration == 60.0  # None means "flag not given"
    assert scenario.key_type == "ed25519"
    assert scenario.revoke == 3


def test_with_overrides_parses_durations() -> None:
    scenario = Scenario().with_overrides(duration="90s", command_interval="0s", seed=None)
    assert scenario.duration == 90.0
    assert scenario.command_interval == 0.0


def test_a_small_share_still_makes_one_misbehaving_device() -> None:
    assert Scenario(devices=10, misbehaving=0.01).misbehaving_devices == 1


def test_scenario_refused_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"unknown scenario key.*devicez"):
        load_scenario(write(tmp_path, "devicez = 5\n"))


def test_scenario_refused_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(write(tmp_path, "devices = \n"))


def test_scenario_refused_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="not found"):
        load_scenario(tmp_path / "nope.toml")


@pytest.mark.parametrize(("changes", "key"), [
    ({"devices": 0}, "devices"),
    ({"devices": "ten"}, "devices"),
    ({"duration": 0}, "duration"),
    ({"revoke": 11, "devices": 10}, "revoke"),
    ({"revoke": 1, "revoke_at": 90.0, "duration": 60.0}, "revoke_at"),
    ({"broker_restart_at": 60.0, "duration": 60.0}, "broker_restart_at"),
    ({"misbehaving": 0.6}, "misbehaving"),
    ({"renewal_fraction": 1.0}, "renewal_fraction"),
    ({"renewal_jitter": 0.5}, "renewal_jitter"),
    ({"key_type": "dsa1024"}, "key_type"),
    ({"payload_size": 4}, "payload_size"),
    ({"telemetry_qos": 2}, "telemetry_qos"),
    ({"group": "no spaces"}, "group"),
    ({"device_prefix": "-sim"}, "device_prefix"),
    ({"device_prefix": "s" * 41}, "device_prefix"),
    ({"est_label": "a/b"}, "est_label"),
    ({"est_label": "l" * 65}, "est_label"),
    ({"group": 7}, "group"),
    ({"est_label": 7}, "est_label"),
    ({"backoff_initial": 10.0, "backoff_max": 1.0}, "backoff_initial"),
    ({"keepalive": 0}, "keepalive"),
    ({"idevid": "yes"}, "idevid"),
])
def test_scenario_refused_bad_value(changes: dict[str, object], key: str) -> None:
    with pytest.raises(ScenarioError, match=key):
        Scenario(**changes)  # type: ignore[arg-type]


def test_scenario_accepts_names_at_their_longest() -> None:
    """The bounds are inclusive: a 40-character prefix and group, a 64-character label."""
    scenario = Scenario(device_prefix="s" * 40, group="g" * 40, est_label="l" * 64)
    assert (len(scenario.device_prefix), len(scenario.group)) == (40, 40)


def test_scenario_refused_bad_duration() -> None:
    with pytest.raises(ScenarioError, match="duration"):
        Scenario().with_overrides(duration="soon")


def test_scenario_refused_unknown_misbehavior() -> None:
    with pytest.raises(ScenarioError, match="foreign-topic"):
        Scenario().with_overrides(misbehaviors="teleport")


def test_seconds_accepts_numbers_and_units() -> None:
    assert seconds(1.5, key="x") == 1.5
    assert seconds("250ms", key="x") == 0.25
    assert seconds("2m", key="x") == 120.0
    assert seconds("0", key="x") == 0.0


def test_as_dict_is_plain_data() -> None:
    data = Scenario(store_dir=Path("/tmp/x"), misbehaving=0.1).as_dict()
    assert data["store_dir"] == "/tmp/x"
    assert data["misbehaviors"] == [m.value for m in Misbehavior]


def test_the_shipped_lifecycle_scenario_is_valid() -> None:
    path = Path(__file__).resolve().parents[2] / "device_sim" / "scenarios" / "lifecycle.toml"
    scenario = load_scenario(path)
    assert scenario.devices == 50
    assert scenario.cert_lifetime == 12.0
    assert scenario.misbehaving_devices == len(Misbehavior)
