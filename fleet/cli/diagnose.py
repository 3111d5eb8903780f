"""``fleet diagnose``: why the broker would refuse a certificate, check by check.

The checks follow the broker's own order: the TLS handshake (issuer, validity, key usage),
then the CONNECT gate (identity, client id, registry status), then the topic policy.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509

from fleet import acl, pki
from fleet.authority import Admission
from fleet.ca import Paths
from fleet.cli.context import Fleet, fleet_of
from fleet.cli.output import emit_json, iso, say, table
from fleet.errors import CAError, ForbiddenError, PKIError
from fleet.pki import Reason
from fleet.pki.identity import client_id_problem  # the broker's own rule
from fleet.registry import utcnow
from fleet.settings import Settings


class Result(enum.StrEnum):
    OK = "ok"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Check:
    check: str
    stage: str  # tls | connect | acl
    result: Result
    detail: str


# verify_leaf stops at the first problem; each of its reasons belongs to one check.
_LEAF_CHECKS: tuple[tuple[str, str, frozenset[Reason]], ...] = (
    ("issuer", "tls", frozenset({Reason.UNKNOWN_ISSUER})),
    ("validity", "tls", frozenset({Reason.EXPIRED, Reason.NOT_YET_VALID, Reason.REVOKED})),
    ("key usage", "tls", frozenset({Reason.WRONG_KEY_USAGE})),
    ("identity", "connect", frozenset({Reason.IDENTITY_MISMATCH})),
)
_CONNACK = {"tls": "none: the TLS handshake fails", "connect": "0x05 not authorized",
            "client id": "0x02 identifier rejected", "acl": "allowed to connect; the topic "
            "is refused (PUBACK/SUBACK failure or disconnect)"}


def _leaf_checks(cert: x509.Certificate, issuing: x509.Certificate, trust_domain: str) -> tuple[
        list[Check], pki.Identity | None]:
    verdict = pki.verify_leaf(cert, issuer=issuing, trust_domain=trust_domain, now=utcnow())
    checks: list[Check] = []
    failed = False
    for name, stage, reasons in _LEAF_CHECKS:
        if failed:
            checks.append(Check(name, stage, Result.SKIP, "not reached"))
        elif verdict.reason in reasons:
            checks.append(Check(name, stage, Result.FAIL, verdict.detail))
            failed = True
        else:
            checks.append(Check(name, stage, Result.OK, _passed(name, cert, verdict)))
    return checks, verdict.identity if verdict.ok else None


def _passed(name: str, cert: x509.Certificate, verdict: pki.Verdict) -> str:
    if name == "issuer":
        return f"signed by {cert.issuer.rfc4514_string()}"
    if name == "validity":
        return f"valid until {iso(cert.not_valid_after_utc)}"
    if name == "key usage":
        return "clientAuth"
    return str(verdict.identity)


def _registry_check(fleet: Fleet, cert: x509.Certificate) -> tuple[Check, Admission | None]:
    try:
        admission = fleet.authority.admit(certificate=cert)
    except ForbiddenError as error:
        return Check("registry", "connect", Result.FAIL, error.message), None
    group = f" in group {admission.group}" if admission.group else ""
    return Check("registry", "connect", Result.OK, f"{admission.identity} is active{group}"), \
        admission


def _client_id_check(identity: pki.Identity, client_id: str | None) -> Check:
    if client_id is None:
        return Check("client id", "connect", Result.SKIP,
                     f"not given; the broker requires client id {identity.name!r}")
    problem = client_id_problem(identity, client_id)
    if problem is not None:
        return Check("client id", "connect", Result.FAIL, problem)
    return Check("client id", "connect", Result.OK, f"{client_id!r} matches the certificate")


def _topic_check(settings: Settings, admission: Admission | None, topic: str) -> Check:
    """PUBLISH for a topic name, SUBSCRIBE for a filter with wildcards."""
    if admission is None:
        return Check("topic", "acl", Result.SKIP, "not reached")
    identity = admission.identity
    grants = acl.load_policy(settings.acl_file).grants(
        role=identity.kind, device_id=identity.name if identity.kind == "device" else None,
        group=admission.group)
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
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Explain whether the broker would admit this certificate and, if not, why."""
    fleet = fleet_of(ctx)
    settings = fleet.settings
    try:
        cert = pki.load_certificate(cert_file.read_bytes())
    except ValueError:
        raise PKIError(f"{cert_file} is not a PEM or DER certificate") from None
    issuing_path = Paths.of(settings).issuing
    if not issuing_path.exists():
        raise CAError(f"no CA in {settings.ca_dir}: run `fleet init` first")
    issuing = x509.load_pem_x509_certificate(issuing_path.read_bytes())

    checks, identity = _leaf_checks(cert, issuing, settings.trust_domain)
    admission = None
    if identity is not None:
        checks.append(_client_id_check(identity, client_id))
        registry, admission = _registry_check(fleet, cert)
        checks.append(registry)
    if topic is not None:
        checks.append(_topic_check(settings, admission, topic))
    failure = next((c for c in checks if c.result is Result.FAIL), None)
    connack = "0x00 accepted"
    if failure is not None:
        connack = _CONNACK["client id" if failure.check == "client id" else failure.stage]
    report: dict[str, Any] = {
        "file": str(cert_file), "serial": format(cert.serial_number, "x"),
        "subject": cert.subject.rfc4514_string(),
        "identity": str(identity) if identity else None,
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
