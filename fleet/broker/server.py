"""Start and stop the broker: TLS listener -> CONNECT gate -> amqtt, plus the watcher, the
state file (fleet.broker.persistence) and, on ``broker.metrics_port``, /metrics and
/healthz."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import sys
from typing import Any

from amqtt.contexts import Action

from fleet import eventloop
from fleet.acl import Policy, PolicyError, load_policy
from fleet.authority import Authority
from fleet.broker.amqtt_adapter import LISTENER, check_version
from fleet.broker.backend import Audit, Backend
from fleet.broker.connection import Connection, Connections
from fleet.broker.engine import FleetBroker
from fleet.broker.gate import Gate
from fleet.broker.health import BrokerMetrics, HealthServer, listening_socket
from fleet.broker.listener import TLSListener
from fleet.broker.persistence import Store
from fleet.broker.quotas import Quotas
from fleet.broker.tls import server_context
from fleet.broker.watcher import RevocationWatcher
from fleet.ca import load_trust
from fleet.errors import ConfigError, FleetError, ForbiddenError
from fleet.logs import fields
from fleet.metrics import METRICS_PATH
from fleet.registry import make_engine, migrate
from fleet.settings import METRICS_OFF, Settings

log = logging.getLogger(__name__)


def broker_config() -> dict[str, Any]:
    """amqtt configuration: one external listener fed by the gate, only Fleet's auth plugin
    (no anonymous access, no $SYS publisher, no topic plugin: fleet.broker.engine asks the
    live connection)."""
    return {
        "listeners": {LISTENER: {"type": "external", "bind": "fleet-gate"}},
        "plugins": {
            "fleet.broker.plugins.CertificateAuthPlugin": {},
        },
    }


class RunningServer:
    """A started broker; ``port`` is the port actually bound, ``health`` serves /metrics and
    /healthz (None: broker.metrics_port is -1, off)."""

    def __init__(self, *, host: str, port: int, listener: TLSListener, broker: FleetBroker,
                 watcher: RevocationWatcher, backend: Backend, audit: Audit,
                 connections: Connections, health: HealthServer | None,
                 store: Store | None) -> None:
        self.host = host
        self.port = port
        self.broker = broker
        self.connections = connections
        self.watcher = watcher
        self.health = health
        self._listener = listener
        self._backend = backend
        self._audit = audit
        self._store = store
        self._closed = False

    @property
    def metrics_url(self) -> str | None:
        return f"{self.health.url}{METRICS_PATH}" if self.health is not None else None

    async def close(self) -> None:
        """Stop accepting, drop every connection, save what persists, stop amqtt and the
        watcher."""
        if self._closed:
            return
        self._closed = True
        self._listener.stop_accepting()
        if self.health is not None:
            await self.health.close()
        await self.watcher.stop()
        for connection in self.connections:
            connection.abort("broker shutting down")
        await self._listener.close()
        if self._store is not None:
            await self._store.close()
        await self.broker.shutdown()
        await self._audit.close()
        await asyncio.to_thread(self._backend.close)
        await asyncio.to_thread(self._backend.authority.engine.dispose)


async def start(settings: Settings, *, host: str, port: int) -> RunningServer:
    """Start the broker on *host*:*port* (0 picks a free port), and /metrics and /healthz on
    *host*:broker.metrics_port unless it is -1 (0 picks a free port, one in use is a
    ConfigError). Refuses an amqtt other than the one fleet.broker.amqtt_adapter was written
    for."""
    check_version()
    quiet = logging.getLogger("amqtt")  # its per-connection chatter, unless configured
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.ERROR)
    try:
        policy = load_policy(settings.acl_file)
    except PolicyError as exc:
        raise ConfigError("broker.acl_file", str(settings.acl_file), str(exc)) from None
    context = server_context(settings)
    health_socket = (listening_socket(host, settings.broker_metrics_port)
                     if settings.broker_metrics_port != METRICS_OFF else None)
    try:
        return await _start(settings, host=host, port=port, policy=policy, context=context,
                            health_socket=health_socket)
    except BaseException:
        if health_socket is not None:
            health_socket.close()
        raise


async def _start(settings: Settings, *, host: str, port: int, policy: Policy,
                 context: ssl.SSLContext, health_socket: socket.socket | None) -> RunningServer:
    engine = make_engine(settings.effective_database_url,
                         busy_timeout=settings.database_busy_timeout)
    await asyncio.to_thread(migrate, engine)
    authority = Authority(settings=settings, engine=engine, trust=load_trust(settings))
    backend = Backend(authority)
    metrics = BrokerMetrics()
    audit = Audit(backend, interval=settings.audit_refusal_interval.total_seconds(),
                  max_sources=settings.audit_refusal_sources, metrics=metrics)
    audit.start()
    connections = Connections()

    def denied(connection: Connection | None, action: Action, topic: str) -> None:
        identity = connection.identity if connection is not None else None
        error = ForbiddenError(f"{identity or 'unknown client'} may not {action} {topic!r}",
                               topic=topic, peer=connection.peer if connection else None)
        audit.denied(f"broker.{action}", error, identity=str(identity or "unknown"), topic=topic)
        metrics.denied(action.value)

    def quota(connection: Connection | None, name: str, detail: str) -> None:
        identity = connection.identity if connection is not None else None
        audit.refused("broker.quota", ForbiddenError(
            f"{identity or 'unknown client'} over broker.{name}: {detail}", quota=name,
            peer=connection.peer if connection else None),
            device_id=connection.device_id if connection else None,
            serial=connection.serial if connection else None)

    broker = FleetBroker(broker_config(), quotas=Quotas.from_settings(settings),
                         session_expiry=settings.session_expiry.total_seconds(),
                         on_denied=denied, on_quota=quota, metrics=metrics)
    await broker.start()
    store = None
    if settings.persistence:
        store = Store.in_data_dir(settings.data_dir, broker=broker,
                                  interval=settings.persistence_interval.total_seconds())
        await store.load()
    watcher = RevocationWatcher(backend=backend, audit=audit, connections=connections,
                                broker=broker,
                                interval=settings.revocation_poll_interval.total_seconds(),
                                metrics=metrics)
    gate = Gate(settings=settings, backend=backend, audit=audit, policy=policy, broker=broker,
                connections=connections, revocations_confirmed_at=lambda: watcher.confirmed_at,
                admissions=watcher.admissions, metrics=metrics)

    def handshake_refused(error: FleetError) -> None:
        audit.unverified("broker.handshake", error)
        metrics.handshakes_refused.inc()
        # Anyone can provoke these at will: the refusal digest sums them up.
        log.debug("handshake refused", extra=fields(peer=error.context.get("peer"),
                                                    reason=error.message))

    listener = TLSListener(
        context=context, max_connections=settings.max_connections,
        max_pending=settings.max_pending_connections,
        max_pending_per_source=settings.max_pending_per_source,
        handshake_timeout=settings.handshake_timeout.total_seconds(), on_connection=gate.serve,
        on_refused=handshake_refused)
    await watcher.start()
    if store is not None:
        await store.purge_withdrawn(backend, audit)
    bound = await listener.start(host, port)
    if store is not None:
        store.start()
    metrics.observe(poll_age=watcher.poll_age,
                    pending=lambda: listener.pending_connections,
                    admitted=lambda: listener.open_connections - listener.pending_connections)
    health = None
    if health_socket is not None:
        health = HealthServer(sock=health_socket, metrics=metrics, health=watcher.health)
        await health.start()
    return RunningServer(host=host, port=bound, listener=listener, broker=broker,
                         watcher=watcher, backend=backend, audit=audit,
                         connections=connections, health=health, store=store)


def serve(settings: Settings, *, host: str, port: int) -> None:
    """Run the broker in the foreground until SIGINT or SIGTERM."""
    eventloop.run(_serve(settings, host=host, port=port))


async def _serve(settings: Settings, *, host: str, port: int) -> None:
    running = await start(settings, host=host, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    shown = f"[{running.host}]" if ":" in running.host else running.host
    print(f"MQTT listening on mqtts://{shown}:{running.port}", flush=True)
    if running.health is not None:
        print(f"metrics: {running.metrics_url}", flush=True)
        print(f"health: {running.health.url}/healthz", flush=True)
    try:
        await stop.wait()
    finally:
        await running.close()
        print("MQTT broker stopped", file=sys.stderr, flush=True)
