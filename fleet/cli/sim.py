"""``fleet sim run``: simulated devices against Fleet's EST service and broker.

The devices use only EST (HTTPS) and MQTT (TLS). The command plays factory tooling (mints one
bootstrap token per device or, with ``--idevid``, gives each a manufacturer certificate from
a vendor CA of the run's own) and operator (declares the scenario's group, registers that
vendor, revokes devices, issues the backend's service certificate) through the registry in
the data dir, so run it where ``fleet`` commands work. Afterwards it removes its vendor and
its devices from the registry (revoked first if still active), revokes the tokens no device
used and deletes the group it declared, unless ``--keep``; their certificates and audit
events stay.

Certificate lifetime: the EST service alone decides it (``certificates.device_lifetime``,
env ``FLEET_CERTIFICATES_DEVICE_LIFETIME``). ``--cert-lifetime`` states what the service is
expected to issue; the run stops with an error when the first certificate says otherwise.
With ``--spawn-services`` the command starts ``fleet serve est`` and ``fleet serve broker``
itself with that lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fleet import eventloop
from fleet.cli.context import Fleet, fleet_of
from fleet.cli.destination import claimed, output_directory
from fleet.cli.output import command_group, note
from fleet.errors import FleetError
from fleet.pki import fingerprint_sha256, load_certificate
from fleet.settings import Settings

app = command_group("Simulated devices: the demo, the end-to-end test, the load generator.")

EXIT_EXPECTATION_FAILED = 1


def _duration(text: str | None) -> float | None:
    from device_sim.scenario import ScenarioError, seconds

    if text is None:
        return None
    try:
        return seconds(text, key="duration")
    except ScenarioError as exc:
        raise typer.BadParameter(f"{text!r} is not a duration; write e.g. 30s, 2m or 250ms") \
            from exc


def _fraction(value: float | None) -> float | None:
    if value is not None and not 0 <= value <= 0.5:
        raise typer.BadParameter("a share of the devices between 0 and 0.5")
    return value


@app.command("run")
def run(
    ctx: typer.Context,
    devices: Annotated[int | None, typer.Option(
        "--devices", min=1, help="Number of devices (default 100).")] = None,
    duration: Annotated[str | None, typer.Option(
        "--duration", help="How long the run lasts from the first device, e.g. 120s.")] = None,
    cert_lifetime: Annotated[str | None, typer.Option(
        "--cert-lifetime", help="Certificate lifetime the EST service is expected to issue "
        "(e.g. 60s); a mismatch stops the run. Start the service with "
        "FLEET_CERTIFICATES_DEVICE_LIFETIME set to it, or use --spawn-services.")] = None,
    revoke: Annotated[int | None, typer.Option(
        "--revoke", min=0, help="Devices the operator revokes during the run.")] = None,
    revoke_at: Annotated[str | None, typer.Option(
        "--revoke-at", help="When to revoke (default: 60% into the run).")] = None,
    est_url: Annotated[str | None, typer.Option(
        "--est-url", help="EST service, https://HOST:PORT (default: from the config).")] = None,
    mqtt_host: Annotated[str | None, typer.Option(
        "--mqtt-host", help="Broker host (default: from the config).")] = None,
    mqtt_port: Annotated[int | None, typer.Option(
        "--mqtt-port", min=1, max=65535, help="Broker port (default: from the config).")] = None,
    json_report: Annotated[Path | None, typer.Option(
        "--json-report", help="Write the JSON report here.")] = None,
    html_report: Annotated[Path | None, typer.Option(
        "--html-report", help="Write the charts (one self-contained HTML page) here.")] = None,
    scenario_file: Annotated[Path | None, typer.Option(
        "--scenario", exists=True, dir_okay=False, help="Scenario TOML; flags override it.")
    ] = None,
    misbehaving: Annotated[float | None, typer.Option(
        "--misbehaving", help="Share of devices that misbehave (0..0.5).",
        callback=_fraction)] = None,
    broker_restart_at: Annotated[str | None, typer.Option(
        "--broker-restart-at", help="Restart the broker at this time into the run (needs "
        "--spawn-services or --broker-restart-command).")] = None,
    broker_restart_command: Annotated[str | None, typer.Option(
        "--broker-restart-command", help="Shell command that restarts an external broker.")
    ] = None,
    spawn_services: Annotated[bool, typer.Option(
        "--spawn-services", help="Start `fleet serve est` and `fleet serve broker` on free "
        "loopback ports for this run (with --cert-lifetime as the device lifetime).")] = False,
    ramp: Annotated[float | None, typer.Option(
        "--ramp", min=0, help="Devices started per second (0: as fast as limits allow).")
    ] = None,
    telemetry_interval: Annotated[str | None, typer.Option(
        "--telemetry-interval", help="Telemetry period per device (default 10s).")] = None,
    payload_size: Annotated[int | None, typer.Option(
        "--payload-size", help="Telemetry payload bytes (default 64).")] = None,
    command_interval: Annotated[str | None, typer.Option(
        "--command-interval", help="QoS 1 commands per device every ... (0 disables).")
    ] = None,
    key_type: Annotated[str | None, typer.Option(
        "--key-type", help="Device key: p256 (default), p384, ed25519, rsa2048, rsa3072.")
    ] = None,
    enroll_concurrency: Annotated[int | None, typer.Option(
        "--enroll-concurrency", min=1, help="EST requests in flight at once.")] = None,
    connect_concurrency: Annotated[int | None, typer.Option(
        "--connect-concurrency", min=1, help="MQTT handshakes in flight at once.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed.")] = None,
    store_dir: Annotated[Path | None, typer.Option(
        "--store-dir", help="Also write each device's key (0600) and certificate here.")
    ] = None,
    pin: Annotated[str | None, typer.Option(
        "--pin", help="SHA-256 of the root CA the devices trust (default: "
        "<data dir>/ca/root.pem).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace report files that exist and write into a --store-dir that "
        "is not empty (their directories must exist).")] = False,
    no_progress: Annotated[bool, typer.Option(
        "--no-progress", help="No live progress display.")] = False,
    keep: Annotated[bool, typer.Option(
        "--keep", help="Keep the simulated devices in the registry. By default they are "
        "revoked if still active and deleted after the run, with the tokens no device used, "
        "the vendor of --idevid and the group if the run declared it.")] = False,
    idevid: Annotated[bool, typer.Option(
        "--idevid", help="Devices enroll with manufacturer certificates (IDevIDs) from a test "
        "vendor CA the run registers (fleet vendor add, the run's device ids as allow list), "
        "not with bootstrap tokens.")] = False,
) -> None:
    """Enroll, connect, publish, renew and revoke simulated devices; report and judge the run.

    Exits 1 when an expectation fails: an unexpected error, a failed renewal, a revoked device
    still connected, or a misbehaving device admitted.
    """
    from device_sim.scenario import Scenario, ScenarioError, load_scenario

    fleet = fleet_of(ctx)
    fleet.require_initialized()  # before anything is written or started
    overrides: dict[str, Any] = {
        "devices": devices, "duration": _duration(duration),
        "cert_lifetime": _duration(cert_lifetime), "revoke": revoke,
        "revoke_at": _duration(revoke_at), "misbehaving": misbehaving,
        "broker_restart_at": _duration(broker_restart_at), "ramp": ramp,
        "telemetry_interval": _duration(telemetry_interval), "payload_size": payload_size,
        "command_interval": _duration(command_interval), "key_type": key_type,
        "enroll_concurrency": enroll_concurrency,
        "connect_concurrency": connect_concurrency, "seed": seed, "store_dir": store_dir,
        "idevid": idevid or None,
    }
    try:
        scenario = (load_scenario(scenario_file, **overrides) if scenario_file
                    else Scenario().with_overrides(**overrides))
    except ScenarioError as exc:
        raise typer.BadParameter(str(exc)) from None
    if scenario.store_dir is not None:
        output_directory(scenario.store_dir, force=force)
    # Report files are refused, or held, before the run.
    with claimed(json_report, force=force), claimed(html_report, force=force), \
            _interrupted_by_sigterm():
        report = eventloop.run(_run(
            fleet, scenario, est_url=est_url, mqtt_host=mqtt_host, mqtt_port=mqtt_port, pin=pin,
            spawn=spawn_services, restart_command=broker_restart_command,
            progress=not no_progress and sys.stderr.isatty(), keep=keep))
    console = Console(file=sys.stdout, highlight=False)
    from device_sim.chart import render_html
    from device_sim.report import print_summary, write_json

    print_summary(report, console)
    if json_report is not None:
        write_json(report, json_report)
        note(f"JSON report: {json_report}")
    if html_report is not None:
        html_report.write_text(render_html(report))
        note(f"HTML report: {html_report}")
    if not report["ok"]:
        raise typer.Exit(EXIT_EXPECTATION_FAILED)


@contextlib.contextmanager
def _interrupted_by_sigterm() -> Iterator[None]:
    """SIGTERM ends the run as Ctrl-C does: the run's devices are removed and the services it
    spawned are stopped, instead of being left behind."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


async def _run(fleet: Fleet, scenario: Any, *, est_url: str | None, mqtt_host: str | None,
               mqtt_port: int | None, pin: str | None, spawn: bool,
               restart_command: str | None, progress: bool, keep: bool) -> dict[str, Any]:
    from device_sim.environment import Endpoints
    from device_sim.operator import AuthorityOperator
    from device_sim.report import LiveProgress, build_report
    from device_sim.runner import Run, RunError
    from device_sim.services import LocalServices, ServiceError

    settings = fleet.settings
    services: LocalServices | None = None
    restart = None
    if spawn:
        environ = {}
        if scenario.cert_lifetime is not None:
            environ["FLEET_CERTIFICATES_DEVICE_LIFETIME"] = f"{scenario.cert_lifetime:g}s"
        services = LocalServices(data_dir=settings.data_dir, config=settings.config_file,
                                 environ=environ)
        try:
            await services.start()
        except ServiceError as exc:
            raise FleetError(f"could not start the services: {exc}") from None
        est_url = services.est_url
        mqtt_host, mqtt_port = services.host, services.broker_port
        restart = services.restart_broker
    elif restart_command is not None:
        host = mqtt_host or _client_host(settings.broker_host)
        port = mqtt_port or settings.broker_port
        restart = _restart_by_command(restart_command, host, port)
    endpoints = Endpoints(
        est_url=est_url or f"https://{_client_host(settings.est_host)}:{settings.est_port}",
        mqtt_host=mqtt_host or _client_host(settings.broker_host),
        mqtt_port=mqtt_port or settings.broker_port,
        pinned_root_sha256=pin or _root_fingerprint(settings),
        trust_domain=settings.trust_domain)
    operator = AuthorityOperator(fleet.authority)
    console = Console(file=sys.stderr)
    runner: Run | None = None
    try:
        runner = Run(scenario, endpoints=endpoints, operator=operator, restart_broker=restart)
        if progress:
            with LiveProgress(console, devices=scenario.devices,
                              duration=scenario.duration) as live:
                runner.progress = live
                result = await runner.execute()
        else:
            result = await runner.execute()
    except RunError as exc:
        raise FleetError(str(exc)) from None
    finally:
        try:
            if runner is not None and not runner.created.empty and not keep:
                note((await operator.clean_up(runner.created)).line())
        finally:
            if services is not None:
                await services.stop()
    return build_report(result)


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a service bound to *host*."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104


def _root_fingerprint(settings: Settings) -> str:
    root = settings.ca_dir / "root.pem"
    try:
        return fingerprint_sha256(load_certificate(root.read_bytes()))
    except FileNotFoundError:
        raise FleetError(f"no root CA at {root}: run `fleet init` or give --pin") from None


def _restart_by_command(command: str, host: str, port: int) -> Any:
    from device_sim.services import READY_TIMEOUT, wait_listening

    async def restart() -> None:
        process = await asyncio.create_subprocess_shell(command)
        if await process.wait() != 0:
            raise RuntimeError(f"broker restart command exited with {process.returncode}")
        await wait_listening(host, port, timeout=READY_TIMEOUT)

    return restart
