"""Accepting TCP connections on a listening socket without spinning when descriptors run out.

A level-triggered reader on a listening socket whose ``accept()`` fails with EMFILE is called
again at once, forever: a busy loop that also writes a log line per failure. The loop here
stops watching the socket instead, waits (50 ms, doubling up to 1 s while the failures go
on), logs one line per ten seconds with the count, and resumes by itself. Both services
accept through it, so that the broker and the EST service in one process each survive the
other running the process out of descriptors.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

BATCH = 64
"""Connections accepted per wake-up, so that one busy listener does not starve the loop."""
BACKOFF = (0.05, 1.0)
"""First and longest pause after running out of descriptors (seconds)."""
_LOG_INTERVAL = 10.0
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

OnAccepted = Callable[[socket.socket, object], None]
"""Called with each accepted (non-blocking) socket and its peer's address (as accept gives)."""


class AcceptLoop:
    """Calls *on_accepted* for every connection *sock* accepts, in the running event loop."""

    def __init__(self, sock: socket.socket, on_accepted: OnAccepted, *, name: str) -> None:
        self._sock: socket.socket | None = sock
        self._on_accepted = on_accepted
        self._name = name
        self._loop = asyncio.get_running_loop()
        self._backoff = 0.0
        self._paused: asyncio.TimerHandle | None = None
        self._failures = 0
        self._logged_at = -_LOG_INTERVAL

    def start(self) -> None:
        assert self._sock is not None
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting and close the listening socket."""
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _accept(self) -> None:
        for _ in range(BATCH):
            if self._sock is None:
                return
            try:
                sock, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._pause(exc)
                    return
                log.warning("%s: accept failed: %s", self._name, exc)
                return
            self._backoff = 0.0
            sock.setblocking(False)
            self._on_accepted(sock, address)

    def _pause(self, exc: OSError) -> None:
        assert self._sock is not None
        self._backoff = min(max(self._backoff * 2, BACKOFF[0]), BACKOFF[1])
        self._failures += 1
        now = self._loop.time()
        if now - self._logged_at >= _LOG_INTERVAL:
            log.warning("%s: accept failed %d times (%s): pausing accepts, retrying every %gs "
                        "at most", self._name, self._failures, exc.strerror or exc, BACKOFF[1])
            self._logged_at, self._failures = now, 0
        self._loop.remove_reader(self._sock.fileno())
        self._paused = self._loop.call_later(self._backoff, self._resume)

    def _resume(self) -> None:
        self._paused = None
        if self._sock is not None:
            self._loop.add_reader(self._sock.fileno(), self._accept)
            self._accept()
