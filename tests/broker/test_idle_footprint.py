"""What an idle connection keeps in the broker: its tasks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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
