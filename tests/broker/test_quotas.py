"""The quota bookkeeping: the retained ledger, the session budget, unreleased QoS 2 messages."""

from __future__ import annotations

import asyncio

from fleet.broker.amqtt_adapter import FleetSession
from fleet.broker.quotas import QUEUE, Budget, Quotas, RetainedLedger, pinned_bytes, weight
from fleet.broker.session import Unreleased
from fleet.settings import Settings


def test_a_device_retains_up_to_its_count_and_bytes() -> None:
    ledger = RetainedLedger(max_messages=2, max_bytes=100)
    ledger.set("d1", "a", 40)
    ledger.set("d1", "b", 40)
    assert ledger.refusal("d1", "c", 1) == "max_retained_messages"
    assert ledger.refusal("d1", "a", 61) == "max_retained_bytes"  # 61 + 40 > 100
    assert ledger.refusal("d1", "a", 50) is None  # replacing its own frees the old one
    assert ledger.refusal("d2", "c", 100) is None  # another device has its own quota


def test_replacing_or_clearing_a_retained_message_frees_its_owner() -> None:
    ledger = RetainedLedger(max_messages=1, max_bytes=100)
    ledger.set("d1", "a", 10)
    ledger.clear("a")
    assert ledger.usage("d1") == (0, 0)
    ledger.set("d1", "a", 10)
    ledger.set(None, "a", 10)  # a service replaced it: no longer d1's
    assert ledger.usage("d1") == (0, 0)
    assert ledger.refusal(None, "z", 10**9) is None  # services are not charged


def test_a_retained_episode_is_reported_once_and_ends_with_a_retained_message() -> None:
    ledger = RetainedLedger(max_messages=1, max_bytes=100)
    assert ledger.begins("d1")
    assert not ledger.begins("d1")
    ledger.set("d1", "a", 1)
    assert ledger.begins("d1")


def test_a_budget_episode_is_reported_once_until_it_ends() -> None:
    budget = Budget()
    assert budget.begins(QUEUE)
    assert not budget.begins(QUEUE)
    budget.ends(QUEUE)
    assert budget.begins(QUEUE)


def test_unreleased_messages_count_in_the_budget_until_released() -> None:
    async def scenario() -> tuple[tuple[int, int], tuple[str, bytes, bool] | None,
                                  tuple[int, int]]:
        budget = Budget()
        unreleased = Unreleased(budget)
        unreleased.hold(1, "t", b"12345", True, timeout=10)
        held = (budget.messages, budget.bytes)
        released = unreleased.release(1)
        return held, released, (budget.messages, budget.bytes)

    held, released, after = asyncio.run(scenario())
    assert held == (1, weight("t", b"12345"))
    assert released == ("t", b"12345", True)
    assert after == (0, 0)


def test_unreleased_messages_are_discarded_at_their_deadline_oldest_first() -> None:
    async def scenario() -> list[tuple[int, bool, bool]]:
        budget = Budget()
        unreleased = Unreleased(budget)
        unreleased.hold(1, "t", b"x", False, timeout=0.05)
        await asyncio.sleep(0.03)
        unreleased.hold(2, "t", b"x", False, timeout=0.05)
        states = []
        for delay in (0.04, 0.04):
            await asyncio.sleep(delay)
            states.append((budget.messages, 1 in unreleased, 2 in unreleased))
        return states

    assert asyncio.run(scenario()) == [(1, False, True), (0, False, False)]


def test_a_discarded_session_frees_everything_and_stops_its_timer() -> None:
    async def scenario() -> tuple[int, int, int]:
        session = FleetSession()
        session.unreleased.hold(7, "t", b"x", False, timeout=0.01)
        session.budget.add(5)
        session.clear_queues()
        await asyncio.sleep(0.03)  # the cancelled timer does not fire on a cleared store
        return session.budget.messages, session.budget.bytes, len(session.unreleased)

    assert asyncio.run(scenario()) == (0, 0, 0)


def test_memory_one_device_can_pin_with_the_defaults(settings: Settings) -> None:
    """The bound docs and tests quote: about 6.3 MiB per device with config/fleet.toml."""
    quotas = Quotas.from_settings(settings)
    assert pinned_bytes(quotas) == (
        2 * 1_048_576 + 1000 * 1024    # queue budget held and in the socket, message objects
        + 1_048_576 + 100 * 1024       # retained messages, and their objects
        + 100 * (2 * 1024 + 32 * 512)  # filters: strings and tree nodes
        + 262_144 + 256 * 1024)        # one packet being read, the session and connection
    assert pinned_bytes(quotas) < 7 * 2**20
