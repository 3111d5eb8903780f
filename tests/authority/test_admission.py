"""Admission as one list of small checks: their order, what each refuses and with which CONNACK."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine

from fleet import acl, pki
from fleet.authority import ADMISSION_CHECKS, Authority, ConnectReturnCode, Decision, Result
from fleet.errors import FleetError, RegistryUnavailableError

from .conftest import Fleet

ACL = Path(__file__).resolve().parents[2] / "config" / "acl.toml"


def policy() -> acl.Policy:
    return acl.load_policy(ACL)


def refused_at(decision: Decision) -> str | None:
    return decision.refusal.check.name if decision.refusal is not None else None


def test_admission_checks_run_in_the_documented_order() -> None:
    assert [c.name for c in ADMISSION_CHECKS] == [
        "issuer", "validity", "key usage", "identity", "client id", "session",
        "revocation state", "registry", "grace", "will"]
    assert {c.name: c.stage.value for c in ADMISSION_CHECKS}["key usage"] == "tls"


def test_admission_connack_of_each_check() -> None:
    codes = {c.name: c.connack(FleetError("x")) for c in ADMISSION_CHECKS}
    assert codes == {**dict.fromkeys(["issuer", "validity", "key usage", "identity",
                                      "registry", "grace", "will"],
                                     ConnectReturnCode.NOT_AUTHORIZED),
                     "client id": ConnectReturnCode.IDENTIFIER_REJECTED,
                     "session": ConnectReturnCode.IDENTIFIER_REJECTED,
                     "revocation state": ConnectReturnCode.SERVER_UNAVAILABLE}
    assert {c.connack(RegistryUnavailableError("down")) for c in ADMISSION_CHECKS} == {
        ConnectReturnCode.SERVER_UNAVAILABLE}
    assert ConnectReturnCode.IDENTIFIER_REJECTED.describe() == "0x02 identifier rejected"


def test_admission_accepts_an_active_certificate_and_grants_its_policy(fleet: Fleet) -> None:
    issued = fleet.enroll("dev-1")
    decision = fleet.authority.assess(issued.certificate, client_id="dev-1",
                                      will_topic="devices/dev-1/state", policy=policy(),
                                      sessions_known=True,
                                      revocations_confirmed_at=fleet.clock())
    assert decision.connack is ConnectReturnCode.ACCEPTED
    assert [o.result for o in decision.outcomes] == [Result.OK] * len(ADMISSION_CHECKS)
    assert decision.admission is not None
    assert decision.admission.grants.may_publish("devices/dev-1/telemetry")
    assert not decision.admission.grants.may_publish("devices/dev-2/telemetry")


def test_admission_without_a_policy_grants_nothing(fleet: Fleet) -> None:
    issued = fleet.enroll("dev-1")
    admission = fleet.authority.admit(certificate=issued.certificate)
    assert not admission.grants.may_publish("devices/dev-1/telemetry")
    assert not admission.grants.may_subscribe("devices/dev-1/commands/#")


def test_admission_refused_client_id_stops_before_the_registry(fleet: Fleet) -> None:
    issued = fleet.enroll("dev-1")
    fleet.authority.revoke_device(device_id="dev-1", reason="keyCompromise", actor="operator")
    decision = fleet.authority.assess(issued.certificate, client_id="dev-2")
    assert refused_at(decision) == "client id"
    assert decision.connack is ConnectReturnCode.IDENTIFIER_REJECTED
    assert "registry" not in {o.check.name for o in decision.outcomes}
    assert decision.admission is None


def test_admission_refused_client_id_held_by_another_identity(fleet: Fleet) -> None:
    issued = fleet.enroll("dev-1")
    decision = fleet.authority.assess(issued.certificate, client_id="dev-1", sessions_known=True,
                                      session_holder=pki.Identity("service", "dev-1"))
    assert refused_at(decision) == "session"
    assert decision.connack is ConnectReturnCode.IDENTIFIER_REJECTED
    same = fleet.authority.assess(issued.certificate, client_id="dev-1", sessions_known=True,
                                  session_holder=pki.Identity("device", "dev-1"))
    assert same.connack is ConnectReturnCode.ACCEPTED


def test_admission_session_check_skipped_when_sessions_are_unknown(fleet: Fleet) -> None:
    issued = fleet.enroll("dev-1")
    decision = fleet.authority.assess(issued.certificate, client_id="dev-1",
                                      session_holder=pki.Identity("service", "dev-1"))
    session = next(o for o in decision.outcomes if o.check.name == "session")
    assert session.result is Result.SKIP
    assert decision.connack is ConnectReturnCode.ACCEPTED


def test_admission_refused_forbidden_will(fleet: Fleet) -> None:
    issued = fleet.enroll("dev-1")
    decision = fleet.authority.assess(issued.certificate, client_id="dev-1",
                                      will_topic="devices/dev-2/state", policy=policy())
    assert refused_at(decision) == "will"
    assert decision.connack is ConnectReturnCode.NOT_AUTHORIZED


def test_admission_refused_superseded_past_its_grace(fleet: Fleet) -> None:
    old = fleet.enroll("dev-1")
    fleet.reenroll(old.certificate)
    within = fleet.authority.assess(old.certificate)
    assert within.connack is ConnectReturnCode.ACCEPTED
    assert within.admission is not None
    assert within.admission.superseded
    fleet.clock.advance(seconds=fleet.authority.settings.superseded_grace.total_seconds())
    past = fleet.authority.assess(old.certificate)
    assert refused_at(past) == "grace"
    assert past.connack is ConnectReturnCode.NOT_AUTHORIZED


def test_admission_refused_expired_at_the_tls_stage(fleet: Fleet) -> None:
    issued = fleet.enroll("dev-1")
    fleet.clock.advance(days=fleet.authority.settings.device_lifetime.days + 1)
    decision = fleet.authority.assess(issued.certificate)
    assert refused_at(decision) == "validity"
    assert decision.refusal is not None
    assert decision.refusal.check.stage.value == "tls"


def test_admission_refused_registry_unavailable_is_server_unavailable(fleet: Fleet) -> None:
    issued = fleet.enroll("dev-1")
    down = create_engine("postgresql+psycopg://fleet@127.0.0.1:9/none",
                         connect_args={"connect_timeout": 1})
    authority = Authority(settings=fleet.authority.settings, engine=down, ca=fleet.authority.ca)
    decision = authority.assess(issued.certificate, client_id="dev-1")
    assert refused_at(decision) == "registry"
    assert isinstance(decision.refusal and decision.refusal.error, RegistryUnavailableError)
    assert decision.connack is ConnectReturnCode.SERVER_UNAVAILABLE


def test_admission_refused_fleet_signed_certificate_unknown_to_registry(fleet: Fleet) -> None:
    """A fleet-signed certificate naming a device the registry holds under another serial."""
    fleet.enroll("dev-1")
    key = pki.generate_private_key()
    ca = fleet.authority.ca
    forged = pki.issue_certificate(
        profile=pki.identity_profile(pki.Identity("device", "dev-1"),
                                     trust_domain=fleet.authority.settings.trust_domain,
                                     lifetime=timedelta(hours=1)),
        public_key=key.public_key(), issuer_key=ca.issuing_key, issuer=ca.issuing,
        now=fleet.clock())
    decision = fleet.authority.assess(forged, client_id="dev-1")
    assert refused_at(decision) == "registry"
    assert decision.refusal is not None
    assert "not in the registry" in decision.refusal.detail


def test_admission_refused_stale_revocation_state_before_asking_the_registry(
        fleet: Fleet) -> None:
    """Fail closed: revocation state unconfirmed for longer than the limit is 0x03, decided
    before the registry, which is unreachable here and so never asked."""
    issued = fleet.enroll("dev-1")
    down = create_engine("postgresql+psycopg://fleet@127.0.0.1:9/none",
                         connect_args={"connect_timeout": 1})
    authority = Authority(settings=fleet.authority.settings, engine=down, ca=fleet.authority.ca,
                          clock=fleet.clock)
    limit = fleet.authority.settings.revocation_max_staleness
    decision = authority.assess(issued.certificate, client_id="dev-1",
                                revocations_confirmed_at=fleet.clock() - limit * 2)
    assert refused_at(decision) == "revocation state"
    assert decision.connack is ConnectReturnCode.SERVER_UNAVAILABLE
    assert decision.refusal is not None
    assert "broker.revocation_max_staleness" in decision.refusal.detail
    assert "registry" not in {o.check.name for o in decision.outcomes}


def test_admission_revocation_state_fresh_up_to_the_limit(fleet: Fleet) -> None:
    issued = fleet.enroll("dev-1")
    limit = fleet.authority.settings.revocation_max_staleness
    at_limit = fleet.authority.assess(issued.certificate,
                                      revocations_confirmed_at=fleet.clock() - limit)
    assert at_limit.connack is ConnectReturnCode.ACCEPTED
    state = next(o for o in at_limit.outcomes if o.check.name == "revocation state")
    assert state.result is Result.OK
    assert state.detail == f"confirmed {limit.total_seconds():.1f}s ago"
    beyond = fleet.authority.assess(
        issued.certificate,
        revocations_confirmed_at=fleet.clock() - limit - timedelta(milliseconds=100))
    assert refused_at(beyond) == "revocation state"


def test_admission_revocation_state_skipped_when_unknown(fleet: Fleet) -> None:
    """``fleet diagnose`` does not know when a broker last confirmed revocation state."""
    issued = fleet.enroll("dev-1")
    decision = fleet.authority.assess(issued.certificate, client_id="dev-1")
    state = next(o for o in decision.outcomes if o.check.name == "revocation state")
    assert state.result is Result.SKIP
    assert "only the running broker knows" in state.detail
    assert decision.connack is ConnectReturnCode.ACCEPTED
