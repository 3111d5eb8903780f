"""``fleet export``: configuration for brokers that take their identities and policy from
Fleet (fleet.integrations)."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path
from typing import Annotated

import typer
from sqlmodel import col, select

from fleet import acl, pki
from fleet.ca import Paths
from fleet.cli.context import fleet_of
from fleet.cli.destination import output_directory
from fleet.cli.output import note, say
from fleet.errors import CAError, ConflictError
from fleet.files import write_private, write_public
from fleet.integrations import emqx as emqx_config
from fleet.integrations import mosquitto as mosquitto_config
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
    force: Force = False,
) -> None:
    """mosquitto.conf, its ACL file, the CA chain, a server certificate and the CRL."""
    fleet = fleet_of(ctx)
    settings = fleet.require_initialized()
    paths = Paths.of(settings)
    if not paths.server_cert.exists():
        raise CAError(f"no CA in {settings.ca_dir}: run `fleet init` first")
    directory = output_directory(out, force=force)
    policy = acl.load_policy(settings.acl_file)
    with fleet.session() as session:
        devices = {d.id: d.group for d in session.exec(
            select(Device).where(Device.status == DeviceStatus.ACTIVE)).all()}
        services = set(session.exec(select(Certificate.service).where(
            col(Certificate.service).is_not(None),
            Certificate.status == CertificateStatus.ACTIVE)).all())
    # One PEM block per issuing CA in use: Mosquitto (OpenSSL) reads them all.
    crl = pki.crls_pem(signed.crl for signed in fleet.authority.current_crls())
    listener = mosquitto_config.Listener(
        host=host, port=port, cafile=directory / "ca.pem", certfile=directory / "server.pem",
        keyfile=directory / "server.key", crlfile=directory / "crl.pem",
        acl_file=directory / "acl", user=user)
    write_public(listener.cafile, paths.chain.read_bytes())
    write_public(listener.certfile, paths.server_cert.read_bytes())
    write_private(listener.keyfile, paths.server_key.read_bytes())
    write_public(listener.crlfile, crl)
    write_public(listener.acl_file, mosquitto_config.acl(
        policy, devices=devices, services=(s for s in services if s)).encode())
    write_public(directory / "mosquitto.conf", mosquitto_config.configuration(listener).encode())
    shared = _share_with(user or "mosquitto", directory, [listener.keyfile])
    say(f"wrote {directory}/mosquitto.conf for {len(devices)} device(s) and "
        f"{len(services)} service(s): mosquitto -c {directory}/mosquitto.conf")
    if not shared:
        note(f"make {listener.keyfile} readable by the user Mosquitto runs as")
    note(f"keep the CRL current: fleet crl --watch --force --out {listener.crlfile} "
         "--signal <Mosquitto's PID>")


@app.command("emqx")
def emqx(
    ctx: typer.Context,
    out: OutDir,
    port: Port = 8883,
    host: Host = "127.0.0.1",
    fleet_url: Annotated[str | None, typer.Option(
        "--fleet-url", metavar="URL", help="https://HOST:PORT of Fleet's provisioning "
        "service as EMQX reaches it.", show_default="config, https://<first hostname>:"
        "<est.port>")] = None,
    service_name: Annotated[str, typer.Option(
        "--service", help="Name of the service certificate EMQX presents to Fleet.")
                            ] = "emqx",
    force: Force = False,
) -> None:
    """emqx.conf (HOCON), the CA chain, EMQX's server certificate and the service
    certificate it presents to Fleet's /emqx/authn and /emqx/authz."""
    fleet = fleet_of(ctx)
    settings = fleet.require_initialized()
    paths = Paths.of(settings)
    if not paths.server_cert.exists():
        raise CAError(f"no CA in {settings.ca_dir}: run `fleet init` first")
    pki.check_service_name(service_name)
    url = (fleet_url or f"https://{(settings.hostnames or ('localhost',))[0]}:"
           f"{settings.est_port}").rstrip("/")
    if not url.startswith("https://"):
        raise ConflictError(f"--fleet-url {url!r}: EMQX must reach Fleet over https://")
    directory = output_directory(out, force=force)
    key = pki.generate_private_key("p256")
    issued = fleet.authority.issue_service_certificate(name=service_name,
                                                       public_key=key.public_key(),
                                                       actor=fleet.actor)
    listener = emqx_config.Listener(host=host, port=port, cacertfile=directory / "ca.pem",
                                    certfile=directory / "server.pem",
                                    keyfile=directory / "server.key")
    endpoint = emqx_config.Endpoint(url=url, cacertfile=listener.cacertfile,
                                    certfile=directory / f"{service_name}.pem",
                                    keyfile=directory / f"{service_name}.key")
    write_public(listener.cacertfile, paths.chain.read_bytes())
    write_public(listener.certfile, paths.server_cert.read_bytes())
    write_private(listener.keyfile, paths.server_key.read_bytes())
    write_public(endpoint.certfile, pki.certificate_pem(issued.certificate).encode())
    write_private(endpoint.keyfile, pki.private_key_pem(key))
    write_public(directory / "emqx.conf",
                 emqx_config.configuration(listener, endpoint).encode())
    say(f"wrote {directory}/emqx.conf: EMQX asks {url}{emqx_config.AUTHN_PATH} and "
        f"{emqx_config.AUTHZ_PATH} as service/{service_name} (serial {issued.record.serial})")
    note(f"make {listener.keyfile} and {endpoint.keyfile} readable by the user EMQX runs as")
    note("kick revoked clients: fleet serve emqx-kick --api-url URL --api-key-file FILE")


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
