"""``fleet serve est|broker`` (one part per process) and ``fleet up`` (both, in the foreground).

While a service runs, this process checkpoints the audit chain every
``audit.checkpoint_interval`` and once more after the service has stopped (fleet.checkpoints).

The services are imported when a command needs them, so the rest of the CLI works in an
installation without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol, cast

import typer

from fleet import eventloop, logs, pki
from fleet.checkpoints import periodic
from fleet.cli.context import fleet_of
from fleet.cli.init import initialize
from fleet.cli.output import command_group, say
from fleet.descriptors import fit_open_files
from fleet.errors import FleetError
from fleet.logs import FORMATS, LEVELS
from fleet.settings import Settings

if TYPE_CHECKING:
    from fleet.integrations.hook import Hook

app = command_group("Run one service in the foreground.")
log = logging.getLogger(__name__)

EST_MODULE = "provisioning.server"
BROKER_MODULE = "fleet.broker.server"


class RunningServer(Protocol):
    port: int
    metrics_url: str | None

    async def close(self) -> None: ...


Start = Callable[..., Awaitable[RunningServer]]
Serve = Callable[..., None]


def service(module_name: str, function: str) -> Any:
    """*function* from a service module, or a clear error when that module is not installed."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise FleetError(f"{module_name} is not available in this installation, so this "
                             "service cannot run") from None
        raise
    try:
        return getattr(module, function)
    except AttributeError:
        raise FleetError(f"{module_name} has no {function}(); this installation is "
                         "incomplete") from None


HostOption = Annotated[str | None, typer.Option(
    "--host", help="Address to listen on.", show_default="config, 127.0.0.1")]
LogLevelOption = Annotated[str | None, typer.Option(
    "--log-level", metavar="|".join(LEVELS), show_default="config, info",
    help="Log lines at this level and above (FLEET_LOG_LEVEL).")]
LogFormatOption = Annotated[str | None, typer.Option(
    "--log-format", metavar="|".join(FORMATS), show_default="config, text",
    help="Log lines as text or as JSON objects, one a line (FLEET_LOG_FORMAT).")]


def configure_logs(settings: Settings) -> None:
    logs.configure(level=settings.log_level, format=settings.log_format)


@app.command("est")
def est(
    ctx: typer.Context,
    host: HostOption = None,
    port: Annotated[int | None, typer.Option(
        "--port", min=0, max=65535, show_default="config, 8443")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, show_default="config, 1", help="Worker processes.")] = None,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """The EST enrollment service (RFC 7030) over HTTPS."""
    fleet = fleet_of(ctx)
    settings = fleet.override(est_host=host, est_port=port, est_workers=workers,
                              log_level=log_level, log_format=log_format)
    serve = cast(Serve, service(EST_MODULE, "serve"))
    fleet.engine  # noqa: B018 - apply migrations before the workers start
    fleet.close()
    configure_logs(settings)
    settings = fit_open_files(settings, services=("est",))
    with periodic(settings, role="est"):
        serve(settings, host=settings.est_host, port=settings.est_port,
              workers=settings.est_workers)


@app.command("broker")
def broker(
    ctx: typer.Context,
    host: HostOption = None,
    port: Annotated[int | None, typer.Option(
        "--port", min=0, max=65535, show_default="config, 8883")] = None,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """The MQTT broker (MQTT 3.1.1 over mutual TLS)."""
    fleet = fleet_of(ctx)
    settings = fleet.override(broker_host=host, broker_port=port, log_level=log_level,
                              log_format=log_format)
    serve = cast(Serve, service(BROKER_MODULE, "serve"))
    fleet.engine  # noqa: B018 - apply migrations before listening
    fleet.close()
    configure_logs(settings)
    settings = fit_open_files(settings, services=("broker",))
    with periodic(settings, role="broker"):
        serve(settings, host=settings.broker_host, port=settings.broker_port)


ApiCaFileOption = Annotated[Path | None, typer.Option(
    "--cafile", exists=True, dir_okay=False,
    help="CA certificates for an https:// API URL (default: the system's).")]


@app.command("emqx-kick")
def emqx_kick(
    ctx: typer.Context,
    api_url: Annotated[str, typer.Option(
        "--api-url", metavar="URL", help="EMQX's REST API, e.g. http://127.0.0.1:18083.")],
    api_key_file: Annotated[Path, typer.Option(
        "--api-key-file", exists=True, dir_okay=False,
        help="File holding the EMQX API key as KEY:SECRET.")],
    cafile: ApiCaFileOption = None,
) -> None:
    """Kick revoked and suspended clients off EMQX, following the revocation events."""
    from fleet.integrations.emqx_kick import EmqxKicker, parse_api_key

    fleet = fleet_of(ctx)
    api_key = parse_api_key(api_key_file.read_text(encoding="utf-8"))
    kicker = EmqxKicker(authority=fleet.authority, api_url=api_url, api_key=api_key,
                        ssl_context=_client_context(cafile))
    _follow(kicker, fleet.settings, api_url)


@app.command("rabbitmq-close")
def rabbitmq_close(
    ctx: typer.Context,
    api_url: Annotated[str, typer.Option(
        "--api-url", metavar="URL",
        help="RabbitMQ's management API, e.g. http://127.0.0.1:15672.")],
    credentials_file: Annotated[Path, typer.Option(
        "--credentials-file", exists=True, dir_okay=False,
        help="File holding the management user as USER:PASSWORD (`fleet export rabbitmq` "
        "writes management.credentials).")],
    cafile: ApiCaFileOption = None,
) -> None:
    """Close revoked and suspended clients' RabbitMQ connections, following the revocation
    events."""
    from fleet.integrations.hook import Credentials
    from fleet.integrations.rabbitmq_close import RabbitmqCloser

    fleet = fleet_of(ctx)
    credentials = Credentials.parse(credentials_file.read_text(encoding="utf-8"),
                                    what="a RabbitMQ management user")
    closer = RabbitmqCloser(authority=fleet.authority, api_url=api_url,
                            credentials=credentials, ssl_context=_client_context(cafile))
    _follow(closer, fleet.settings, api_url)


@app.command("mosquitto-kick")
def mosquitto_kick(
    ctx: typer.Context,
    cert: Annotated[Path, typer.Option(
        "--cert", exists=True, dir_okay=False,
        help="The service certificate named admin of the dynamic security plugin "
        "(`fleet export mosquitto` writes mosquitto-kick.pem).")],
    key: Annotated[Path, typer.Option("--key", exists=True, dir_okay=False,
                                      help="Its private key.")],
    cafile: Annotated[Path, typer.Option(
        "--cafile", exists=True, dir_okay=False,
        help="The CA chain Mosquitto's server certificate chains to (ca.pem of the "
        "export).")],
    host: Annotated[str, typer.Option("--host", help="Mosquitto's address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535,
                                      help="Mosquitto's MQTT over TLS port.")] = 8883,
) -> None:
    """Kick revoked and suspended clients off Mosquitto through its dynamic security plugin,
    following the revocation events."""
    from fleet.integrations.mosquitto_kick import MosquittoKicker

    authority = fleet_of(ctx).authority  # the data dir is checked before the files
    identity = pki.identity_from_certificate(pki.load_certificate(cert.read_bytes()),
                                             authority.settings.trust_domain)
    if identity.kind != "service":
        raise FleetError(f"{cert} is the certificate of {identity}: the kick hook needs a "
                         "service certificate")
    try:
        context = ssl.create_default_context(cafile=str(cafile))
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise FleetError(f"{cert}, {key}, {cafile}: {exc}") from None
    kicker = MosquittoKicker(authority=authority, host=host, port=port,
                             name=identity.name, ssl_context=context)
    _follow(kicker, authority.settings, f"{host}:{port} as {identity}")


def _client_context(cafile: Path | None) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=str(cafile)) if cafile else None


def _follow(hook: Hook, settings: Settings, target: str) -> None:
    """Run *hook* until SIGINT or SIGTERM, logging as *settings* say; once it follows the
    revocation events, say so, naming the broker it acts on (*target*)."""
    configure_logs(settings)
    asyncio.run(_run_hook(hook, f"{hook.what} following revocations for {target}"))


async def _run_hook(hook: Hook, banner: str) -> None:
    with _stop_on_signals() as stop:
        await hook.start()
        say(banner)
        sys.stdout.flush()
        try:
            await stop.wait()
        finally:
            await hook.close()


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[asyncio.Event]:
    """An event SIGINT or SIGTERM sets, within the block (a signal after it has the default
    effect)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        yield stop
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def up(
    ctx: typer.Context,
    est_port: Annotated[int | None, typer.Option(
        "--est-port", min=0, max=65535, show_default="config, 8443")] = None,
    mqtt_port: Annotated[int | None, typer.Option(
        "--mqtt-port", min=0, max=65535, show_default="config, 8883")] = None,
    host: HostOption = None,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = None,
) -> None:
    """EST service and broker in one process, in the foreground (initializes if needed)."""
    fleet = fleet_of(ctx)
    start_est = cast(Start, service(EST_MODULE, "start"))
    start_broker = cast(Start, service(BROKER_MODULE, "start"))
    configure_logs(fleet.override(est_port=est_port, broker_port=mqtt_port, est_host=host,
                                  broker_host=host, log_level=log_level,
                                  log_format=log_format))
    report = initialize(fleet)
    if report.ca != "found" or report.server_certificate_issued:
        for line in report.lines():
            log.info("%s", line)
    fleet.close()
    settings = fit_open_files(fleet.settings, services=("est", "broker"))
    with periodic(settings, role="up"):
        eventloop.run(_run_both(settings, start_est, start_broker))


async def _run_both(settings: Settings, start_est: Start, start_broker: Start) -> None:
    running: list[RunningServer] = []
    try:
        with _stop_on_signals() as stop:
            est_server = await start_est(settings, host=settings.est_host,
                                         port=settings.est_port)
            running.append(est_server)
            mqtt_server = await start_broker(settings, host=settings.broker_host,
                                             port=settings.broker_port)
            running.append(mqtt_server)
            say(f"EST listening on https://{_authority(settings.est_host, est_server.port)}"
                "/.well-known/est")
            say(f"MQTT listening on mqtts://{_authority(settings.broker_host, mqtt_server.port)}")
            for name, server in (("EST", est_server), ("MQTT", mqtt_server)):
                if server.metrics_url is not None:
                    say(f"{name} metrics: {server.metrics_url}")
            say(f"data dir: {settings.data_dir}")
            sys.stdout.flush()
            await stop.wait()
            log.info("stopping")
    finally:
        results = await asyncio.gather(*(server.close() for server in reversed(running)),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.error("error while stopping: %s", result)


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

