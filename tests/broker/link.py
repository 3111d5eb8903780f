"""A TCP relay between a client and the broker that fails like a radio link.

TLS runs end to end through it; it only carries bytes. Each direction can be held (its bytes
wait, unread, in the kernel) and released; :meth:`Link.drop` loses the link: what is held is
lost, the client's side closes, and the broker's side stays open and is never read or written
again, as a TCP connection whose peer vanished.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from dataclasses import dataclass, field

UP, DOWN = "up", "down"
"""UP: client -> broker; DOWN: broker -> client."""
_POLL = 0.01
_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on, 0 s: close() sends a TCP RST."""


@dataclass(eq=False)
class _Pair:
    client: socket.socket
    broker: socket.socket
    held: set[str] = field(default_factory=set)


class Link:
    def __init__(self, broker_port: int) -> None:
        self._broker_port = broker_port
        self._listening = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listening.getsockname()[1]
        self._pairs: list[_Pair] = []
        self._dropped: list[_Pair] = []  # closed by the relay's thread, not while it selects
        self._lost: list[socket.socket] = []  # broker sides of dropped links
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="link", daemon=True)
        self._thread.start()

    def hold(self, direction: str) -> None:
        """Stop carrying *direction* on the current connections."""
        with self._lock:
            for pair in self._pairs:
                pair.held.add(direction)

    def release(self, direction: str) -> None:
        with self._lock:
            for pair in self._pairs:
                pair.held.discard(direction)

    def drop(self) -> None:
        """Lose the current connections (new ones are carried again)."""
        with self._lock:
            self._dropped.extend(self._pairs)
            self._pairs = []

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._listening.close()
        with self._lock:
            for pair in self._pairs + self._dropped:
                pair.client.close()
                pair.broker.close()
            for sock in self._lost:
                sock.close()
            self._pairs, self._dropped, self._lost = [], [], []

    def _run(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                for pair in self._dropped:
                    pair.client.close()
                    self._lost.append(pair.broker)
                self._dropped.clear()
                sources: dict[socket.socket, _Pair | None] = {self._listening: None}
                for pair in self._pairs:
                    if UP not in pair.held:
                        sources[pair.client] = pair
                    if DOWN not in pair.held:
                        sources[pair.broker] = pair
            readable, _, _ = select.select(list(sources), [], [], _POLL)
            with self._lock:
                for sock in readable:
                    source = sources[sock]
                    if source is None:
                        self._accept()
                    elif source in self._pairs \
                            and (UP if sock is source.client else DOWN) not in source.held:
                        self._carry(source, sock)

    def _accept(self) -> None:
        client, _ = self._listening.accept()
        broker = socket.create_connection(("127.0.0.1", self._broker_port))
        self._pairs.append(_Pair(client, broker))

    def _carry(self, pair: _Pair, source: socket.socket) -> None:
        target = pair.broker if source is pair.client else pair.client
        try:
            data = source.recv(65536)
            if data:
                target.sendall(data)
                return
        except OSError:  # a reset: reset the other side too, as an end-to-end link would
            for sock in (pair.client, pair.broker):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        self._pairs.remove(pair)  # one side ended: end the other
        pair.client.close()
        pair.broker.close()
