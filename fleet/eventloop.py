"""The event loop Fleet's services run on.

uvloop when it is installed (a dependency wherever it builds): its TLS transport and its loop
are compiled, so a handshake and a message cost the broker and the EST service less CPU than
asyncio's pure-Python TLS protocol. asyncio's own loop otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop of the kind the services run on."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run *main* to completion on a new event loop (:func:`new_event_loop`)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
