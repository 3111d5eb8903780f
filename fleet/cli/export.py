"""``fleet export``: configuration for brokers that take their identities and policy from
Fleet (fleet.integrations)."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from sqlmodel import col, select

from fleet import acl, pki
from fleet.ca import Paths
from fleet.cli.context import Fleet, fleet_of
from fleet.cli.destination import output_directory
from fleet.cli.output import note, say
from fleet.errors import CAError, ConflictError, NotFoundError
from fleet.files import write_private, write_public
from fleet.integrations import emqx as emqx_config
from fleet.integrations import mosquitto as mosquitto_config
from fleet.integrations import rabbitmq as rabbitmq_config
from fleet.integrations.tlsfiles import TlsFiles
from fleet.registry.models import Certificate, CertificateStatus, Device, DeviceStatus

app = typer.Typer(no_args_is_help=True, help="Configuration for other brokers, from Fleet's.")

OutDir = Annotated[Path, typer.Option(
    "--out", metavar="DIR", file_okay=False,
    help="Directory to write (created; must be empty unless --force).")]
Force = Annotated[bool, typer.Option("--force", help="Write into a non-empty DIR.")]
Port = Annotated[int, typer.Option("--port", min=1, max=65535,
                                   help="The broker's MQTT over TLS listener port.")]
Host = Annotated[str, typer.Option("--host", help="Address the broker listens on.")]


@app.command("mosquitto")
def mosquitto(
    ctx: typer.Context,
    out: OutDir,
    port: Port = 8883,
    host: Host = "127.0.0.1",
    user: Annotated[str | None, typer.Option(
        "--user", help="User Mosquitto switches to when started as root (default: "
        "mosquitto); the key and CRL are made readable by its group.")] = None,
    plugin: Annotated[Path | None, typer.Option(
        "--dynsec-plugin", metavar="PATH", help="Mosquitto's dynamic security plugin, as "
        f"Mosquitto loads it (default: {mosquitto_config.PLUGIN_FILE} in the first of "
        f"{', '.join(map(str, mosquitto_config.PLUGIN_DIRECTORIES))} that has it).")] = None,
    service_name: Annotated[str, typer.Option(
        "--service", help="Name of the service certificate `fleet serve mosquitto-kick` "
        "presents, the dynamic security plugin's admin.")] = "mosquitto-kick",
    force: Force = False,
) -> None:
    """mosquitto.conf, its ACL file, the CA chain, a server certificate, the CRL, the dynamic
    security plugin's configuration and the service certificate of its kick hook."""
    fleet = fleet_of(ctx)
    paths = _ca_paths(fleet, service_name)
    plugin = plugin or mosquitto_config.find_plugin()
    if plugin is None or not plugin.is_absolute():
        raise NotFoundError(
            f"no {mosquitto_config.PLUGIN_FILE} in "
            f"{', '.join(map(str, mosquitto_config.PLUGIN_DIRECTORIES))}: give its absolute "
            "path with --dynsec-plugin PATH" if plugin is None else
            f"--dynsec-plugin {plugin}: give the absolute path Mosquitto loads it from")
    directory = output_directory(out, force=force)
    kick = TlsFiles.named(directory, service_name)  # of `fleet serve mosquitto-kick`
    serial = _write_service_certificate(fleet, service_name, kick)
    policy = acl.load_policy(fleet.settings.acl_file)
    with fleet.session() as session:
        devices = {d.id: d.group for d in session.exec(
            select(Device).where(Device.status == DeviceStatus.ACTIVE)).all()}
        services = {s for s in session.exec(select(Certificate.service).where(
            col(Certificate.service).is_not(None),
            Certificate.status == CertificateStatus.ACTIVE)).all()
            if s and s != service_name}  # the kick hook's are the plugin's topics only
    # One PEM block per issuing CA in use: Mosquitto (OpenSSL) reads them all.
    crl = pki.crls_pem(signed.crl for signed in fleet.authority.current_crls())
    listener = mosquitto_config.Listener(
        host=host, port=port, tls=TlsFiles.named(directory, "server"),
        crlfile=directory / "crl.pem", acl_file=directory / "acl", user=user,
        dynamic_security=mosquitto_config.DynamicSecurity(
            plugin=plugin, config_file=directory / "dynamic-security.json"))
    _write_tls(paths, listener.tls)
    write_public(listener.crlfile, crl)
    write_public(listener.acl_file, mosquitto_config.acl(
        policy, devices=devices, services=services).encode())
    write_public(listener.dynamic_security.config_file,
                 mosquitto_config.dynamic_security(service_name).encode())
    write_public(directory / "mosquitto.conf", mosquitto_config.configuration(listener).encode())
    shared = _share_with(user or "mosquitto", directory, [listener.tls.keyfile])
    say(f"wrote {directory}/mosquitto.conf for {len(devices)} device(s) and "
        f"{len(services)} service(s): mosquitto -c {directory}/mosquitto.conf")
    if not shared:
        note(f"make {listener.tls.keyfile} readable by the user Mosquitto runs as")
    note(f"keep the CRL current: fleet crl --watch --force --out {listener.crlfile} "
         "--signal <Mosquitto's PID>")
    note(f"kick revoked clients as service/{service_name} (serial {serial}): fleet serve "
         f"mosquitto-kick --host {host} --port {port} --cert {kick.certfile} "
         f"--key {kick.keyfile} --cafile {kick.cacertfile}")


FleetUrl = Annotated[str | None, typer.Option(
    "--fleet-url", metavar="URL", help="https://HOST:PORT of Fleet's provisioning service as "
    "the broker reaches it (HOST must be a name of Fleet's server certificate).",
    show_default="config, https://<first hostname>:<est.port>")]


@app.command("emqx")
def emqx(
    ctx: typer.Context,
    out: OutDir,
    port: Port = 8883,
    host: Host = "127.0.0.1",
    fleet_url: FleetUrl = None,
    service_name: Annotated[str, typer.Option(
        "--service", help="Name of the service certificate EMQX presents to Fleet.")
                            ] = "emqx",
    force: Force = False,
) -> None:
    """emqx.conf (HOCON), the CA chain, EMQX's server certificate and the service
    certificate it presents to Fleet's /emqx/authn and /emqx/authz."""
    site = _broker_site(fleet_of(ctx), out, force=force, fleet_url=fleet_url,
                        service_name=service_name, broker="EMQX")
    listener = emqx_config.Listener(host=host, port=port, tls=site.server)
    endpoint = emqx_config.Endpoint(url=site.url, tls=site.service)
    write_public(site.directory / "emqx.conf",
                 emqx_config.configuration(listener, endpoint).encode())
    say(f"wrote {site.directory}/emqx.conf: EMQX asks {site.url}{emqx_config.AUTHN_PATH} and "
        f"{emqx_config.AUTHZ_PATH} as service/{service_name} (serial {site.serial})")
    note(f"make {site.server.keyfile} and {site.service.keyfile} readable by the user EMQX "
         "runs as")
    note("kick revoked clients: fleet serve emqx-kick --api-url URL --api-key-file FILE")


@app.command("rabbitmq")
def rabbitmq(
    ctx: typer.Context,
    out: OutDir,
    port: Port = 8883,
    host: Host = "127.0.0.1",
    fleet_url: FleetUrl = None,
    service_name: Annotated[str, typer.Option(
        "--service", help="Name of the service certificate RabbitMQ presents to Fleet.")
                            ] = "rabbitmq",
    management_port: Annotated[int, typer.Option(
        "--management-port", min=1, max=65535,
        help="Port of the management API (on 127.0.0.1).")] = 15672,
    force: Force = False,
) -> None:
    """rabbitmq.conf, advanced.config, enabled_plugins and definitions.json, the CA chain,
    RabbitMQ's server certificate, the service certificate it presents to Fleet's
    /rabbitmq/* paths and the management user of `fleet serve rabbitmq-close`."""
    site = _broker_site(fleet_of(ctx), out, force=force, fleet_url=fleet_url,
                        service_name=service_name, broker="RabbitMQ")
    directory = site.directory
    listener = rabbitmq_config.Listener(
        host=host, port=port, tls=site.server, management_port=management_port,
        definitions=directory / "definitions.json")
    endpoint = rabbitmq_config.Endpoint(url=site.url, tls=site.service)
    password = secrets.token_urlsafe(24)
    credentials = directory / "management.credentials"
    write_private(listener.definitions, rabbitmq_config.definitions(password=password).encode())
    write_private(credentials, f"{rabbitmq_config.MANAGEMENT_USER}:{password}\n".encode())
    write_public(directory / "advanced.config", rabbitmq_config.advanced_config(endpoint).encode())
    write_public(directory / "enabled_plugins", rabbitmq_config.enabled_plugins().encode())
    write_public(directory / "rabbitmq.conf",
                 rabbitmq_config.configuration(listener, endpoint).encode())
    say(f"wrote {directory}/rabbitmq.conf: RabbitMQ asks {site.url}/rabbitmq/* as "
        f"service/{service_name} (serial {site.serial})")
    note(f"start it with RABBITMQ_CONFIG_FILE={directory}/rabbitmq.conf "
         f"RABBITMQ_ADVANCED_CONFIG_FILE={directory}/advanced.config "
         f"RABBITMQ_ENABLED_PLUGINS_FILE={directory}/enabled_plugins")
    note(f"make {site.server.keyfile}, {site.service.keyfile} and {listener.definitions} "
         "readable by the user RabbitMQ runs as")
    note("close revoked clients' connections: fleet serve rabbitmq-close --api-url "
         f"http://127.0.0.1:{management_port} --credentials-file {credentials}")


@dataclass(frozen=True, slots=True)
class _BrokerSite:
    directory: Path
    url: str
    """Where the broker reaches Fleet."""
    server: TlsFiles
    """The broker's listener: the CA chain, and Fleet's server certificate and key."""
    service: TlsFiles
    """The service certificate the broker presents to Fleet."""
    serial: str
    """The service certificate's serial."""


def _broker_site(fleet: Fleet, out: Path, *, force: bool, fleet_url: str | None,
                 service_name: str, broker: str) -> _BrokerSite:
    """The output directory of a broker that asks Fleet over HTTPS, its listener's files and
    a new service certificate *service_name* written in it (the URL *broker* reaches Fleet at
    is checked before anything is written)."""
    paths = _ca_paths(fleet, service_name)
    settings = fleet.settings
    url = (fleet_url or f"https://{(settings.hostnames or ('localhost',))[0]}:"
           f"{settings.est_port}").rstrip("/")
    if not url.startswith("https://"):
        raise ConflictError(f"--fleet-url {url!r}: {broker} must reach Fleet over https://")
    directory = output_directory(out, force=force)
    server, service = TlsFiles.named(directory, "server"), TlsFiles.named(directory, service_name)
    _write_tls(paths, server)
    serial = _write_service_certificate(fleet, service_name, service)
    return _BrokerSite(directory=directory, url=url, server=server, service=service,
                       serial=serial)


def _ca_paths(fleet: Fleet, service_name: str) -> Paths:
    """The CA files of an initialized data dir, once *service_name* is checked."""
    settings = fleet.require_initialized()
    paths = Paths.of(settings)
    if not paths.server_cert.exists():
        raise CAError(f"no CA in {settings.ca_dir}: run `fleet init` first")
    pki.check_service_name(service_name)
    return paths


def _write_tls(paths: Paths, files: TlsFiles) -> None:
    """The CA chain, and Fleet's server certificate and key as the broker's."""
    write_public(files.cacertfile, paths.chain.read_bytes())
    write_public(files.certfile, paths.server_cert.read_bytes())
    write_private(files.keyfile, paths.server_key.read_bytes())


def _write_service_certificate(fleet: Fleet, name: str, files: TlsFiles) -> str:
    """Issue service certificate *name* with a new key and write both; its serial."""
    key = pki.generate_private_key("p256")
    issued = fleet.authority.issue_service_certificate(name=name, public_key=key.public_key(),
                                                       actor=fleet.actor)
    write_public(files.certfile, pki.certificate_pem(issued.certificate).encode())
    write_private(files.keyfile, pki.private_key_pem(key))
    return issued.record.serial


def _share_with(user: str, directory: Path, private: list[Path]) -> bool:
    """Give *user*'s group read access to *private* files (root only; False if not done)."""
    if os.geteuid() != 0:
        return False
    try:
        group = pwd.getpwnam(user).pw_gid
    except KeyError:
        return False
    for path in (directory, *private):
        shutil.chown(path, group=group)
        path.chmod(0o750 if path.is_dir() else 0o640)
    return True
