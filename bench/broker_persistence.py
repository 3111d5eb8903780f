"""What the broker's state file costs: the snapshot on the event loop, the write (encoding,
fsync, rename) on its thread, the file size, and reading it back at start, for N persistent
sessions with a few queued messages each (fleet.broker.persistence).

    .venv/bin/python bench/broker_persistence.py                       # 1,000 sessions
    .venv/bin/python bench/broker_persistence.py --sessions 10000 --queued 5

The sessions are built in-process the way a start restores them (no clients, no TLS): each a
device with the default topic grants, one subscription and --queued QoS 1 commands of
--payload bytes waiting for it; one retained message per device.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from fleet.acl import load_policy
from fleet.broker.engine import FleetBroker
from fleet.broker.persistence import (
    FORMAT,
    QueuedMessage,
    RetainedMessage,
    State,
    Store,
    StoredGrants,
    StoredSession,
    capture,
    restore,
    state_of,
)
from fleet.broker.quotas import Quotas
from fleet.broker.server import broker_config
from fleet.settings import load_settings

ROUNDS = 5


def synthetic_state(sessions: int, queued: int, payload: int) -> State:
    policy = load_policy(load_settings(environ={}).acl_file)
    stored, retained = [], []
    for n in range(sessions):
        device = f"device-{n:05d}"
        grants = policy.grants(role="device", device_id=device, group="line-1")
        stored.append(StoredSession(
            client_id=device, kind="device", name=device, serial=secrets.token_hex(20),
            grants=StoredGrants(publish=grants.publish, subscribe=grants.subscribe,
                                no_dollar=grants.no_dollar),
            subscriptions=((f"devices/{device}/commands/#", 1),), inflight=(), unreleased=(),
            queued=tuple(QueuedMessage(topic=f"devices/{device}/commands/set",
                                       payload=secrets.token_bytes(payload), qos=1)
                         for _ in range(queued)),
            away_for=60.0))
        retained.append(RetainedMessage(topic=f"devices/{device}/state",
                                        payload=secrets.token_bytes(payload), qos=1,
                                        owner=device))
    return State(format=FORMAT, saved_at=datetime.now(UTC), sessions=tuple(stored),
                 retained=tuple(retained))


def broker() -> FleetBroker:
    settings = load_settings(environ={})
    return FleetBroker(broker_config(), quotas=Quotas.from_settings(settings),
                       session_expiry=settings.session_expiry.total_seconds(),
                       on_denied=lambda *_: None, on_quota=lambda *_: None)


async def measure(args: argparse.Namespace, directory: Path) -> None:
    state = synthetic_state(args.sessions, args.queued, args.payload)
    source = broker()
    restore(source, state, now=datetime.now(UTC))
    store = Store.in_data_dir(directory, broker=source, interval=3600)
    saves, captures, encodes = [], [], []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        await store.save()
        saves.append(time.perf_counter() - started)
        started = time.perf_counter()
        captured = capture(source, now=datetime.now(UTC))
        captures.append(time.perf_counter() - started)
        started = time.perf_counter()
        state_of(captured).model_dump_json()
        encodes.append(time.perf_counter() - started)
    loads = []
    for _ in range(ROUNDS):
        target = broker()
        reader = Store.in_data_dir(directory, broker=target, interval=3600)
        started = time.perf_counter()
        restored = await reader.load()
        loads.append(time.perf_counter() - started)
        assert restored.sessions == args.sessions, restored
    size = store.path.stat().st_size
    print(f"{args.sessions} sessions x {args.queued} queued QoS 1 messages of {args.payload} "
          f"bytes, {args.sessions} retained messages")
    print(f"  file size                       {size / 1024:9.1f} KiB "
          f"({size / args.sessions:.0f} bytes per session)")
    for label, runs in (("capture (on the event loop)", captures),
                        ("encode (on the writer's thread)", encodes),
                        ("save: all of it, + fsync + rename", saves),
                        ("load: read + validate + restore", loads)):
        print(f"  {label:40} median {statistics.median(runs) * 1000:7.1f} ms, "
              f"max {max(runs) * 1000:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--queued", type=int, default=3)
    parser.add_argument("--payload", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(measure(args, Path(directory)))


if __name__ == "__main__":
    main()
