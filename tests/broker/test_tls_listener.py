"""fleet.broker.listener.TLSListener: what an accepted socket is like once its handshake is
done, over a real TLS handshake with a real client certificate."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

from fleet.broker.connection import ConnectionProtocol
from fleet.broker.listener import TLSListener
from fleet.broker.tls import server_context
from fleet.errors import FleetError
from fleet.settings import Settings

from .helpers import Credentials


def _quickack(writer: asyncio.StreamWriter) -> int:
    sock: socket.socket = writer.get_extra_info("socket")
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK)


def test_client_finished_is_acknowledged_at_once_so_a_nagle_client_sends_connect(
        settings: Settings, issue_service: Callable[[str], Credentials]) -> None:
    """After the handshake the server has sent its flight and read the client's, so Linux
    would delay the ACK of the client's Finished (delayed ACKs in "pingpong" mode); a client
    with Nagle on holds its CONNECT until that ACK comes. The listener leaves quick-ACK
    mode on, which flushes the pending ACK at once."""
    service = issue_service("lat")
    seen: list[int] = []

    async def run() -> None:
        async def on_connection(protocol: ConnectionProtocol, writer: asyncio.StreamWriter,
                                admitted: Callable[[], None]) -> None:
            seen.append(_quickack(writer))
            writer.write(b"ok")
            await writer.drain()

        def on_refused(error: FleetError) -> None:
            raise AssertionError(f"refused: {error}")

        listener = TLSListener(context=server_context(settings), max_connections=4,
                               max_pending=4, max_pending_per_source=4, handshake_timeout=5,
                               on_connection=on_connection, on_refused=on_refused)
        port = await listener.start("127.0.0.1", 0)
        client = ssl.create_default_context(cafile=str(service.ca))
        client.load_cert_chain(str(service.cert), str(service.key))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client,
                                                       server_hostname="localhost")
        assert await asyncio.wait_for(reader.read(2), 5) == b"ok"
        writer.close()
        await listener.close(grace=1)

    asyncio.run(run())
    assert seen == [1]
