"""Topic policy, MQTT topic/filter validation, matching and filter containment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fleet.acl import (
    Grants,
    PolicyError,
    is_topic_filter,
    is_topic_name,
    load_policy,
    matches,
    parse_policy,
    uncovered_topic,
)
from fleet.settings import DEFAULT_CONFIG

DEFAULT_POLICY = DEFAULT_CONFIG.parent / "acl.toml"


@pytest.fixture(scope="module")
def device() -> Grants:
    return load_policy(DEFAULT_POLICY).grants(role="device", device_id="d1", group="g1")


@pytest.fixture(scope="module")
def service() -> Grants:
    return load_policy(DEFAULT_POLICY).grants(role="service")


# -- a reference matcher written differently (regular expressions) ------------------------


def reference_matches(topic: str, topic_filter: str) -> bool:
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels = topic_filter.split("/")
    parts = ["[^/]*" if level == "+" else re.escape(level) for level in levels if level != "#"]
    body = "/".join(parts)
    if levels[-1] == "#":
        body = ".*" if len(levels) == 1 else body + "(/.*)?"
    return re.fullmatch(body, topic, flags=re.DOTALL) is not None


LEVEL = st.sampled_from(["a", "b", "c", "", "$s", "d1"])
TOPIC = st.lists(LEVEL, min_size=1, max_size=4).map("/".join).filter(is_topic_name)


@st.composite
def topic_filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(LEVEL, st.just("+")), min_size=0, max_size=4))
    if draw(st.booleans()) or not levels:
        levels.append("#")
    result = "/".join(levels)
    assume(is_topic_filter(result))
    return result


FILTER = topic_filters()


def instances(topic_filter: str, fills: list[str]) -> list[str]:
    """Topics the filter matches, filling wildcards from *fills*."""
    out = []
    for fill in fills:
        levels = []
        for level in topic_filter.split("/"):
            if level == "+":
                levels.append(fill)
            elif level == "#":
                levels.extend(fill.split("/") if fill else [])
            else:
                levels.append(level)
        topic = "/".join(levels)
        if is_topic_name(topic) and matches(topic, topic_filter):
            out.append(topic)
    return out


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["a", "a/b", "/", "a//b", "$SYS/x", "devices/d1/telemetry"])
def test_topic_name_valid(topic: str) -> None:
    assert is_topic_name(topic)


@pytest.mark.parametrize("topic", ["", "a/+", "a/#", "+", "a\x00b", "a" * 65536])
def test_topic_name_refused(topic: str) -> None:
    assert not is_topic_name(topic)


@pytest.mark.parametrize("topic_filter", ["#", "+", "a/#", "+/+", "a/+/b", "/#", "$SYS/#"])
def test_topic_filter_valid(topic_filter: str) -> None:
    assert is_topic_filter(topic_filter)


@pytest.mark.parametrize("topic_filter", ["", "a/#/b", "a#", "a/b+", "##", "a/+x", "x\x00"])
def test_topic_filter_refused(topic_filter: str) -> None:
    assert not is_topic_filter(topic_filter)


# -- matching --------------------------------------------------------------------------------


@pytest.mark.parametrize(("topic", "topic_filter", "expected"), [
    ("sport/tennis/player1", "sport/tennis/player1/#", True),
    ("sport", "sport/#", True),
    ("sport/tennis", "sport/+", True),
    ("sport", "sport/+", False),
    ("/finance", "+/+", True),
    ("/finance", "/+", True),
    ("/finance", "+", False),
    ("$SYS/broker", "#", False),
    ("$SYS/broker", "+/broker", False),
    ("$SYS/broker", "$SYS/#", True),
])
def test_matches_spec_examples(topic: str, topic_filter: str, expected: bool) -> None:
    """The examples of MQTT 3.1.1 section 4.7."""
    assert matches(topic, topic_filter) is expected


@given(TOPIC, FILTER)
def test_matches_agrees_with_reference(topic: str, topic_filter: str) -> None:
    assert matches(topic, topic_filter) == reference_matches(topic, topic_filter)


# -- containment -----------------------------------------------------------------------------


@pytest.mark.parametrize(("allowed", "topic_filter", "expected"), [
    (["devices/d1/commands/#"], "devices/d1/commands/#", True),
    (["devices/d1/commands/#"], "devices/d1/commands/reboot", True),
    (["devices/d1/commands/#"], "devices/d1/commands/+/x", True),
    (["devices/d1/commands/#"], "devices/+/commands/#", False),
    (["devices/d1/commands/#"], "#", False),
    (["devices/d1/commands/#"], "devices/d1/#", False),
    (["a", "a/+/#"], "a/#", True),
    (["a/+/#"], "a/#", False),
    (["#"], "$SYS/#", False),
    (["#"], "+/x", True),
    (["+/+"], "a/+", True),
    (["a/b"], "a/+", False),
])
def test_uncovered_topic_examples(allowed: list[str], topic_filter: str, expected: bool) -> None:
    assert (uncovered_topic(topic_filter, allowed) is None) is expected


@settings(max_examples=300)
@given(FILTER, st.lists(FILTER, max_size=3),
       st.lists(st.lists(LEVEL, min_size=0, max_size=3).map("/".join), max_size=6))
def test_containment_sound(topic_filter: str, allowed: list[str], fills: list[str]) -> None:
    """If the filter is contained, every topic it matches is matched by an allowed filter."""
    if uncovered_topic(topic_filter, allowed) is None:
        for topic in instances(topic_filter, fills):
            assert any(reference_matches(topic, a) for a in allowed), topic


@settings(max_examples=300)
@given(FILTER, st.lists(FILTER, max_size=3))
def test_containment_witness_is_real(topic_filter: str, allowed: list[str]) -> None:
    """When containment fails, the witness is a topic the filter matches and nothing allows."""
    witness = uncovered_topic(topic_filter, allowed)
    if witness is not None:
        assert is_topic_name(witness)
        assert reference_matches(witness, topic_filter)
        assert not any(reference_matches(witness, a) for a in allowed)


@given(FILTER)
def test_every_filter_contains_itself(topic_filter: str) -> None:
    assert uncovered_topic(topic_filter, [topic_filter]) is None


# -- the default policy ----------------------------------------------------------------------


def test_device_publishes_own_topics(device: Grants) -> None:
    assert device.may_publish("devices/d1/telemetry")
    assert device.may_publish("devices/d1/events/boot/x")
    assert device.may_publish("devices/d1/state")


@pytest.mark.parametrize("topic", ["devices/d2/telemetry", "devices/d1/commands/x",
                                   "devices/d1", "$SYS/x", "devices/+/telemetry", ""])
def test_device_publish_refused(device: Grants, topic: str) -> None:
    assert not device.may_publish(topic)


@pytest.mark.parametrize("topic_filter", ["devices/d1/commands/#", "devices/d1/commands/+",
                                          "groups/g1/broadcast/#", "groups/g1/broadcast/a"])
def test_device_subscribe_allowed(device: Grants, topic_filter: str) -> None:
    assert device.may_subscribe(topic_filter)


@pytest.mark.parametrize("topic_filter", ["devices/+/commands/#", "#", "+/#", "$SYS/#",
                                          "devices/d2/commands/#", "groups/+/broadcast/#",
                                          "devices/d1/#", "devices/d1/telemetry", "a/#/b"])
def test_device_subscribe_refused(device: Grants, topic_filter: str) -> None:
    assert not device.may_subscribe(topic_filter)


def test_device_receive(device: Grants) -> None:
    assert device.may_receive("devices/d1/commands/reboot")
    assert not device.may_receive("devices/d2/commands/reboot")
    assert not device.may_receive("devices/d2/telemetry")


def test_service_grants(service: Grants) -> None:
    assert service.may_subscribe("devices/+/telemetry")
    assert service.may_subscribe("devices/d7/events/#")
    assert not service.may_subscribe("devices/#")
    assert service.may_publish("devices/d7/commands/reboot")
    assert not service.may_publish("devices/d7/telemetry")
    assert service.may_receive("devices/d7/state")


def test_unknown_role_is_granted_nothing() -> None:
    grants = load_policy(DEFAULT_POLICY).grants(role="robot", device_id="d1", group="g1")
    assert not grants.may_publish("devices/d1/telemetry")
    assert not grants.may_subscribe("devices/d1/commands/#")


@pytest.mark.parametrize("device_id", ["+", "#", "a/b", "", "$SYS", None])
def test_unsafe_placeholder_value_grants_nothing(device_id: str | None) -> None:
    grants = load_policy(DEFAULT_POLICY).grants(role="device", device_id=device_id, group="g1")
    assert grants.publish == ()
    assert not grants.may_subscribe("devices/+/commands/#")
    assert not grants.may_publish("devices/x/telemetry")


# -- policy load errors ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "fragment"), [
    ('[device]\npublish = ["devices/{name}/x"]', "unknown placeholder {name}"),
    ('[device]\npublish = ["devices/{0}/x"]', "unknown placeholder {0}"),
    ('[device]\npublish = ["devices/{device_id!r}/x"]', "format or conversion"),
    ('[device]\npublish = ["devices/{device_id:>4}/x"]', "format or conversion"),
    ('[device]\npublish = ["devices/{device_id/x"]', "devices/{device_id/x"),
    ('[device]\nsubscribe = ["a/#/b"]', "not a valid MQTT topic filter"),
    ('[device]\nsubscribe = ["$SYS/#"]', "never granted to devices"),
    ('[device]\nread = ["a"]', "unknown key"),
    ('[admin]\npublish = ["a"]', "unknown role"),
    ('[device]\npublish = "a"', "must be a list of strings"),
    ("[device\n", "not valid TOML"),
])
def test_policy_load_error(text: str, fragment: str) -> None:
    with pytest.raises(PolicyError, match=re.escape(fragment)):
        parse_policy(text)


def test_policy_missing_file_is_load_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "absent.toml")
