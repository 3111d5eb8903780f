"""What an idle connection keeps in the broker: its tasks and what holds deques."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from fleet import eventloop
from fleet.broker.amqtt_adapter import Flag
from fleet.broker.server import RunningServer

from .conftest import Enroll
from .helpers import BrokerThread, Client


def _tasks(broker: BrokerThread) -> int:
    return broker.run(lambda: len(asyncio.all_tasks(broker.loop)))


def test_an_idle_session_keeps_two_tasks(enroll: Enroll, broker: BrokerThread,
                                         connect: Callable[..., Client]) -> None:
    """The connection's own task and amqtt's reader: the message loop waits in the first,
    without a task per SUBSCRIBE / UNSUBSCRIBE queue, disconnect waiter or inbound queue."""
    before = _tasks(broker)
    clients = [connect(enroll(f"d{index}"), keepalive=0) for index in range(3)]
    for index, client in enumerate(clients):
        assert client.subscribe(f"devices/d{index}/commands/#") == [1]
    assert broker.connection_count() == 3
    assert _tasks(broker) - before <= 2 * len(clients)


def test_an_idle_session_still_subscribes_and_leaves(
        enroll: Enroll, broker: BrokerThread, connect: Callable[..., Client]) -> None:
    """Its waiting message loop wakes for a later SUBSCRIBE and for the connection's end."""
    server = broker.server
    assert server is not None
    before = _tasks(broker)
    device = connect(enroll("d1"), keepalive=0)
    assert device.subscribe("devices/d1/commands/#") == [1]
    assert device.subscribe("devices/d1/commands/a", "devices/d2/commands/#") == [1, 128]
    device.close()
    assert broker.wait_for(lambda: len(server.connections) == 0)
    assert broker.wait_for(lambda: len(asyncio.all_tasks(broker.loop)) <= before)


def _deques_held(server: RunningServer) -> list[str]:
    """What holds a deque among the handler's events and the protocol's drain waiters of
    every connection."""
    held = []
    for connection in server.connections:
        assert connection.client_id is not None
        handler = server.broker._sessions[connection.client_id][1]
        protocol = connection.transport.get_protocol()
        for name, waiters in (
                ("reader_ready", getattr(handler._reader_ready, "_waiters", None)),
                ("reader_stopped", getattr(handler._reader_stopped, "_waiters", None)),
                ("drain_waiters", getattr(protocol, "_drain_waiters", None))):
            if isinstance(waiters, collections.deque):
                held.append(f"{connection.client_id}: {name}")
    return held


def test_an_idle_session_holds_no_deque_for_its_events_or_drain(
        enroll: Enroll, broker: BrokerThread, connect: Callable[..., Client]) -> None:
    """An empty deque is 760 bytes: the handler's events (Flag) and the protocol's drain
    waiters (a list) hold none."""
    server = broker.server
    assert server is not None
    clients = [connect(enroll(f"d{index}"), keepalive=0) for index in range(3)]
    for index, client in enumerate(clients):
        assert client.subscribe(f"devices/d{index}/commands/#") == [1]
    assert broker.connection_count() == 3
    assert broker.run(lambda: _deques_held(server)) == []


def test_flag_wakes_every_waiter_and_survives_a_cancelled_one() -> None:
    async def scenario() -> None:
        flag = Flag()
        assert not flag.is_set()
        first = asyncio.create_task(flag.wait())
        second = asyncio.create_task(flag.wait())
        cancelled = asyncio.create_task(flag.wait())
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        flag.set()
        assert await asyncio.wait_for(asyncio.gather(first, second), 1) == [True, True]
        assert cancelled.cancelled()
        assert flag.is_set()
        assert await flag.wait()
        flag.clear()
        assert not flag.is_set()

    eventloop.run(scenario())
