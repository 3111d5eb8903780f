"""``fleet diagnose``: why the broker would refuse a certificate, check by check.

Without --host, the checks are the broker's own admission checks (fleet.authority.admission),
in its order, against this registry, followed by the topic policy for --publish/--subscribe.
With --host, a real client (fleet.cli.probe) connects to a running broker and the report says
what it answered and, when the broker shares this registry, the reason it recorded.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509

from fleet import acl, pki
from fleet.authority import (
    ADMISSION_CHECKS,
    Admission,
    ConnectReturnCode,
    Decision,
    Result,
    Stage,
)
from fleet.ca import Paths
from fleet.cli import probe
from fleet.cli.context import Fleet, fleet_of
from fleet.cli.output import emit_json, iso, say, table
from fleet.errors import ForbiddenError, PKIError
from fleet.pki.identity import common_names
from fleet.registry import events as events_db
from fleet.registry import utcnow


@dataclass(frozen=True, slots=True)
class Check:
    check: str
    stage: str  # tls | connect | acl
    result: Result
    detail: str


def _admission_checks(decision: Decision) -> list[Check]:
    """Every admission check: its outcome, or "not reached" past the first failure."""
    outcomes = {o.check.name: o for o in decision.outcomes}
    return [Check(c.name, c.stage.value, outcomes[c.name].result, outcomes[c.name].detail)
            if c.name in outcomes else Check(c.name, c.stage.value, Result.SKIP, "not reached")
            for c in ADMISSION_CHECKS]


def _topic_check(admission: Admission | None, action: str, topic: str) -> Check:
    """May the admitted identity publish to *topic* / subscribe to the filter *topic*?"""
    if admission is None:
        return Check(action, "acl", Result.SKIP, "not reached")
    identity, grants = admission.identity, admission.grants
    if action == "publish":
        valid, allowed, verb = acl.is_topic_name(topic), grants.may_publish(topic), "publish to"
        kind = "topic name (no wildcards)"
    else:
        valid, allowed = acl.is_topic_filter(topic), grants.may_subscribe(topic)
        verb, kind = "subscribe to", "topic filter"
    if not valid:
        return Check(action, "acl", Result.FAIL, f"{topic!r} is not a valid MQTT {kind}")
    if not allowed:
        return Check(action, "acl", Result.FAIL, f"{identity} may not {verb} {topic!r}")
    return Check(action, "acl", Result.OK, f"{identity} may {verb} {topic!r}")


def _read_certificate(path: Path) -> x509.Certificate:
    try:
        certificates = pki.load_certificates(path.read_bytes())
    except ValueError:
        raise PKIError(f"{path} is not a PEM or DER certificate") from None
    try:
        return pki.end_entity(certificates)
    except ValueError as error:
        raise PKIError(f"{path}: {error}") from None


CertFile = Annotated[Path | None, typer.Argument(
    metavar="[CERT.pem]", exists=True, dir_okay=False, readable=True,
    help="The client certificate (PEM, DER, or a PEM chain holding it), as --cert.",
    show_default=False)]
_File = {"exists": True, "dir_okay": False, "readable": True}


def diagnose(
    ctx: typer.Context,
    cert_file: CertFile = None,
    cert_option: Annotated[Path | None, typer.Option(
        "--cert", metavar="CERT.pem", help="The client certificate.", **_File)] = None,
    client_id: Annotated[str | None, typer.Option(
        "--client-id", help="The MQTT client id the device sends.")] = None,
    publish: Annotated[list[str] | None, typer.Option(
        "--publish", metavar="TOPIC", help="A topic the device publishes to (repeatable).")
    ] = None,
    subscribe: Annotated[list[str] | None, typer.Option(
        "--subscribe", metavar="FILTER", help="A filter the device subscribes to (repeatable).")
    ] = None,
    will_topic: Annotated[str | None, typer.Option(
        "--will-topic", help="The will topic the device's CONNECT carries.")] = None,
    host: Annotated[str | None, typer.Option(
        "--host", help="Connect to the broker at this host with --cert and --key (a real TLS "
        "handshake and CONNECT) instead of checking against the registry.")] = None,
    port: Annotated[int | None, typer.Option(
        "--port", help="Broker port for --host (default: broker.port).")] = None,
    key: Annotated[Path | None, typer.Option(
        "--key", metavar="KEY.pem", help="The client key, for --host.", **_File)] = None,
    ca: Annotated[Path | None, typer.Option(
        "--ca", metavar="CA.pem", help="CA certificates to verify the broker with, for --host "
        "(default: the data dir's chain).", **_File)] = None,
    timeout: Annotated[float, typer.Option(
        "--timeout", help="Seconds to wait for the broker's answer, for --host.", min=0.1)] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Explain whether the broker would admit this certificate and, if not, why.

    Without --host the broker's own admission checks run against the registry; with --host
    a real client connects to a running broker and reports what it answered.
    """
    fleet = fleet_of(ctx)
    if (cert_file is None) == (cert_option is None):
        raise typer.BadParameter("give the certificate once: CERT.pem or --cert CERT.pem",
                                param_hint="CERT.pem")
    path = cert_file or cert_option
    assert path is not None
    cert = _read_certificate(path)
    fleet.require_initialized()
    if host is not None:
        if key is None:
            raise typer.BadParameter("--host needs the certificate's private key",
                                    param_hint="--key")
        _live(fleet, cert, path, host=host, port=port or fleet.settings.broker_port, key=key,
              ca=ca, client_id=client_id, timeout=timeout, as_json=as_json)
        return
    if key is not None or ca is not None or port is not None:
        raise typer.BadParameter("--key, --ca and --port are for a live check",
                                param_hint="--host")
    _offline(fleet, cert, path, client_id=client_id, will_topic=will_topic,
             topics=[("publish", t) for t in publish or ()]
             + [("subscribe", f) for f in subscribe or ()], as_json=as_json)


def _offline(fleet: Fleet, cert: x509.Certificate, path: Path, *, client_id: str | None,
             will_topic: str | None, topics: list[tuple[str, str]], as_json: bool) -> None:
    settings = fleet.settings
    decision = fleet.authority.assess(cert, client_id=client_id, will_topic=will_topic,
                                      policy=acl.load_policy(settings.acl_file))
    checks = _admission_checks(decision)
    checks += [_topic_check(decision.admission, action, topic) for action, topic in topics]
    failure = next((c for c in checks if c.result is Result.FAIL), None)
    if decision.refusal is not None and decision.refusal.check.stage is Stage.TLS:
        connack = "none: the TLS handshake fails"
    elif failure is not None and failure.stage == "acl":
        connack = ("0x00 accepted; the topic is refused (PUBACK/SUBACK failure or "
                   "disconnect)")
    else:
        connack = decision.connack.describe()
    identity = next((o.detail for o in decision.outcomes
                     if o.check.name == "identity" and o.result is Result.OK), None)
    report: dict[str, Any] = {
        **_describe(cert, path), "identity": identity,
        "checks": [{**asdict(c), "result": c.result.value} for c in checks],
        "admitted": failure is None or failure.stage == "acl",
        "refused_at": failure.check if failure else None,
        "connack": connack,
    }
    if as_json:
        emit_json(report)
    else:
        say(f"{path}: serial {report['serial']}, {report['subject']}")
        table("Checks", ("check", "stage", "result", "detail"),
              ((c.check, c.stage, c.result.value, c.detail) for c in checks), wide=("detail",))
        say(f"CONNACK: {report['connack']}")
    if failure is not None:
        raise ForbiddenError(f"the broker would refuse this certificate at the {failure.check} "
                             f"check: {failure.detail}")


def _live(fleet: Fleet, cert: x509.Certificate, path: Path, *, host: str, port: int,
          key: Path, ca: Path | None, client_id: str | None, timeout: float,
          as_json: bool) -> None:
    chain = Paths.of(fleet.settings).chain
    if ca is None and not chain.exists():
        raise typer.BadParameter(f"no CA chain in {fleet.settings.ca_dir} to verify the broker "
                                 "with", param_hint="--ca")
    identity = _identity_name(cert)
    started = utcnow()
    answer = probe.connect(host=host, port=port, cert=path, key=key, ca=ca or chain,
                           client_id=client_id or identity or "", timeout=timeout)
    admitted = answer.connack == ConnectReturnCode.ACCEPTED
    reason = None if admitted else _audited_reason(fleet, cert, since=started)
    connack = _describe_connack(answer.connack)
    report: dict[str, Any] = {
        **_describe(cert, path), "broker": f"{host}:{port}", "stage": answer.stage,
        "connack": connack, "detail": answer.detail, "admitted": admitted,
        "audited_reason": reason,
    }
    if as_json:
        emit_json(report)
    else:
        say(f"{path}: serial {report['serial']}, {report['subject']}")
        say(f"{host}:{port} answered: CONNACK {connack} ({answer.detail})")
        if reason is not None:
            say(f"the broker recorded: {reason}")
    if not admitted:
        why = reason or answer.detail
        raise ForbiddenError(f"the broker at {host}:{port} refused this certificate "
                             f"(CONNACK {connack}): {why}")


def _audited_reason(fleet: Fleet, cert: x509.Certificate, *, since: datetime) -> str | None:
    """The refusal this broker recorded for *cert* (only when it shares this registry)."""
    serial = format(cert.serial_number, "x")
    deadline = time.monotonic() + _AUDIT_WAIT
    while True:
        with fleet.session() as session:
            events = events_db.list_audit(session=session, since=since,
                                          action="broker.connect")
        reasons = [e.reason for e in events if e.serial == serial and e.outcome == "refused"]
        if reasons or time.monotonic() >= deadline:
            return reasons[-1] if reasons else None
        time.sleep(0.1)


_AUDIT_WAIT = 5.0
"""The broker writes its audit events off the connection's path: wait this long for one."""


def _describe_connack(code: int | None) -> str:
    if code is None:
        return "none"
    known = {c.value: c for c in ConnectReturnCode}
    return known[code].describe() if code in known else f"0x{code:02x}"


def _identity_name(cert: x509.Certificate) -> str | None:
    names = common_names(cert.subject)
    return names[0] if len(names) == 1 else None


def _describe(cert: x509.Certificate, path: Path) -> dict[str, Any]:
    return {"file": str(path), "serial": format(cert.serial_number, "x"),
            "subject": cert.subject.rfc4514_string(),
            "not_before": iso(cert.not_valid_before_utc),
            "not_after": iso(cert.not_valid_after_utc),
            "fingerprint_sha256": pki.fingerprint_sha256(cert)}
