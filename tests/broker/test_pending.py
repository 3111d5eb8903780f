"""Pending connections: capped per source and in total, the oldest evicted first."""

from __future__ import annotations

from fleet.broker.pending import PendingConnections


def track(pending: PendingConnections, source: str, evicted: list[tuple[str, str]],
          name: str) -> object:
    return pending.add(source, lambda reason: evicted.append((name, reason)))


def test_source_over_its_cap_evicts_its_own_oldest() -> None:
    pending = PendingConnections(limit=100, per_source=2)
    evicted: list[tuple[str, str]] = []
    track(pending, "10.0.0.1", evicted, "a1")
    track(pending, "10.0.0.2", evicted, "b1")
    track(pending, "10.0.0.1", evicted, "a2")
    track(pending, "10.0.0.1", evicted, "a3")
    assert [name for name, _ in evicted] == ["a1"]
    assert "more than 2 connections from 10.0.0.1" in evicted[0][1]
    assert pending.count("10.0.0.1") == 2
    assert pending.count("10.0.0.2") == 1


def test_total_over_the_limit_evicts_the_oldest_of_any_source() -> None:
    pending = PendingConnections(limit=3, per_source=10)
    evicted: list[tuple[str, str]] = []
    for index in range(5):
        track(pending, f"10.0.0.{index}", evicted, f"c{index}")
    assert [name for name, _ in evicted] == ["c0", "c1"]
    assert len(pending) == 3


def test_settled_connection_is_never_evicted() -> None:
    pending = PendingConnections(limit=2, per_source=2)
    evicted: list[tuple[str, str]] = []
    first = pending.add("10.0.0.1", lambda reason: evicted.append(("first", reason)))
    pending.settle(first)  # the gate admitted it
    pending.settle(first)  # settling twice is harmless
    track(pending, "10.0.0.1", evicted, "second")
    track(pending, "10.0.0.1", evicted, "third")
    assert evicted == []
    assert pending.evict_oldest("room needed")
    assert [name for name, _ in evicted] == ["second"]


def test_evict_oldest_with_nothing_pending() -> None:
    assert not PendingConnections(limit=1, per_source=1).evict_oldest("room needed")
