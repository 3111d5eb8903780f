"""Slow requests hold no capacity that devices need: during 1,000 stalled requests from ten
addresses (half stalled in the headers, half after headers announcing a 5,000-byte body),
enrollments and renewals from another address succeed quickly and /healthz stays up, and the
server closes every stalled connection within its timeouts."""

from __future__ import annotations

import asyncio
import multiprocessing
import ssl
import statistics
import time
from multiprocessing.connection import Connection

import pytest
from est_support import EST, Est, make_csr

pytestmark = pytest.mark.slow

SOURCES = tuple(f"127.0.0.{i}" for i in range(2, 12))
STALLS = 1000
LAUNCH_SECONDS = 4.0
"""The stalled requests start evenly over this time."""
TIMEOUTS = {"FLEET_EST_HANDSHAKE_TIMEOUT": "2s", "FLEET_EST_HEADER_TIMEOUT": "1s",
            "FLEET_EST_BODY_TIMEOUT": "1s", "FLEET_EST_BODY_MIN_RATE": "5000",
            "FLEET_EST_KEEPALIVE_TIMEOUT": "2s"}
BODY = 5000
HEADER_BOUND = 1.0
"""Seconds from the partial headers to the close: the header timeout."""
BODY_BOUND = 1.0 + BODY / 5000 + 1.0
"""From the headers to the close: the body's time, then at most the body timeout draining."""
SLACK = 1.5
GIVE_UP = 10.0


def _head(n: int) -> bytes:
    token = f"{n:016x}.{'S' * 32}"  # a plausible token, so the body is waited for
    return (f"POST {EST}/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: application/pkcs10\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {BODY}\r\n\r\n").encode()


async def _stall(port: int, n: int, context: ssl.SSLContext) -> tuple[str, float | None]:
    """One stalled request: (its kind, seconds until the server closed it, or None)."""
    kind = "headers" if n % 2 else "body"
    head = _head(n)
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost",
            local_addr=(SOURCES[n % len(SOURCES)], 0), ssl_handshake_timeout=GIVE_UP)
    except (OSError, TimeoutError):
        return "closed at once", 0.0  # over a connection cap
    loop = asyncio.get_running_loop()
    writer.write(head[:len(head) // 2] if kind == "headers" else head)
    sent = loop.time()
    try:
        async with asyncio.timeout(GIVE_UP):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return kind, None
    except OSError:
        pass
    finally:
        writer.transport.abort()
    return kind, loop.time() - sent


async def _stall_all(port: int, cafile: str, started: Connection) -> list[tuple[str, float | None]]:
    context = ssl.create_default_context(cafile=cafile)
    tasks = []
    for n in range(STALLS):
        tasks.append(asyncio.create_task(_stall(port, n, context)))
        if n == STALLS // 5:
            started.send("flooding")
        await asyncio.sleep(LAUNCH_SECONDS / STALLS)
    return list(await asyncio.gather(*tasks))


def stall(port: int, cafile: str, results: Connection) -> None:
    """The attacker, in its own process: reports once flooding, then every outcome."""
    results.send(asyncio.run(_stall_all(port, cafile, results)))


def _p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100, method="inclusive")[98]


def test_stalled_requests_hold_no_capacity_and_are_closed_within_the_timeouts(
        make_est: object) -> None:
    est: Est = make_est(**TIMEOUTS)  # type: ignore[operator]
    device = est.device("dev-renew")
    tokens = [est.token() for _ in range(60)]
    csrs = [make_csr(f"dev-{i}") for i in range(len(tokens))]
    receiver, sender = multiprocessing.get_context("spawn").Pipe(duplex=False)
    attacker = multiprocessing.get_context("spawn").Process(
        target=stall, args=(est.port, str(est.ca_file), sender), daemon=True)
    attacker.start()
    try:
        assert receiver.poll(60), "the attacker did not start"
        assert receiver.recv() == "flooding"
        latencies: dict[str, list[float]] = {"simpleenroll": [], "simplereenroll": []}
        failures: list[str] = []
        end = time.monotonic() + LAUNCH_SECONDS
        for token, csr in zip(tokens, csrs, strict=True):
            if time.monotonic() >= end:
                break
            started = time.monotonic()
            reply = est.enroll(csr, token)
            latencies["simpleenroll"].append(time.monotonic() - started)
            if reply.status != 200:
                failures.append(f"simpleenroll {reply.status} {reply.text.strip()}")
            started = time.monotonic()
            reply = est.reenroll(make_csr(device.device_id, device.key), device)
            latencies["simplereenroll"].append(time.monotonic() - started)
            if reply.status == 200:
                device.certificate = reply.certificates()[0]
            else:
                failures.append(f"simplereenroll {reply.status} {reply.text.strip()}")
            healthz = est.get("/healthz")
            if healthz.status != 200:
                failures.append(f"healthz {healthz.status} {healthz.text.strip()}")
        assert receiver.poll(LAUNCH_SECONDS + GIVE_UP + 30), "the attacker did not finish"
        outcomes: list[tuple[str, float | None]] = receiver.recv()
    finally:
        attacker.terminate()
        attacker.join(10)

    done = sum(len(v) for v in latencies.values())
    summary = ", ".join(f"{op} p99 {_p99(v):.3f}s of {len(v)}" for op, v in latencies.items())
    kinds = {kind: f"{sum(1 for k, _ in outcomes if k == kind)} closed after at most "
                   f"{max((t or GIVE_UP) for k, t in outcomes if k == kind):.2f}s"
             for kind, _ in outcomes}
    print(f"{done - len(failures)}/{done} enrollments and renewals succeeded during "
          f"{len(outcomes)} stalled requests {kinds}: {summary}")
    assert not failures, failures[:5]
    assert all(len(v) >= 5 for v in latencies.values())
    for operation, values in latencies.items():
        assert _p99(values) <= 1.0, (operation, sorted(values)[-5:])
    assert len(outcomes) == STALLS
    still_open = [kind for kind, seconds in outcomes if seconds is None]
    assert not still_open, f"{len(still_open)} stalled connections never closed"
    late = [(kind, seconds) for kind, seconds in outcomes if seconds is not None and
            seconds > {"headers": HEADER_BOUND, "body": BODY_BOUND}.get(kind, 0.0) + SLACK]
    assert not late, late[:5]
