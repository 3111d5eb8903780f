"""Stock amqtt 0.12.1 as its own process: ``stock_amqtt.py CONFIG_JSON`` (bench/systems.py).

Runs until SIGTERM or SIGINT; logs warnings and above.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

from amqtt.broker import Broker


async def main(config: str) -> None:
    broker = Broker(json.loads(config))
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await broker.shutdown()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(sys.argv[1]))
