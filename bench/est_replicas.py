"""EST enrollments per second on PostgreSQL: one replica, two replicas, one with --workers 2.

Each setup runs real ``fleet serve est --port 0 [--workers N]`` processes on one PostgreSQL
database (a fresh one on the server named, dropped at the end) and one data dir, the CA
shared by every replica. The load generator is client processes of their own (blocking
``ssl`` clients in threads, not the servers' processes nor an event loop of this one):
every enrollment is simpleenroll with a bootstrap token of its own, a NEW TLS connection and
a key and CSR made for it alone; the requests take the replicas in turn.

Per setup and repeat: wall rate (enrollments/s), latency p50/p99 (connect to last byte) and
enrollments per server-CPU-second (every process of every replica, from /proc/<pid>/stat;
the database's own CPU is not in it). Reported as min/median/max over the repeats.

    .venv/bin/python bench/est_replicas.py [--postgres URL] [--seconds 8] [--repeats 3]
        [--clients 2] [--threads 8]

--postgres defaults to $FLEET_TEST_POSTGRES_URL (tests/pg.sh starts a server).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from _measure import descendants
from est_enroll import READY, Figure, prepare, run_load, token_client, token_jobs
from sqlalchemy import make_url

from fleet.ca import Paths
from fleet.registry import make_engine
from fleet.settings import Settings

FLEET = Path(sys.executable).parent / "fleet"


@dataclass(frozen=True)
class Setup:
    name: str
    replicas: int
    workers: int


SETUPS = (Setup("1 replica", 1, 1), Setup("2 replicas", 2, 1),
          Setup("1 replica --workers 2", 1, 2))


@contextmanager
def database(server: str) -> Iterator[str]:
    """A fresh database on *server*, dropped at the end."""
    name = f"fleet_bench_{secrets.token_hex(4)}"
    admin = make_engine(server, pool_size=1)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


@contextmanager
def replica(env: dict[str, str], workers: int) -> Iterator[tuple[int, list[int]]]:
    """One ``fleet serve est`` on a free port: its port and every pid of it."""
    process = subprocess.Popen(
        [str(FLEET), "serve", "est", "--port", "0", "--workers", str(workers)],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = READY.search(line)
        if not match:
            raise SystemExit(f"fleet serve est did not start: {line!r}")
        yield int(match.group(1)), descendants(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def measure(setup: Setup, settings: Settings, env: dict[str, str], *, seconds: float,
            clients: int, threads: int, repeat: int) -> Figure:
    with ExitStack() as stack:
        running = [stack.enter_context(replica(env, setup.workers))
                   for _ in range(setup.replicas)]
        ports = tuple(port for port, _ in running)
        pids = [pid for _, group in running for pid in group]
        jobs = token_jobs(settings, int(600 * seconds),
                          f"{setup.replicas}r{setup.workers}w{repeat}")
        return run_load(setup.name, setup.workers, ports, pids, Paths.of(settings).root, jobs,
                        token_client, clients=clients, threads=threads, seconds=seconds)


def summary(figures: Sequence[Figure]) -> dict[str, tuple[float, float, float]]:
    """min, median, max of each figure over the repeats."""
    def spread(values: list[float]) -> tuple[float, float, float]:
        return min(values), statistics.median(values), max(values)

    return {
        "per_second": spread([f.per_second for f in figures]),
        "p50_ms": spread([1000 * statistics.median(f.latencies) for f in figures]),
        "p99_ms": spread([1000 * statistics.quantiles(f.latencies, n=100)[98]
                          for f in figures]),
        "per_cpu_second": spread([f.per_cpu_second for f in figures]),
    }


def report(results: dict[Setup, list[Figure]], elapsed: float, out: Path | None) -> None:
    print(f"{'setup':24} {'enrollments/s':>22} {'p50 ms':>20} {'p99 ms':>20} "
          f"{'per server CPU-s':>22}")
    print(f"{'':24} {'min / median / max':>22} {'':>20} {'':>20}")
    rows = []
    for setup, figures in results.items():
        spread = summary(figures)
        cells = [" / ".join(f"{v:.0f}" for v in spread[k])
                 for k in ("per_second", "p50_ms", "p99_ms", "per_cpu_second")]
        print(f"{setup.name:24} {cells[0]:>22} {cells[1]:>20} {cells[2]:>20} {cells[3]:>22}")
        failures = {k: v for f in figures for k, v in f.statuses.items() if k != "200"}
        if failures:
            print(f"{'':24} non-200 outcomes: {failures}")
        rows.append({"setup": setup.name, "replicas": setup.replicas, "workers": setup.workers,
                     "repeats": [{"done": f.done, "wall_seconds": f.wall_seconds,
                                  "server_cpu_seconds": f.server_cpu_seconds,
                                  "statuses": f.statuses} for f in figures],
                     **{k: list(v) for k, v in spread.items()}})
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\n{os.cpu_count()} CPUs, load average at the end {load} (other work on the "
          f"machine shows there); benchmark took {elapsed:.0f} s")
    if out:
        out.write_text(json.dumps(rows, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", default=os.environ.get("FLEET_TEST_POSTGRES_URL"),
                        help="a PostgreSQL server (URL of any database on it)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--threads", type=int, default=8, help="connections in flight each")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not args.postgres:
        raise SystemExit("no PostgreSQL: give --postgres URL or set FLEET_TEST_POSTGRES_URL")

    begun = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="est-replicas-") as tmp, \
            database(args.postgres) as url:
        os.environ["FLEET_DATABASE_URL"] = url
        settings, prepared = prepare(Path(tmp))
        env = {**prepared, "FLEET_DATABASE_URL": url, "FLEET_EST_METRICS_PORT": "-1"}
        results: dict[Setup, list[Figure]] = {setup: [] for setup in SETUPS}
        for repeat in range(args.repeats):  # setups interleaved: drift hits each alike
            for setup in SETUPS:
                results[setup].append(measure(setup, settings, env, seconds=args.seconds,
                                              clients=args.clients, threads=args.threads,
                                              repeat=repeat))
    report(results, time.monotonic() - begun, args.json)


if __name__ == "__main__":
    main()
