"""``fleet diagnose``: why the broker would refuse a certificate, check by check.

The checks are the broker's own admission checks (fleet.authority.admission), in its order,
followed by the topic policy for --topic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet import acl, pki
from fleet.authority import ADMISSION_CHECKS, Admission, Decision, Result, Stage
from fleet.ca import Paths
from fleet.cli.context import fleet_of
from fleet.cli.output import emit_json, iso, say, table
from fleet.errors import CAError, ForbiddenError, PKIError


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


def _topic_check(admission: Admission | None, topic: str) -> Check:
    """PUBLISH for a topic name, SUBSCRIBE for a filter with wildcards."""
    if admission is None:
        return Check("topic", "acl", Result.SKIP, "not reached")
    identity, grants = admission.identity, admission.grants
    if acl.is_topic_name(topic):
        action, allowed = "publish to", grants.may_publish(topic)
    elif acl.is_topic_filter(topic):
        action, allowed = "subscribe to", grants.may_subscribe(topic)
    else:
        return Check("topic", "acl", Result.FAIL, f"{topic!r} is not a valid MQTT topic")
    if not allowed:
        return Check("topic", "acl", Result.FAIL, f"{identity} may not {action} {topic!r}")
    return Check("topic", "acl", Result.OK, f"{identity} may {action} {topic!r}")


def diagnose(
    ctx: typer.Context,
    cert_file: Annotated[Path, typer.Argument(
        metavar="CERT.pem", exists=True, dir_okay=False, readable=True,
        help="The client certificate (PEM or DER).")],
    client_id: Annotated[str | None, typer.Option(
        "--client-id", help="The MQTT client id the device sends.")] = None,
    topic: Annotated[str | None, typer.Option(
        "--topic", help="A topic to publish to, or a filter (with + or #) to subscribe to.",
    )] = None,
    will_topic: Annotated[str | None, typer.Option(
        "--will-topic", help="The will topic the device's CONNECT carries.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Explain whether the broker would admit this certificate and, if not, why."""
    fleet = fleet_of(ctx)
    settings = fleet.settings
    try:
        cert = pki.load_certificate(cert_file.read_bytes())
    except ValueError:
        raise PKIError(f"{cert_file} is not a PEM or DER certificate") from None
    if not Paths.of(settings).issuing.exists():
        raise CAError(f"no CA in {settings.ca_dir}: run `fleet init` first")

    decision = fleet.authority.assess(cert, client_id=client_id, will_topic=will_topic,
                                      policy=acl.load_policy(settings.acl_file))
    checks = _admission_checks(decision)
    if topic is not None:
        checks.append(_topic_check(decision.admission, topic))
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
        "file": str(cert_file), "serial": format(cert.serial_number, "x"),
        "subject": cert.subject.rfc4514_string(),
        "identity": identity,
        "not_before": iso(cert.not_valid_before_utc), "not_after": iso(cert.not_valid_after_utc),
        "fingerprint_sha256": pki.fingerprint_sha256(cert),
        "checks": [{**asdict(c), "result": c.result.value} for c in checks],
        "admitted": failure is None or failure.stage == "acl",
        "refused_at": failure.check if failure else None,
        "connack": connack,
    }
    if as_json:
        emit_json(report)
    else:
        say(f"{cert_file}: serial {report['serial']}, {report['subject']}")
        table("Checks", ("check", "stage", "result", "detail"),
              ((c.check, c.stage, c.result.value, c.detail) for c in checks), wide=("detail",))
        say(f"CONNACK: {report['connack']}")
    if failure is not None:
        raise ForbiddenError(f"the broker would refuse this certificate at the {failure.check} "
                             f"check: {failure.detail}")
