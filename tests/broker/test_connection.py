"""Connection write path: nothing reaches a client before its CONNACK (MQTT-3.2.0-1)."""

from __future__ import annotations

import asyncio
import socket

from fleet.broker.connection import Connection


async def _received(peer: asyncio.StreamReader, timeout: float = 0.2) -> bytes:
    try:
        return await asyncio.wait_for(peer.read(1024), timeout)
    except TimeoutError:
        return b""


async def _held_until_acknowledged() -> tuple[bytes, bytes]:
    ours, theirs = socket.socketpair()
    _, writer = await asyncio.open_connection(sock=ours)
    peer, peer_writer = await asyncio.open_connection(sock=theirs)
    connection = Connection(transport=writer.transport, serial="01", identity=None,
                            peer="test")
    connection.write(b"early")  # e.g. a message routed to a session being resumed
    before = await _received(peer)
    writer.write(b"CONNACK")  # amqtt writes the CONNACK through its own writer
    connection.acknowledged()
    connection.write(b"-later")
    after = b""
    while len(after) < len(b"CONNACKearly-later"):
        chunk = await _received(peer)
        if not chunk:
            break
        after += chunk
    writer.close()
    peer_writer.close()
    return before, after


def test_packets_are_held_until_the_connack_is_written() -> None:
    before, after = asyncio.run(_held_until_acknowledged())
    assert before == b""
    assert after == b"CONNACKearly-later"
