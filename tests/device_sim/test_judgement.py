"""When a missing QoS 1 command counts as lost, and when the run allows it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from device_sim.backend import Command
from device_sim.environment import RestartWindow
from device_sim.runner import DELIVERY_GRACE, command_excused


def device(spans: list[tuple[float, float | None]], revoked_at: float | None = None) -> Any:
    return SimpleNamespace(spans=spans, revoked_at=revoked_at)


def test_command_lost_when_the_device_was_connected_to_receive_it() -> None:
    command = Command("d1", 1, published_at=10.0, acked_at=10.1)
    assert not command_excused(command, device([(5.0, None)]), [], end=60.0)


def test_command_lost_when_the_device_came_back_later() -> None:
    """Offline at the time (renewing): the persistent session must deliver on reconnect."""
    command = Command("d1", 1, published_at=10.0, acked_at=10.1)
    spans = [(5.0, 10.05), (11.0, None)]
    assert not command_excused(command, device(spans), [], end=60.0)


def test_command_allowed_missing_when_a_broker_restart_came_first() -> None:
    command = Command("d1", 1, published_at=10.0, acked_at=10.1)
    spans = [(5.0, 10.05), (20.0, None)]  # offline until after the restart at 12 s
    assert command_excused(command, device(spans), [RestartWindow(12.0, 14.0)], end=60.0)


def test_command_lost_when_connected_long_enough_before_the_restart() -> None:
    command = Command("d1", 1, published_at=10.0, acked_at=10.1)
    restart = RestartWindow(10.1 + DELIVERY_GRACE + 5, 30.0)
    assert not command_excused(command, device([(5.0, None)]), [restart], end=60.0)


def test_command_allowed_missing_when_the_broker_restarted_before_acknowledging() -> None:
    command = Command("d1", 1, published_at=10.0, acked_at=14.5)
    assert command_excused(command, device([(5.0, None)]), [RestartWindow(12.0, 14.0)],
                           end=60.0)


def test_command_allowed_missing_when_the_device_was_revoked() -> None:
    command = Command("d1", 1, published_at=10.0, acked_at=10.1)
    spans = [(5.0, 10.05)]
    assert command_excused(command, device(spans, revoked_at=11.0), [], end=60.0)


def test_command_allowed_missing_when_sent_at_the_very_end() -> None:
    command = Command("d1", 1, published_at=59.0, acked_at=59.1)
    spans = [(5.0, 58.0)]
    assert command_excused(command, device(spans), [], end=60.0)
