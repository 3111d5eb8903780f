"""Run a scenario: mint tokens, start devices at the ramp rate, revoke, restart, and judge.

The timeline (``t`` is seconds since the first device started)::

    the operator declares the scenario's group unless it is declared; factory mints one
    bootstrap token per device or, with `idevid`, a test vendor CA gives each device its
    manufacturer certificate, the operator registers the vendor (fleet vendor add, the run's
    device ids as the allow list) and the run waits until the EST service trusts it; the
    operator issues the backend's certificate
    t=0 .. duration    devices start at `ramp` per second and live their lives
    t=revoke_at        the operator revokes `revoke` online devices, one command each
    t=broker_restart_at   the broker is restarted through the hook the caller provides
    duration .. +drain    no new telemetry or commands; QoS 1 messages in flight may land
    then every device disconnects and the run is judged

The run is the glue between the two sides of the wire: the devices (which know Fleet only
over EST and MQTT) and the operator (:mod:`device_sim.operator`, on Fleet's core). Fleet's
errors are caught here only where the operator raises them.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from device_sim.backend import Backend, Command
from device_sim.crypto import private_key_pem
from device_sim.device import Device, Phase
from device_sim.environment import Endpoints, Environment, RestartWindow
from device_sim.est_client import ESTClient, ESTError
from device_sim.manufacturer import Idevid, VendorCA
from device_sim.metrics import Metrics, spans_cover
from device_sim.misbehave import MisbehavingDevice
from device_sim.mqtt_loop import MqttLoop
from device_sim.operator import Created, FleetOperator
from device_sim.scenario import Misbehavior, Scenario
from device_sim.tls import TrustError, client_context
from fleet.errors import FleetError

RestartHook = Callable[[], Awaitable[None]]
ProgressHook = Callable[["Snapshot"], None]

DELIVERY_GRACE = 5.0
"""Seconds a connected device is given to receive a QoS 1 command before it counts as lost."""
LIFETIME_TOLERANCE = 0.1
RENEWAL_SAFETY = 5.0
"""Devices renewing within this many seconds are not picked for revocation (cleaner timing)."""
VENDOR_TRUST_TIMEOUT = 30.0
"""Seconds the EST service is given to trust a vendor registered by the run in its TLS
handshakes (it re-reads the vendors every few seconds)."""
VENDOR_TRUST_POLL = 0.25


class RunError(Exception):
    """The run cannot start or go on (not a finding about the system under test)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Progress once per second, for the live display."""

    t: float
    duration: float
    devices: int
    enrolled: int
    online: int
    messages_sent: int
    messages_received: int
    renewals_ok: int
    revoked: int
    errors: int
    phase: str


@dataclass(frozen=True, slots=True)
class Expectation:
    name: str
    ok: bool
    detail: str = ""


@dataclass(slots=True)
class Revocation:
    device_id: str
    at: float
    command_ms: float


@dataclass
class RunResult:
    """Everything measured; :mod:`device_sim.report` turns it into JSON, a table and a chart."""

    scenario: Scenario
    endpoints: Endpoints
    run_id: str
    started_at: str
    elapsed: float
    metrics: Metrics
    devices: list[Device]
    misbehaving: list[MisbehavingDevice]
    revocations: list[Revocation]
    restarts: list[RestartWindow]
    online_series: list[int]
    issued_lifetime: float | None
    commands: dict[str, int]
    restart_recovery: list[float | None]
    offline_at_end: list[str]
    vendor: str | None = None
    """The vendor whose manufacturer certificates the devices enrolled with (None: tokens)."""
    expectations: list[Expectation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fatal: str | None = None

    @property
    def ok(self) -> bool:
        return self.fatal is None and all(e.ok for e in self.expectations)


class Run:
    """One execution of a scenario against running Fleet services."""

    def __init__(self, scenario: Scenario, *, endpoints: Endpoints, operator: FleetOperator,
                 restart_broker: RestartHook | None = None,
                 progress: ProgressHook | None = None,
                 vendor_trust_timeout: float = VENDOR_TRUST_TIMEOUT) -> None:
        if scenario.broker_restart_at is not None and restart_broker is None:
            raise RunError("the scenario restarts the broker, but there is no way to: "
                             "start the services from the simulator or give a restart command")
        self.scenario = scenario
        self.endpoints = endpoints
        self.operator = operator
        self.restart_broker = restart_broker
        self.progress = progress
        self.vendor_trust_timeout = vendor_trust_timeout
        self.run_id = secrets.token_hex(3)
        self.rng = random.Random(scenario.seed)
        self.notes: list[str] = []
        self.fatal: str | None = None
        self.revocations: list[Revocation] = []
        self.restart_recovery: list[float | None] = []
        self.online_series: list[int] = []
        self.offline_at_end: list[str] = []
        self.tokens: list[str] = []
        self.device_ids: list[str] = []
        self.declared_group = False
        self.vendor: str | None = None
        self.phase = "starting"

    # -- set-up -----------------------------------------------------------------------------

    def _roster(self, env: Environment, tokens: list[str], idevids: dict[str, Idevid],
                ) -> tuple[list[Device], list[MisbehavingDevice]]:
        """Device ids and roles; misbehaving devices are spread evenly through the fleet. A
        device enrolls with its manufacturer certificate when *idevids* holds one for it,
        else with one of *tokens*."""
        s = self.scenario
        total, bad = s.devices, s.misbehaving_devices
        bad_slots = {round(i * total / bad + total / (2 * bad)) % total: i
                     for i in range(bad)} if bad else {}
        tokens = list(tokens)
        devices: list[Device] = []
        misbehaving: list[MisbehavingDevice] = []
        for index, device_id in enumerate(self._device_ids()):
            idevid = idevids.get(device_id)
            if index in bad_slots:
                kind = s.misbehaviors[bad_slots[index] % len(s.misbehaviors)]
                foreign = kind is Misbehavior.FOREIGN_CA  # never enrolls
                token = None if foreign or idevids else tokens.pop()
                bad_device = MisbehavingDevice(device_id, env, token=token, kind=kind,
                                               idevid=None if foreign else idevid)
                misbehaving.append(bad_device)
                devices.append(bad_device)
            else:
                devices.append(Device(device_id, env, token=None if idevids else tokens.pop(),
                                      idevid=idevid))
                env.well_behaved.add(device_id)
        return devices, misbehaving

    def _device_ids(self) -> list[str]:
        s = self.scenario
        return [f"{s.device_prefix}-{self.run_id}-{index:05d}" for index in range(s.devices)]

    def _tokens_needed(self) -> int:
        s = self.scenario
        bad = s.misbehaving_devices
        foreign = sum(1 for i in range(bad)
                      if s.misbehaviors[i % len(s.misbehaviors)] is Misbehavior.FOREIGN_CA)
        return s.devices - foreign

    # -- the run ----------------------------------------------------------------------------

    async def execute(self) -> RunResult:
        s = self.scenario
        started_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        metrics = Metrics()
        loop = asyncio.get_running_loop()
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            mqtt_loop = MqttLoop()
            mqtt_loop.start()
            env = Environment(
                scenario=s, endpoints=self.endpoints,
                est=ESTClient(self.endpoints.est_url, session=http, label=s.est_label,
                              timeout=max(30.0, s.connect_timeout)),
                mqtt=mqtt_loop, metrics=metrics, rng=self.rng, started=loop.time())
            env.on_first_certificate = lambda lifetime: self._check_lifetime(env, lifetime)
            try:
                await self._reach_est(env)
                self.declared_group = await self.operator.declare_group(s.group)
                idevids: dict[str, Idevid] = {}
                if s.idevid:
                    self.phase = "registering the vendor"
                    idevids = await self._manufacture(env)
                else:
                    self.phase = "minting tokens"
                    self.tokens = await self.operator.mint_tokens(group=s.group,
                                                                  count=self._tokens_needed())
                devices, misbehaving = self._roster(env, self.tokens, idevids)
                self.device_ids = [d.id for d in devices]
                backend = await self._start_backend(env)
            except BaseException:
                mqtt_loop.stop()
                raise
            env.started = loop.time()
            tasks: list[asyncio.Task[None]] = []
            timeline = [
                asyncio.create_task(self._ramp(env, devices, tasks)),
                asyncio.create_task(self._sample(env, devices)),
            ]
            if s.revoke:
                timeline.append(asyncio.create_task(self._revoke(env, devices, backend)))
            if s.broker_restart_at is not None:
                timeline.append(asyncio.create_task(self._restart(env, devices, backend)))
            try:
                self.phase = "running"
                await env.sleep(s.duration)
                await self._drain(env, devices, backend)
            finally:
                self.phase = "stopping"
                if not env.stop.done():
                    env.stop.set_result(None)
                for task in timeline:
                    task.cancel()
                await asyncio.gather(*timeline, return_exceptions=True)
                await _settle(tasks, timeout=s.connect_timeout + 5)
                await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)
                if backend is not None:
                    await backend.close()
                mqtt_loop.stop()
            elapsed = env.now()
        result = RunResult(
            scenario=s, endpoints=self.endpoints, run_id=self.run_id, started_at=started_at,
            elapsed=elapsed, metrics=metrics, devices=devices, misbehaving=misbehaving,
            revocations=self.revocations, restarts=env.restarts,
            online_series=self.online_series, issued_lifetime=env.issued_lifetime,
            commands=_command_outcomes(backend, devices, env, elapsed),
            restart_recovery=self.restart_recovery, offline_at_end=self.offline_at_end,
            vendor=self.vendor, notes=self.notes, fatal=self.fatal)
        _sightings(env, misbehaving)
        result.expectations = judge(result)
        return result

    @property
    def created(self) -> Created:
        return Created(device_ids=list(self.device_ids), tokens=list(self.tokens),
                       group=self.scenario.group if self.declared_group else None,
                       vendor=self.vendor)

    async def _reach_est(self, env: Environment) -> None:
        """Fetch the CA certificates once before anything starts: an EST service that cannot
        be reached (or does not hold the pinned root) stops the run, naming it."""
        try:
            await env.trust()
        except (ESTError, TrustError) as exc:
            raise RunError(f"EST service {self.endpoints.est_url}: {exc}") from None

    async def _manufacture(self, env: Environment) -> dict[str, Idevid]:
        """The factory of a vendor of the run's own: a CA, one manufacturer certificate per
        device naming it in the serialNumber; the operator registers the vendor into the
        scenario's group with the run's device ids as its allow list. Returns once the EST
        service trusts the vendor's certificates in its handshakes."""
        s = self.scenario
        name = f"{s.device_prefix}-{self.run_id}"
        vendor = VendorCA(name)
        ids = self._device_ids()
        self.device_ids = ids
        await self.operator.register_vendor(name=name, ca_pem=vendor.pem(), group=s.group,
                                            allowed=ids)
        self.vendor = name
        idevids = {device_id: vendor.issue(device_id) for device_id in ids}
        await self._await_vendor_trust(env, idevids[ids[0]])
        return idevids

    async def _await_vendor_trust(self, env: Environment, idevid: Idevid) -> None:
        """Poll ``/cacerts`` presenting *idevid* until the EST service's handshake accepts it;
        RunError after :attr:`vendor_trust_timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.vendor_trust_timeout
        anchors, _ = await env.trust()
        context = client_context(anchors, idevid.certificate, private_key_pem(idevid.key))
        while True:
            try:
                await env.est.cacerts(context=context)
                return
            except ESTError as exc:
                if loop.time() >= deadline:
                    raise RunError(
                        f"EST service {self.endpoints.est_url} did not accept the "
                        f"manufacturer certificates of vendor {self.vendor} within "
                        f"{self.vendor_trust_timeout:g} s of registering it (does it serve "
                        f"the registry of this data dir?): {exc}") from None
            await asyncio.sleep(VENDOR_TRUST_POLL)

    async def _start_backend(self, env: Environment) -> Backend | None:
        if self.scenario.command_interval <= 0 and not self.scenario.misbehaving:
            return None
        name = f"{self.scenario.device_prefix}-backend-{self.run_id}"
        try:
            credentials = await self.operator.service_credentials(name)
        except FleetError as exc:
            self.notes.append(f"no backend service (commands not exercised): {exc}")
            return None
        backend = Backend(env, credentials)
        env.on_session_ready = backend.session_ready
        task = asyncio.create_task(backend.run())
        online = asyncio.create_task(backend.online.wait())
        done, _ = await asyncio.wait((task, online), timeout=30,
                                     return_when=asyncio.FIRST_COMPLETED)
        if online not in done:
            online.cancel()
            detail = task.exception() if task.done() else "no connection within 30 s"
            raise RunError(f"the backend service could not connect to the broker at "
                           f"{self.endpoints.mqtt_host}:{self.endpoints.mqtt_port}: {detail}")
        return backend

    async def _ramp(self, env: Environment, devices: list[Device],
                    tasks: list[asyncio.Task[None]]) -> None:
        rate = self.scenario.ramp
        for index, device in enumerate(devices):
            if rate > 0:
                due = index / rate
                if due > env.now() and not await env.sleep(due - env.now()):
                    return
            if env.stopping:
                return
            tasks.append(asyncio.create_task(device.run(), name=device.id))

    async def _sample(self, env: Environment, devices: list[Device]) -> None:
        s = self.scenario
        second = 0
        while not env.stopping:
            second += 1
            if not await env.sleep(second - env.now()):
                return
            self.online_series.append(len(env.online))
            if self.progress is not None:
                counters = env.metrics.counters
                self.progress(Snapshot(
                    t=env.now(), duration=s.duration, devices=s.devices,
                    enrolled=counters["enrolled"], online=len(env.online),
                    messages_sent=sum(counters[k] for k in SENT),
                    messages_received=sum(counters[k] for k in RECEIVED),
                    renewals_ok=counters["renewals_ok"], revoked=len(self.revocations),
                    errors=env.metrics.unexpected_errors, phase=self.phase))

    async def _revoke(self, env: Environment, devices: list[Device],
                      backend: Backend | None) -> None:
        s = self.scenario
        if not await env.sleep(s.effective_revoke_at):
            return
        self.phase = "revoking"
        now = env.now()
        online = [d for d in devices if d.id in env.well_behaved and d.phase is Phase.ONLINE]
        # Prefer devices that will not be renewing when the broker drops them.
        calm = [d for d in online if (d.next_renewal or 0) > now + RENEWAL_SAFETY]
        chosen = self.rng.sample(calm, min(s.revoke, len(calm)))
        busy = sorted((d for d in online if d not in chosen),
                      key=lambda d: d.next_renewal or 0, reverse=True)
        chosen.extend(busy[:s.revoke - len(chosen)])
        if len(chosen) < s.revoke:
            self.notes.append(f"only {len(chosen)} devices were online at t={now:.1f} s; "
                              "revoked those")
        for device in chosen:
            if backend is not None:
                backend.forget(device.id)
            at = env.now()
            device.mark_revoked(at)
            await self.operator.revoke_device(device.id)
            self.revocations.append(Revocation(device.id, at, (env.now() - at) * 1000))
        self.phase = "running"

    async def _restart(self, env: Environment, devices: list[Device],
                       backend: Backend | None) -> None:
        s = self.scenario
        assert s.broker_restart_at is not None
        assert self.restart_broker is not None
        if not await env.sleep(s.broker_restart_at):
            return
        self.phase = "restarting the broker"
        window = RestartWindow(begin=env.now())
        env.restarts.append(window)
        if backend is not None:
            backend.broker_restarting()
        try:
            await self.restart_broker()
        except Exception as exc:
            self.fatal = f"broker restart failed: {exc}"
            env.stop.set_result(None)
            return
        window.end = env.now()
        self.phase = "running"
        # How long until every device that should be online has reconnected since.
        try:
            while not env.stopping:
                if not _not_back(env, devices, since=window.begin):
                    self.restart_recovery.append(round(env.now() - window.begin, 2))
                    return
                await asyncio.sleep(0.25)
        except asyncio.CancelledError:
            self.restart_recovery.append(None)
            raise
        self.restart_recovery.append(None)

    async def _drain(self, env: Environment, devices: list[Device],
                     backend: Backend | None) -> None:
        """Stop new traffic and give QoS 1 messages in flight time to land."""
        self.phase = "draining"
        env.draining = True
        if backend is not None:
            backend.sending = False
        deadline = env.now() + self.scenario.drain
        while env.now() < deadline and not env.stopping:
            if _all_delivered(backend, devices):
                break
            await env.sleep(0.25)
        self.offline_at_end = _stuck(env, devices)

    def _check_lifetime(self, env: Environment, lifetime: float) -> None:
        expected = self.scenario.cert_lifetime
        if expected is None:
            if lifetime * self.scenario.renewal_fraction > self.scenario.duration:
                self.notes.append(f"certificates last {lifetime:.0f} s: no renewal happens "
                                  f"within a {self.scenario.duration:.0f} s run")
            return
        if abs(lifetime - expected) > max(2.0, expected * LIFETIME_TOLERANCE):
            self.fatal = (
                f"the EST service issues certificates valid for {lifetime:.0f} s but the "
                f"scenario expects {expected:.0f} s: start the service with "
                f"FLEET_CERTIFICATES_DEVICE_LIFETIME={expected:g}s (or use --spawn-services)")
            if not env.stop.done():
                env.stop.set_result(None)


SENT = ("telemetry_sent", "commands_sent", "replies_sent")
RECEIVED = ("telemetry_received", "commands_received", "replies_received")


async def _settle(tasks: list[asyncio.Task[None]], *, timeout: float) -> None:
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _expected_online(env: Environment, devices: list[Device]) -> list[Device]:
    """Well-behaved devices that should be connected: not revoked, not failed."""
    return [d for d in devices if d.id in env.well_behaved and d.revoked_at is None
            and d.phase is not Phase.FAILED]


def _not_back(env: Environment, devices: list[Device], *, since: float) -> list[str]:
    """Devices that have not connected since *since* (renewals keep some briefly offline at
    any moment, so "all online at once" is not the test of a fleet that came back)."""
    return [d.id for d in _expected_online(env, devices)
            if not d.spans or d.spans[-1][0] < since]


def _stuck(env: Environment, devices: list[Device]) -> list[str]:
    """Devices offline for longer than a reconnect with the longest backoff can take."""
    s = env.scenario
    limit = env.now() - (s.connect_timeout + s.backoff_max)
    return [d.id for d in _expected_online(env, devices) if d.id not in env.online
            and (not d.spans or (d.spans[-1][1] or env.now()) < limit)]


def _all_delivered(backend: Backend | None, devices: list[Device]) -> bool:
    if backend is None:
        return True
    if backend.unconfirmed:
        return False
    seen = {d.id: d.commands_seen for d in devices}
    return all(c.seq in seen.get(c.device_id, ()) for c in backend.commands[-200:])


def _command_outcomes(backend: Backend | None, devices: list[Device], env: Environment,
                      end: float) -> dict[str, int]:
    """Which acknowledged QoS 1 commands never arrived, and whether that was allowed.

    A command may be lost when the broker restarted before the device could receive it (the
    broker keeps sessions in memory), or when the device was revoked. Otherwise, if the device
    was connected at any moment between the broker's acknowledgement and that limit (less a
    grace period), it must have received the command.
    """
    outcome = {"acknowledged": 0, "delivered": 0, "lost": 0, "excused": 0}
    if backend is None:
        return outcome
    by_id = {d.id: d for d in devices}
    for command in backend.commands:
        outcome["acknowledged"] += 1
        device = by_id.get(command.device_id)
        if device is None:
            continue
        if command.seq in device.commands_seen:
            outcome["delivered"] += 1
            continue
        if command_excused(command, device, env.restarts, end):
            outcome["excused"] += 1
            continue
        outcome["lost"] += 1
        acked = command.acked_at if command.acked_at is not None else end
        around = [f"{a:.2f}-{'' if b is None else f'{b:.2f}'}" for a, b in device.spans
                  if (b is None or b >= acked - DELIVERY_GRACE) and a <= acked + DELIVERY_GRACE]
        env.metrics.error(acked, "command-lost", device.id,
                          f"QoS 1 command {command.seq} acknowledged by the broker at "
                          f"t={acked:.2f} s never arrived; device connected "
                          f"{', '.join(around) or 'never near then'}")
    return outcome


def command_excused(command: Command, device: Device, restarts: list[RestartWindow],
                    end: float) -> bool:
    """May this acknowledged command be missing? See :func:`_command_outcomes`."""
    acked = command.acked_at if command.acked_at is not None else end
    if any(command.published_at - DELIVERY_GRACE <= w.begin <= acked for w in restarts):
        return True
    limit = end
    later_restarts = [w.begin for w in restarts if w.begin >= acked]
    if later_restarts:
        limit = min(limit, min(later_restarts))
    if device.revoked_at is not None:
        limit = min(limit, device.revoked_at)
    return not spans_cover(device.spans, acked, limit - DELIVERY_GRACE)


def _sightings(env: Environment, misbehaving: list[MisbehavingDevice]) -> None:
    """Publications by misbehaving devices that someone received were admitted."""
    by_id = {d.id: d for d in misbehaving}
    for sighting in env.sightings:
        device = by_id.get(sighting.misbehaver)
        if device is not None:
            device.probe("publish reached someone", False, sighting.where)
        else:
            env.metrics.error(0.0, "misbehaving-admitted", sighting.misbehaver, sighting.where)
    for device in misbehaving:
        for probe in device.probes:
            if probe.refused is None:
                probe.refused = True
                probe.detail = probe.detail or "nobody received it"


def judge(result: RunResult) -> list[Expectation]:
    """The checks that decide the exit code."""
    s = result.scenario
    m = result.metrics
    out: list[Expectation] = []
    good = [d for d in result.devices if not isinstance(d, MisbehavingDevice)]
    enrolled = sum(1 for d in good if d.enrolled_at is not None)
    connected = sum(1 for d in good if d.first_online_at is not None)
    out.append(Expectation("every device enrolled", enrolled == len(good),
                           f"{enrolled} of {len(good)}"))
    out.append(Expectation("every device connected", connected == len(good),
                           f"{connected} of {len(good)}"))
    if result.elapsed >= s.duration:
        offline = result.offline_at_end
        out.append(Expectation("no device stuck offline at the end", not offline,
                               f"offline: {_listing(offline)}" if offline else ""))
    for index, back in enumerate(result.restart_recovery):
        out.append(Expectation(f"the fleet came back after broker restart {index + 1}",
                               back is not None, "" if back is None else f"after {back:g} s"))
    out.append(Expectation("no renewal failed", m.counters["renewals_failed"] == 0,
                           f"{m.counters['renewals_ok']} ok, "
                           f"{m.counters['renewals_failed']} failed"))
    if s.revoke:
        out.append(Expectation(f"{s.revoke} devices revoked", len(result.revocations) == s.revoke,
                               f"{len(result.revocations)} revoked"))
        revoked = {r.device_id for r in result.revocations}
        still = [d.id for d in good if d.id in revoked and "drop_ms" not in d.revocation]
        out.append(Expectation("revoked devices were disconnected", not still,
                               f"still connected: {', '.join(still)}" if still else ""))
        readmitted = [d.id for d in good if d.id in revoked
                      and (d.revocation.get("reconnect") == "connected"
                           or d.revocation.get("reenroll") == "issued")]
        out.append(Expectation("revoked devices stayed out", not readmitted,
                               ", ".join(readmitted)))
    if result.misbehaving:
        admitted = [d.id for d in result.misbehaving
                    if any(p.refused is False for p in d.probes)]
        out.append(Expectation("every misbehaving device refused", not admitted,
                               f"admitted: {', '.join(admitted)}" if admitted else ""))
    out.append(Expectation("no QoS 1 command lost", result.commands["lost"] == 0,
                           f"{result.commands['lost']} lost"))
    out.append(Expectation("no unexpected errors", m.unexpected_errors == 0,
                           ", ".join(f"{k}: {v}" for k, v in m.errors_by_kind.items())))
    return out


def _listing(ids: list[str], limit: int = 10) -> str:
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def misbehaving_summary(misbehaving: list[MisbehavingDevice]) -> dict[str, Any]:
    """Counts per kind: attempted, refused, admitted, skipped."""
    summary: dict[str, Any] = {}
    for device in misbehaving:
        entry = summary.setdefault(device.kind.value, {"devices": 0, "attempted": 0,
                                                        "refused": 0, "admitted": 0,
                                                        "skipped": 0})
        entry["devices"] += 1
        if not device.probes:
            entry["skipped"] += 1
            continue
        entry["attempted"] += 1
        if all(p.refused for p in device.probes):
            entry["refused"] += 1
        else:
            entry["admitted"] += 1
    return summary
