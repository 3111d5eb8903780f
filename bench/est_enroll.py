"""EST enrollments per server-CPU-second against this machine's TLS handshake ceiling.

Every enrollment opens a NEW TLS connection (no session resumption). Measured in one run:

* the ceiling: ``openssl s_server`` driven by ``openssl s_time -new``, server-auth only and with
  a client certificate, as handshakes per s_server CPU-second;
* simpleenroll (bootstrap token, HTTP Basic) and simplereenroll (renewal with the TLS client
  certificate) against ``provisioning.server.serve`` with 1 and 2 worker processes, as
  enrollments per server CPU-second (all server processes, from /proc/<pid>/stat).

Targets: token >= 0.8 x the server-auth ceiling per core, reenroll >= 0.8 x the mTLS ceiling.
Loopback only; bounded in time (about a minute with the defaults).

    .venv/bin/python bench/est_enroll.py [--seconds 6] [--clients 2] [--threads 8] [--profile]
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from _measure import descendants, free_port, tree_cpu_seconds
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from fleet import pki
from fleet.authority import Authority, TokenCredential
from fleet.ca import Paths, ensure_server_certificate, init_ca
from fleet.registry import make_engine, migrate, utcnow
from fleet.settings import Settings, load_settings

HOST = "127.0.0.1"
NATIVE: list[str] = []
READY = re.compile(r"EST listening on https://[^:]+:(\d+)/")


@dataclass
class Figure:
    name: str
    workers: int
    done: int
    wall_seconds: float
    server_cpu_seconds: float
    statuses: dict[str, int]
    latencies: list[float] = field(default_factory=list, repr=False)
    """Seconds from connect to the last byte of each answered (200) request."""

    @property
    def per_second(self) -> float:
        return self.done / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def per_cpu_second(self) -> float:
        return self.done / self.server_cpu_seconds if self.server_cpu_seconds else 0.0


# -- set-up -----------------------------------------------------------------------------------

def prepare(root: Path) -> tuple[Settings, dict[str, str]]:
    env = {
        "FLEET_DATA_DIR": str(root / "data"),
        "FLEET_CA_PASSPHRASE": secrets.token_urlsafe(16),
        "FLEET_EST_METRICS_PORT": "0",
        "FLEET_EST_AUTH_FAILURES_PER_MINUTE": "1000000",
        "FLEET_EST_MAX_CONCURRENT_REQUESTS": "4096",
    }
    os.environ.update(env)
    settings = load_settings(environ={**os.environ, **env})
    ca, _ = init_ca(settings, now=utcnow())
    ensure_server_certificate(settings, ca, now=utcnow())
    engine = make_engine(settings.effective_database_url, create=True)
    migrate(engine)
    Authority(settings=settings, engine=engine, ca=ca).create_group(name="bench", actor="bench")
    engine.dispose()
    return settings, env


def authority(settings: Settings) -> Authority:
    return Authority(settings=settings, engine=make_engine(settings.effective_database_url))


def csr_der(device_id: str, key: pki.PrivateKey) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def http_post(path: str, der: bytes, authorization: str | None = None) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"\r\n")
    head = [f"POST {path} HTTP/1.1", "Host: localhost", "Content-Type: application/pkcs10",
            f"Content-Length: {len(body)}", "Connection: close"]
    if authorization:
        head.append(f"Authorization: {authorization}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# -- the openssl ceiling ------------------------------------------------------------------------

def handshake_ceiling(settings: Settings, seconds: float, *, client_cert: tuple[Path, Path] | None
                      ) -> Figure:
    paths = Paths.of(settings)
    port = free_port()
    command = ["openssl", "s_server", "-accept", f"{HOST}:{port}", "-cert", str(paths.server_cert),
               "-key", str(paths.server_key), "-cert_chain", str(paths.issuing), "-www", "-quiet",
               "-num_tickets", "0", "-no_ca_names"]
    if client_cert:
        command += ["-verify", "1", "-CAfile", str(paths.chain)]
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port)
        timer = ["openssl", "s_time", "-connect", f"{HOST}:{port}", "-new",
                 "-time", str(int(seconds)), "-CAfile", str(paths.root)]
        if client_cert:
            timer += ["-cert", str(client_cert[0]), "-key", str(client_cert[1])]
        before = tree_cpu_seconds([server.pid])
        started = time.monotonic()
        out = subprocess.run(timer, capture_output=True, text=True, timeout=seconds + 30).stdout
        wall = time.monotonic() - started
        cpu = tree_cpu_seconds([server.pid]) - before
    finally:
        server.terminate()
        server.wait(timeout=10)
    match = re.search(r"(\d+) connections in [\d.]+ real seconds", out)
    if not match:
        raise SystemExit(f"cannot read openssl s_time output:\n{out}")
    name = "openssl mTLS handshake" if client_cert else "openssl server-auth handshake"
    return Figure(name, 1, int(match.group(1)), wall, cpu, {})


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {HOST}:{port}")


# -- the EST service ----------------------------------------------------------------------------

@contextmanager
def est_server(env: dict[str, str], workers: int) -> Iterator[tuple[int, list[int]]]:
    code = ("from fleet.settings import load_settings\n"
            "from provisioning.server import serve\n"
            f"serve(load_settings(), host='{HOST}', port=0, workers={workers})\n")
    process = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **env},
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = READY.search(line)
        if not match:
            raise SystemExit(f"EST server did not start: {line!r}")
        yield int(match.group(1)), descendants(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


Job = tuple[str, ...]


def run_load(name: str, workers: int, port: int | tuple[int, ...], pids: list[int],
             ca_file: Path,
             jobs: list[Job], client: Callable[..., None], *, clients: int, threads: int,
             seconds: float, on_start: Callable[[], None] | None = None) -> Figure:
    """Split *jobs* over client processes, start them together, stop at the deadline."""
    spawn = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    processes = []
    for index in range(clients):
        parent, child = spawn.Pipe()
        process = spawn.Process(target=client, args=(child, port, str(ca_file),
                                                     jobs[index::clients], threads))
        process.start()
        processes.append(process)
        pipes.append(parent)
    for pipe in pipes:
        assert pipe.recv() == "ready"
    if on_start is not None:
        on_start()
    before = tree_cpu_seconds(pids)
    started = time.monotonic()
    for pipe in pipes:
        pipe.send(seconds)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    finished = started
    for pipe in pipes:
        counts, ended, answered = pipe.recv()
        statuses.update(counts)
        latencies += answered
        finished = max(finished, ended)
    cpu = tree_cpu_seconds(pids) - before
    for process in processes:
        process.join(timeout=30)
    return Figure(name, workers, statuses.get("200", 0), finished - started, cpu,
                  dict(statuses), latencies)


def _exchange(context: ssl.SSLContext, port: int, request: bytes) -> bytes:
    with socket.create_connection((HOST, port)) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(request)
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _client_loop(pipe: Connection, work: Callable[[int], str], threads: int) -> None:
    """Run *work(thread_index)* in threads until the deadline the parent sends."""
    pipe.send("ready")
    seconds = pipe.recv()
    deadline = time.monotonic() + seconds
    counts: Counter[str] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()

    def loop(index: int) -> None:
        while (begun := time.monotonic()) < deadline:
            try:
                outcome = work(index)
            except StopIteration:
                return
            except (OSError, ssl.SSLError) as exc:
                outcome = type(exc).__name__
            took = time.monotonic() - begun
            with lock:
                counts[outcome] += 1
                if outcome == "200":
                    latencies.append(took)

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    pipe.send((dict(counts), time.monotonic(), latencies))


def token_client(pipe: Connection, port: int | tuple[int, ...], ca_file: str,
                 jobs: list[Job], threads: int) -> None:
    """simpleenroll, a new device (key and CSR made beforehand) per request; several ports
    (replicas) take the requests in turn."""
    ports = (port,) if isinstance(port, int) else port
    turn = iter(range(len(jobs)))
    context = ssl.create_default_context(cafile=ca_file)
    requests = iter([
        http_post("/.well-known/est/simpleenroll", csr_der(device_id, pki.generate_private_key()),
                  "Basic " + base64.b64encode(f"{device_id}:{token}".encode()).decode())
        for device_id, token in jobs])
    lock = threading.Lock()

    def work(_index: int) -> str:
        with lock:
            request, at = next(requests), ports[next(turn) % len(ports)]
        reply = _exchange(context, at, request)
        return reply[9:12].decode()

    _client_loop(pipe, work, threads)


def cacerts_client(pipe: Connection, port: int, ca_file: str, _jobs: list[Job],
                   threads: int) -> None:
    """GET /cacerts: the cost of TLS + HTTP in the service, without the registry."""
    context = ssl.create_default_context(cafile=ca_file)
    request = (b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n"
               b"Connection: close\r\n\r\n")
    _client_loop(pipe, lambda _index: _exchange(context, port, request)[9:12].decode(),
                 threads)


def reenroll_client(pipe: Connection, port: int, ca_file: str, jobs: list[Job],
                    threads: int) -> None:
    spool = Path(tempfile.mkdtemp(prefix="est-bench-"))
    devices = []
    for device_id, key_pem, cert_pem in jobs:
        key_file = spool / f"{device_id}.key"
        key_file.write_text(key_pem)
        cert_file = spool / f"{device_id}.pem"
        cert_file.write_text(cert_pem)
        key = pki.load_private_key_pem(key_pem.encode())
        request = http_post("/.well-known/est/simplereenroll", csr_der(device_id, key))
        devices.append((cert_file, key_file, request))
    turns = [devices[i::threads] for i in range(threads)]
    positions = [0] * threads

    def work(index: int) -> str:
        mine = turns[index]
        cert_file, key_file, request = mine[positions[index] % len(mine)]
        positions[index] += 1
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(ca_file)
        context.load_cert_chain(cert_file, key_file)
        reply = _exchange(context, port, request)
        status = reply[9:12].decode()
        if status == "200":
            body = reply.split(b"\r\n\r\n", 1)[1]
            (cert,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(b"".join(body.split())))
            cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return status

    try:
        _client_loop(pipe, work, threads)
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def token_jobs(settings: Settings, count: int, tag: str) -> list[Job]:
    issued = authority(settings).create_tokens(group="bench", actor="bench", count=count)
    return [(f"{tag}-{i}", str(t.token)) for i, t in enumerate(issued)]


def device_jobs(settings: Settings, count: int, tag: str) -> list[Job]:
    boss = authority(settings)
    jobs: list[Job] = []
    for i in range(count):
        key = pki.generate_private_key()
        device_id = f"{tag}-{i}"
        token = str(boss.create_tokens(group="bench", actor="bench")[0].token)
        cert = boss.enroll(credential=TokenCredential(token), csr=csr_der(device_id, key),
                           actor="bench").certificate
        jobs.append((device_id, pki.private_key_pem(key).decode(),
                     cert.public_bytes(serialization.Encoding.PEM).decode()))
    return jobs


def core_figures(settings: Settings, seconds: float) -> list[Figure]:
    """Authority.enroll and .reenroll called in this process: the core's own cost per call."""
    boss = authority(settings)
    count = max(50, int(40 * seconds))
    tokens = boss.create_tokens(group="bench", actor="bench", count=count)
    keys = [pki.generate_private_key() for _ in range(count)]
    csrs = [csr_der(f"core-{i}", key) for i, key in enumerate(keys)]
    started, cpu = time.monotonic(), time.process_time()
    issued = [boss.enroll(credential=TokenCredential(str(t.token)), csr=csr, actor="bench")
              for t, csr in zip(tokens, csrs, strict=True)]
    enroll = Figure("core Authority.enroll (no TLS/HTTP)", 1, count,
                    time.monotonic() - started, time.process_time() - cpu, {})
    started, cpu = time.monotonic(), time.process_time()
    for item, csr in zip(issued, csrs, strict=True):
        boss.reenroll(client_certificate=item.certificate, csr=csr, actor="bench")
    reenroll = Figure("core Authority.reenroll (no mTLS/HTTP)", 1, count,
                      time.monotonic() - started, time.process_time() - cpu, {})
    return [enroll, reenroll]


# -- profile ------------------------------------------------------------------------------------

def profile(pid: int, seconds: float, load: Callable[[Callable[[], None]], Figure],
            out: Path) -> str:
    """Sample the server with py-spy while *load* runs; summarize where the time goes."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return "py-spy not installed (pip install py-spy): no profile"
    recorder: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        recorder.append(subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
             "--format", "raw", "--gil", *(NATIVE or ["--nonblocking"]), "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)  # attached before the load starts

    load(start)
    recorder[0].wait(timeout=seconds + 60)
    return summarize_stacks(out)


def summarize_stacks(raw: Path, top: int = 18) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples of busy server threads",
             "inclusive (share of samples with the function on the stack):"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    lines.append("self (share of samples in the function itself):")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    return "\n".join(lines)


def _frame(frame: str) -> str:
    match = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not match:
        return frame
    function, path = match.groups()
    parts = Path(path).parts
    short = "/".join(parts[parts.index("site-packages") + 1:]) if "site-packages" in parts \
        else "/".join(parts[-2:])
    return f"{function} ({short})"


# -- main ---------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each timed run")
    parser.add_argument("--clients", type=int, default=2, help="load generator processes")
    parser.add_argument("--threads", type=int, default=8, help="connections in flight each")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--profile", action="store_true", help="py-spy the token path")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    begun = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="est-bench-") as tmp:
        settings, env = prepare(Path(tmp))
        paths = Paths.of(settings)
        sample = device_jobs(settings, 1, "s-time")[0]
        cert_file, key_file = Path(tmp) / "client.pem", Path(tmp) / "client.key"
        cert_file.write_text(sample[2])
        key_file.write_text(sample[1])

        figures = [handshake_ceiling(settings, args.seconds, client_cert=None),
                   handshake_ceiling(settings, args.seconds, client_cert=(cert_file, key_file)),
                   *core_figures(settings, args.seconds)]
        budget = int(1200 * args.seconds)  # more tokens than a run can use
        summary = ""
        for workers in args.workers:
            with est_server(env, workers) as (port, pids):
                if workers == 1:
                    figures.append(run_load("EST cacerts (TLS + HTTP only)", workers, port,
                                            pids, paths.root, [], cacerts_client,
                                            clients=args.clients, threads=args.threads,
                                            seconds=args.seconds))
                jobs = token_jobs(settings, budget, f"t{workers}")
                figures.append(run_load("EST simpleenroll (token)", workers, port, pids,
                                        paths.root, jobs, token_client, clients=args.clients,
                                        threads=args.threads, seconds=args.seconds))
                devices = device_jobs(settings, args.clients * args.threads * 2, f"r{workers}")
                figures.append(run_load("EST simplereenroll (mTLS)", workers, port, pids,
                                        paths.root, devices, reenroll_client,
                                        clients=args.clients, threads=args.threads,
                                        seconds=args.seconds))
        if args.profile:
            with est_server(env, 1) as (port, pids):
                jobs = token_jobs(settings, budget, "p")
                summary = profile(pids[0], args.seconds, lambda start: run_load(
                    "profile", 1, port, pids, paths.root, jobs, token_client,
                    clients=args.clients, threads=args.threads, seconds=args.seconds,
                    on_start=start), Path(tmp) / "profile.txt")
    report(figures, summary, time.monotonic() - begun, args.json)


def report(figures: list[Figure], summary: str, elapsed: float, out: Path | None) -> None:
    ceiling = {"server-auth": figures[0].per_cpu_second, "mtls": figures[1].per_cpu_second}
    print(f"{'what':40} {'workers':>7} {'done':>7} {'per s':>8} {'server CPU s':>12} "
          f"{'per CPU-s':>10} {'ratio':>6}")
    rows = []
    for figure in figures:
        peer = ceiling["mtls"] if "mTLS" in figure.name else ceiling["server-auth"]
        ratio = figure.per_cpu_second / peer if peer else 0.0
        rows.append({**asdict(figure, dict_factory=_without_latencies),
                     "per_second": figure.per_second,
                     "per_cpu_second": figure.per_cpu_second, "ratio_to_ceiling": ratio})
        print(f"{figure.name:40} {figure.workers:>7} {figure.done:>7} {figure.per_second:>8.1f} "
              f"{figure.server_cpu_seconds:>12.2f} {figure.per_cpu_second:>10.1f} "
              f"{ratio:>6.2f}")
        failures = {k: v for k, v in figure.statuses.items() if k != "200"}
        if failures:
            print(f"{'':40} non-200 outcomes: {failures}")
    print("per CPU-s = per server CPU-second (core rows: CPU of the calling process); ratio = "
          "that / the openssl ceiling of the same kind (target >= 0.80 for the EST rows)")
    if summary:
        print("\nwhere the server's time goes (py-spy, token path, 1 worker):")
        print(summary)
    print(f"\nbenchmark took {elapsed:.0f} s")
    if out:
        out.write_text(json.dumps({"figures": rows, "profile": summary}, indent=2))


def _without_latencies(items: list[tuple[str, object]]) -> dict[str, object]:
    return {key: value for key, value in items if key != "latencies"}


if __name__ == "__main__":
    main()
