"""Request counters in the Prometheus text format, served on a loopback-only port."""

from __future__ import annotations

import bisect
import os
import socket
from collections import Counter

from aiohttp import web

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Counters of one server process (each worker process has its own)."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.issued: Counter[str] = Counter()
        self.latency_count: Counter[str] = Counter()
        self.latency_sum: dict[str, float] = {}
        self.latency_buckets: dict[str, list[int]] = {}

    def observe(self, operation: str, status: int, seconds: float) -> None:
        self.requests[(operation, status)] += 1
        self.latency_count[operation] += 1
        self.latency_sum[operation] = self.latency_sum.get(operation, 0.0) + seconds
        buckets = self.latency_buckets.setdefault(operation, [0] * len(LATENCY_BUCKETS))
        index = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        if index < len(buckets):
            buckets[index] += 1

    def certificate_issued(self, operation: str) -> None:
        self.issued[operation] += 1

    def render(self) -> str:
        pid = os.getpid()
        lines = [
            "# HELP fleet_est_requests_total EST requests by operation and HTTP status.",
            "# TYPE fleet_est_requests_total counter",
        ]
        lines += [f'fleet_est_requests_total{{operation="{op}",status="{status}",pid="{pid}"}} '
                  f"{count}" for (op, status), count in sorted(self.requests.items())]
        lines += ["# HELP fleet_est_certificates_issued_total Certificates issued over EST.",
                  "# TYPE fleet_est_certificates_issued_total counter"]
        lines += [f'fleet_est_certificates_issued_total{{operation="{op}",pid="{pid}"}} {count}'
                  for op, count in sorted(self.issued.items())]
        lines += ["# HELP fleet_est_request_seconds Time to answer an EST request.",
                  "# TYPE fleet_est_request_seconds histogram"]
        for op in sorted(self.latency_count):
            running = 0
            for bound, count in zip(LATENCY_BUCKETS, self.latency_buckets[op], strict=True):
                running += count
                lines.append(f'fleet_est_request_seconds_bucket{{operation="{op}",le="{bound}",'
                             f'pid="{pid}"}} {running}')
            labels = f'operation="{op}",pid="{pid}"'
            lines += [
                f'fleet_est_request_seconds_bucket{{{labels},le="+Inf"}} '
                f"{self.latency_count[op]}",
                f"fleet_est_request_seconds_sum{{{labels}}} {self.latency_sum[op]:.6f}",
                f"fleet_est_request_seconds_count{{{labels}}} {self.latency_count[op]}",
            ]
        return "\n".join(lines) + "\n"


async def serve_metrics(metrics: Metrics, sock: socket.socket) -> web.AppRunner:
    """Serve ``GET /metrics`` on *sock* (bound by the caller to a loopback address)."""

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(text=metrics.render(), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
