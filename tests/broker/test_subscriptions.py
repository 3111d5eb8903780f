"""The broker's subscription table: matching by topic level agrees with fleet.acl.matches."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_acl import FILTER, TOPIC

from fleet.acl import matches
from fleet.broker.subscriptions import SubscriptionTable


def table_of(*filters: str) -> SubscriptionTable[str]:
    table: SubscriptionTable[str] = SubscriptionTable()
    for index, topic_filter in enumerate(filters):
        table.subscribe(topic_filter, f"c{index}", f"session-{index}", 0)
    return table


@pytest.mark.parametrize(("topic", "expected"), [
    ("a", {"a", "#", "+", "a/#"}),
    ("a/b", {"a/b", "#", "a/#", "+/b", "a/+", "+/+"}),
    ("a/b/c", {"#", "a/#"}),
    ("$SYS/x", {"$SYS/#"}),
    ("/", {"#", "+/+", "/#"}),
    ("b", {"#", "+"}),
])
def test_matching_filters(topic: str, expected: set[str]) -> None:
    table = table_of("a", "a/b", "#", "+", "a/#", "+/b", "a/+", "+/+", "$SYS/#", "/#")
    assert set(table.matching(topic)) == expected


@given(TOPIC, st.lists(FILTER, max_size=8))
def test_matching_agrees_with_acl_matches(topic: str, filters: list[str]) -> None:
    table = table_of(*filters)
    assert sorted(table.matching(topic)) == sorted({f for f in filters if matches(topic, f)})


@given(TOPIC, st.lists(FILTER, min_size=1, max_size=8), st.data())
def test_unsubscribing_leaves_what_the_remaining_filters_match(
        topic: str, filters: list[str], data: st.DataObject) -> None:
    table = table_of(*filters)
    table.matching(topic)  # fill the cache, which the change must invalidate
    gone = data.draw(st.sets(st.sampled_from(range(len(filters)))))
    for index in gone:
        assert table.unsubscribe(filters[index], f"c{index}")
    remaining = {f for i, f in enumerate(filters) if i not in gone}
    assert set(table) == remaining
    assert sorted(table.matching(topic)) == sorted(f for f in remaining if matches(topic, f))


def test_a_repeated_subscription_replaces_the_qos_and_keeps_one_entry() -> None:
    table: SubscriptionTable[str] = SubscriptionTable()
    table.subscribe("a/#", "c1", "first", 0)
    table.subscribe("a/#", "c2", "other", 1)
    table.subscribe("a/#", "c1", "second", 1)
    assert list(table["a/#"]) == [("second", 1), ("other", 1)]
    assert len(table["a/#"]) == 2
    assert "c1" in table["a/#"]


def test_unsubscribe_of_an_unknown_subscription_changes_nothing() -> None:
    table = table_of("a/b")
    assert not table.unsubscribe("a/b", "someone-else")
    assert not table.unsubscribe("x/y", "c0")
    assert list(table) == ["a/b"]
    assert table.matching("a/b") == ("a/b",)


def test_last_subscriber_leaving_removes_the_filter_and_its_levels() -> None:
    table = table_of("a/b/c", "a/b/c")  # two clients, one filter
    assert table.unsubscribe("a/b/c", "c0")
    assert "a/b/c" in table
    assert table.unsubscribe("a/b/c", "c1")
    assert "a/b/c" not in table
    assert len(table) == 0
    assert table._root.children == {}


def test_clear_empties_filters_index_and_cache() -> None:
    table = table_of("a/+")
    assert table.matching("a/b") == ("a/+",)
    table.clear()
    assert len(table) == 0
    assert table.matching("a/b") == ()


def test_repr_does_not_walk_the_sessions() -> None:
    table = table_of(*(f"devices/d{i}/commands/#" for i in range(1000)))
    assert repr(table) == "<SubscriptionTable: 1000 filters>"
