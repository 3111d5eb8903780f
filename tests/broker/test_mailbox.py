"""Mailbox: the light per-client queue the broker puts where amqtt keeps asyncio.Queue objects."""

from __future__ import annotations

import asyncio

import pytest

from fleet.broker.amqtt_adapter import FleetSession
from fleet.broker.session import Mailbox


def test_items_come_out_in_order_without_waiting() -> None:
    box: Mailbox[int] = Mailbox()
    assert box.empty()
    for item in (1, 2, 3):
        box.put_nowait(item)
    assert (box.qsize(), box.empty()) == (3, False)
    assert [box.get_nowait() for _ in range(3)] == [1, 2, 3]
    with pytest.raises(asyncio.QueueEmpty):
        box.get_nowait()


def test_a_waiting_consumer_is_woken_by_put() -> None:
    async def scenario() -> list[str]:
        box: Mailbox[str] = Mailbox()
        consumer = asyncio.ensure_future(box.get())
        await asyncio.sleep(0)
        assert not consumer.done()
        await box.put("subscribe")
        box.put_nowait("unsubscribe")
        return [await consumer, await box.get()]

    assert asyncio.run(scenario()) == ["subscribe", "unsubscribe"]


def test_a_cancelled_consumer_leaves_later_items_in_the_box() -> None:
    async def scenario() -> tuple[bool, str]:
        box: Mailbox[str] = Mailbox()
        consumer = asyncio.ensure_future(box.get())
        await asyncio.sleep(0)
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        box.put_nowait("kept")
        return consumer.cancelled(), await asyncio.wait_for(box.get(), 1)

    assert asyncio.run(scenario()) == (True, "kept")


def test_sessions_queue_offline_messages_in_a_mailbox() -> None:
    session = FleetSession()
    assert isinstance(session.retained_messages, Mailbox)
    assert session.retained_messages_count == 0
