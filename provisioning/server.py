"""Running the EST service: in this event loop (``start``) or as the blocking ``serve``.

``serve(..., workers=N)`` runs N processes that each bind the same port with SO_REUSEPORT, so
the kernel spreads connections over them; each has its own database pool and thread pool.
They share the metrics port the same way, in prometheus-client's multiprocess mode: whichever
worker a scrape reaches answers with the sum of all of them (fleet.metrics).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

from aiohttp import web

from fleet import eventloop, logs
from fleet.audit import Aggregate, Flush, RefusalDigest, actor_of
from fleet.authority import Authority
from fleet.authority.commits import GroupCommit
from fleet.authority.groups import require_label_groups
from fleet.ca import load_ca
from fleet.errors import ConfigError, FleetError, RegistryUnavailableError
from fleet.metrics import METRICS_PATH, MetricsServer, multiprocess_dir, scraped
from fleet.registry import make_engine, migrate
from fleet.settings import METRICS_OFF, Settings
from provisioning.app import EST_ROOT, EstService, build_app
from provisioning.connections import Listener, Timeouts
from provisioning.limits import Occupancy
from provisioning.metrics import Metrics
from provisioning.tls import VendorTrust, server_context

log = logging.getLogger("provisioning")

DB_THREADS = {"sqlite": 1, "postgresql": 8}
"""Threads running blocking registry calls (and connections in the database pool).

SQLite admits one writer at a time: more threads in one process only wait in SQLite's busy
handler (which sleeps 1-100 ms between attempts) and contend for the GIL.
"""
LISTEN_BACKLOG = 1024
SHUTDOWN_SECONDS = 5.0
WORKER_START_SECONDS = 60.0
VENDOR_REFRESH_SECONDS = 2.0
"""How soon a vendor registered while the service runs is trusted in its handshakes."""
READY = "ready"


class RunningServer:
    """A started EST service; ``port`` is the port actually bound, ``refusals`` the digest of
    its refusals without a verified identity (recorded every interval and on close)."""

    def __init__(self, *, port: int, metrics: MetricsServer | None, refusals: RefusalDigest,
                 close: Callable[[], Awaitable[None]]) -> None:
        self.port = port
        self.metrics_port = metrics.port if metrics is not None else None
        self.metrics_url = f"{metrics.url}{METRICS_PATH}" if metrics is not None else None
        self.refusals = refusals
        self._close = close
        self._closed = False

    async def close(self) -> None:
        """Stop accepting, finish requests in flight, release the database and threads."""
        if not self._closed:
            self._closed = True
            await self._close()


async def start(settings: Settings, *, host: str, port: int,
                reuse_port: bool = False) -> RunningServer:
    """Start the EST service (HTTPS) and, unless est.metrics_port is -1, its metrics on
    127.0.0.1 (0: a free port; one in use is a ConfigError) in the running event loop."""
    context = server_context(settings)
    ca = await asyncio.to_thread(load_ca, settings)
    url = settings.effective_database_url
    threads = DB_THREADS["sqlite" if url.startswith("sqlite") else "postgresql"]
    # One more connection for the committer of the enrollments' shared transactions.
    engine = make_engine(url, pool_size=threads + 1,
                         busy_timeout=settings.database_busy_timeout)
    try:
        await asyncio.to_thread(migrate, engine)
        await asyncio.to_thread(require_label_groups, engine, settings.est_labels)
    except RegistryUnavailableError as exc:
        # Serve anyway: requests get 503 + Retry-After until the database is back.
        log.warning("starting without the registry database: %s", exc.message)
    except BaseException:
        engine.dispose()
        raise
    executor = ThreadPoolExecutor(threads, thread_name_prefix="est-registry")
    # Enrollments wait for their shared commit in threads of their own: as many as one batch.
    enrollments = ThreadPoolExecutor(settings.database_group_commit_max,
                                     thread_name_prefix="est-enroll")
    commits = GroupCommit(engine, max_steps=settings.database_group_commit_max,
                          max_wait=settings.database_group_commit_wait)
    metrics = Metrics()
    digest = RefusalDigest(interval=settings.audit_refusal_interval.total_seconds(),
                           max_sources=settings.audit_refusal_sources)
    authority = Authority(settings=settings, engine=engine, ca=ca, refusals=digest,
                          commits=commits)
    service = EstService(authority=authority, executor=executor, enrollments=enrollments,
                         metrics=metrics)

    def release() -> None:
        for pool in (enrollments, executor):
            pool.shutdown(wait=True)
        commits.close()
        engine.dispose()

    async def flush(aggregates: list[Aggregate]) -> None:
        await service.call(authority.record_refusals, aggregates)

    runner = web.AppRunner(build_app(service), shutdown_timeout=SHUTDOWN_SECONDS)
    listener: Listener | None = None
    metrics_server: MetricsServer | None = None
    vendors = VendorTrust(context)
    await _trust_vendors(service, vendors)
    following = asyncio.create_task(_follow_vendors(service, vendors))
    digest.start(flush)
    try:
        await runner.setup()
        assert runner.server is not None
        sock = listen_socket(host, port, reuse_port=reuse_port, setting="est.port")
        listener = Listener(
            sock=sock, context=context, server=runner.server, backlog=LISTEN_BACKLOG,
            slots=Occupancy(total=settings.est_max_connections,
                            per_source=settings.est_max_connections_per_source,
                            what="connections open"),
            timeouts=Timeouts(handshake=settings.est_handshake_timeout.total_seconds(),
                              headers=settings.est_header_timeout.total_seconds(),
                              keepalive=settings.est_keepalive_timeout.total_seconds(),
                              linger=settings.est_body_timeout.total_seconds()),
            on_refused=lambda source, error: authority.refused_unverified(
                "connect", error, actor=actor_of("est", source)))
        listener.start()
        bound = sock.getsockname()[1]
        if settings.est_metrics_port != METRICS_OFF:
            metrics_sock = listen_socket("127.0.0.1", settings.est_metrics_port,
                                         reuse_port=reuse_port, setting="est.metrics_port")
            metrics_server = MetricsServer(
                sock=metrics_sock, registry=scraped(metrics.registry, metrics.registry_state),
                before_scrape=lambda: metrics.registry_state.refresh(service.call, engine))
            await metrics_server.start()
    except BaseException:
        following.cancel()
        await _stop(listener, runner, digest, flush)
        await asyncio.to_thread(release)
        raise

    async def close() -> None:
        following.cancel()
        if metrics_server is not None:
            await metrics_server.close()
        await _stop(listener, runner, digest, flush)
        await asyncio.to_thread(release)

    log.info("EST service on %s:%d (metrics: %s)", host, bound,
             metrics_server.url if metrics_server is not None else "off")
    return RunningServer(port=bound, metrics=metrics_server, refusals=digest, close=close)


async def _trust_vendors(service: EstService, vendors: VendorTrust) -> None:
    """Trust the CAs of vendors registered since the last call in the handshake."""
    try:
        added = vendors.add(await service.call(service.authority.vendor_ca_certificates))
    except FleetError as exc:  # the registry is down: the next round tries again
        log.debug("vendor CAs not refreshed: %s", exc.message)
        return
    if added:
        log.info("trusting %d more vendor CA certificate(s) for enrollment", added)


async def _follow_vendors(service: EstService, vendors: VendorTrust) -> None:
    while True:
        await asyncio.sleep(VENDOR_REFRESH_SECONDS)
        await _trust_vendors(service, vendors)


async def _stop(listener: Listener | None, runner: web.AppRunner, digest: RefusalDigest,
                flush: Flush) -> None:
    """Stop accepting, finish the requests in progress, then record the last refusals."""
    if listener is not None:
        await listener.close()
    await runner.cleanup()
    await digest.stop(flush)


def listen_socket(host: str, port: int, *, reuse_port: bool, setting: str) -> socket.socket:
    """A bound TCP socket (listening starts when the server takes it)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(setting, f"{host}:{port}", f"cannot listen: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(setting, f"{host}:{port}",
                          f"cannot listen: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


# -- the blocking entry point ---------------------------------------------------------------

def serve(settings: Settings, *, host: str, port: int, workers: int) -> None:
    """Serve until SIGINT or SIGTERM; prints one line when ready to accept connections."""
    if workers < 1:
        raise ConfigError("est.workers", workers, "must be at least 1")
    configure_logs(settings)
    if workers == 1:
        eventloop.run(_serve_here(settings, host=host, port=port))
        return
    _serve_workers(settings, host=host, port=port, workers=workers)


def configure_logs(settings: Settings) -> None:
    """log.level and log.format to stderr (fleet.logs). The service logs every request's
    outcome itself; aiohttp's access log stays quiet."""
    logs.configure(level=settings.log_level, format=settings.log_format)


def ready_line(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"EST listening on https://{shown}:{port}{EST_ROOT}"


def metrics_line(port: int) -> str:
    return f"metrics: http://127.0.0.1:{port}{METRICS_PATH}"


async def _serve_here(settings: Settings, *, host: str, port: int, reuse_port: bool = False,
                      ready: Callable[[int], None] | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = await start(settings, host=host, port=port, reuse_port=reuse_port)
    try:
        if ready is None:
            print(ready_line(host, server.port), flush=True)
            if server.metrics_port is not None:
                print(metrics_line(server.metrics_port), flush=True)
        else:
            ready(server.port)
        await stop.wait()
    finally:
        await server.close()


def _serve_workers(settings: Settings, *, host: str, port: int, workers: int) -> None:
    # Hold the ports (bound, not listening) so that port 0 resolves once for every worker.
    reservations = [listen_socket(host, port, reuse_port=True, setting="est.port")]
    try:
        port = reservations[0].getsockname()[1]
        metrics_port = None
        if settings.est_metrics_port != METRICS_OFF:
            reservations.append(listen_socket("127.0.0.1", settings.est_metrics_port,
                                              reuse_port=True, setting="est.metrics_port"))
            metrics_port = reservations[1].getsockname()[1]
            settings = settings.with_overrides(est_metrics_port=metrics_port)
        with multiprocess_dir():
            _run_workers(settings, host=host, port=port, workers=workers,
                         reservations=reservations, metrics_port=metrics_port)
    finally:
        _release(reservations)


def _release(reservations: list[socket.socket]) -> None:
    for sock in reservations:
        sock.close()


def _run_workers(settings: Settings, *, host: str, port: int, workers: int,
                 reservations: list[socket.socket], metrics_port: int | None) -> None:
    spawn = multiprocessing.get_context("spawn")
    children: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index in range(workers):
            receiver, sender = spawn.Pipe(duplex=False)
            process: multiprocessing.process.BaseProcess = spawn.Process(
                target=_worker, name=f"est-worker-{index}",
                args=(settings, host, port, sender), daemon=True)
            process.start()
            sender.close()
            children.append((process, receiver))
        for process, receiver in children:
            _await_ready(process, receiver, lambda: stopping)
        _release(reservations)
        if stopping:
            return
        print(ready_line(host, port), flush=True)
        if metrics_port is not None:
            print(metrics_line(metrics_port), flush=True)
        log.info("EST service running %d worker processes", workers)
        while not stopping:
            for process, _ in children:
                process.join(timeout=0.5 / workers)
                if not process.is_alive() and not stopping:
                    raise FleetError(f"EST worker {process.name} exited with code "
                                     f"{process.exitcode}")
    finally:
        for process, _ in children:
            if process.is_alive():
                process.terminate()
        for process, _ in children:
            process.join(timeout=SHUTDOWN_SECONDS + 5)
            if process.is_alive():
                process.kill()
                process.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _await_ready(process: multiprocessing.process.BaseProcess, receiver: Connection,
                 stopping: Callable[[], bool]) -> None:
    waited = 0.0
    while not stopping():
        if receiver.poll(0.2):
            try:
                message = receiver.recv()
            except EOFError:
                message = f"exited with code {process.exitcode}"
            if message != READY:
                raise FleetError(f"EST worker {process.name} did not start: {message}")
            return
        waited += 0.2
        if waited >= WORKER_START_SECONDS or not process.is_alive():
            raise FleetError(f"EST worker {process.name} did not start "
                             f"(exit code {process.exitcode})")


def _worker(settings: Settings, host: str, port: int, ready: Connection) -> None:
    """One worker process: serve on the shared port, report readiness to the parent."""
    configure_logs(settings)
    started = False

    def report(_port: int) -> None:
        nonlocal started
        started = True
        ready.send(READY)

    try:
        eventloop.run(_serve_here(settings, host=host, port=port, reuse_port=True, ready=report))
    except Exception as exc:
        if not started:
            ready.send(exc.message if isinstance(exc, FleetError)
                       else f"{type(exc).__name__}: {exc}")
        raise
