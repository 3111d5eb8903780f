"""Issuing CA rotation as policy: new certificates from the new CA, renewal moves devices over,
one CRL per issuing CA, admission during the overlap, retirement refused while certificates
live (or forced, revoking them), every step audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from fleet import pki
from fleet.authority import ADMISSION_CHECKS, Authority, Result
from fleet.ca import IssuingState, Paths, load_trust
from fleet.errors import CAError, ConflictError, NotFoundError
from fleet.registry import events as events_db

from .conftest import Fleet


def rotate(fleet: Fleet) -> None:
    fleet.authority.rotate_issuing(actor="operator:test")


def issuer_cn(cert: x509.Certificate) -> str:
    return cert.issuer.rfc4514_string()


def crl_serials(crl: x509.CertificateRevocationList) -> set[int]:
    return {entry.serial_number for entry in crl}


def test_after_rotation_new_certificates_come_from_the_new_issuing_ca(fleet: Fleet) -> None:
    old = fleet.enroll("dev-old").certificate
    rotate(fleet)
    new = fleet.enroll("dev-new").certificate
    trust = load_trust(fleet.authority.settings)
    assert issuer_cn(old) == "CN=Fleet Issuing CA,O=Fleet"
    assert issuer_cn(new) == "CN=Fleet Issuing CA 2,O=Fleet"
    new.verify_directly_issued_by(trust.issuing)
    record = fleet.certificate(format(new.serial_number, "x"))
    assert record is not None
    assert record.authority_key_id == pki.key_identifier(trust.issuing.public_key())
    event = next(e for e in fleet.audit() if e.action == "ca.rotate")
    assert (event.outcome, event.actor) == ("ok", "operator:test")
    detail = json.loads(event.detail or "{}")
    assert (detail["number"], detail["replaces"], detail["root_key"]) == (2, 1, "data dir")
    assert detail["fingerprint_sha256"] == pki.fingerprint_sha256(trust.issuing)


def test_a_device_of_the_old_ca_renews_to_a_certificate_of_the_new_one(fleet: Fleet) -> None:
    old = fleet.enroll("dev-1").certificate
    rotate(fleet)
    renewed = fleet.reenroll(old).certificate
    assert issuer_cn(renewed) == "CN=Fleet Issuing CA 2,O=Fleet"
    renewed.verify_directly_issued_by(fleet.authority.ca.issuing)
    assert fleet.certificate(format(old.serial_number, "x")).status == "superseded"  # type: ignore[union-attr]


def test_the_distribution_point_names_the_crl_of_the_issuing_ca(fleet: Fleet) -> None:
    fleet.authority.settings = fleet.authority.settings.with_overrides(
        public_base_url="https://fleet.example.com")
    old = fleet.enroll("dev-old").certificate
    rotate(fleet)
    new = fleet.enroll("dev-new").certificate

    def point(cert: x509.Certificate) -> str:
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        return str(cdp[0].full_name[0].value)

    assert point(old) == "https://fleet.example.com/crl"
    assert point(new) == "https://fleet.example.com/crl/2"


def test_each_issuing_ca_signs_the_crl_of_its_own_certificates(fleet: Fleet) -> None:
    old = fleet.enroll("dev-old")
    rotate(fleet)
    new = fleet.enroll("dev-new")
    fleet.authority.revoke_certificate(serial=old.record.serial, reason="keyCompromise",
                                       actor="operator")
    fleet.authority.revoke_certificate(serial=new.record.serial, reason="unspecified",
                                       actor="operator")
    crls = fleet.authority.current_crls()
    assert [(s.issuing.number, s.issuing.state) for s in crls] == [
        (2, IssuingState.ACTIVE), (1, IssuingState.RETIRING)]
    by_number = {s.issuing.number: s for s in crls}
    assert crl_serials(by_number[1].crl) == {old.certificate.serial_number}
    assert crl_serials(by_number[2].crl) == {new.certificate.serial_number}
    for signed in crls:
        assert signed.crl.issuer == signed.issuing.certificate.subject
        assert signed.crl.is_signature_valid(signed.issuing.certificate.public_key())  # type: ignore[arg-type]
    assert fleet.authority.current_crl() is by_number[1].crl  # /crl: the oldest in use
    assert fleet.authority.current_crl(2) is by_number[2].crl


def test_a_crl_of_an_issuing_ca_not_in_use_is_not_found(fleet: Fleet) -> None:
    with pytest.raises(NotFoundError, match=r"no issuing CA 2 in use \(in use: 1\)"):
        fleet.authority.current_crl(2)


def test_admission_accepts_both_issuing_cas_during_the_overlap(fleet: Fleet) -> None:
    old = fleet.enroll("dev-old").certificate
    rotate(fleet)
    new = fleet.enroll("dev-new").certificate
    broker = Authority(settings=fleet.authority.settings, engine=fleet.authority.engine,
                       trust=load_trust(fleet.authority.settings), clock=fleet.clock)
    for cert in (old, new):
        decision = broker.assess(cert)
        assert decision.refusal is None, decision.outcomes
        assert decision.outcomes[0].detail == f"signed by {issuer_cn(cert)}"


def test_after_retirement_a_certificate_of_the_retired_ca_fails_the_issuer_check(
        fleet: Fleet) -> None:
    """Even when the registry still counts it active and its signature is valid (a client
    can send the retired CA's certificate with its own, and TLS then builds a chain)."""
    old = fleet.enroll("dev-old").certificate
    old_trust = load_trust(fleet.authority.settings)
    rotate(fleet)
    fleet.authority.retire_issuing(actor="operator", force=True)
    broker = Authority(settings=fleet.authority.settings, engine=fleet.authority.engine,
                       trust=load_trust(fleet.authority.settings), clock=fleet.clock)
    for verified in (False, True):
        decision = broker.assess(old, chain_verified=verified)
        assert decision.refusal is not None
        assert decision.refusal.check is ADMISSION_CHECKS[0]
        assert decision.refusal.result is Result.FAIL
        assert "not by CN=Fleet Issuing CA 2,O=Fleet" in decision.refusal.detail
    # The same certificate before: accepted by the issuer check.
    before = Authority(settings=fleet.authority.settings, engine=fleet.authority.engine,
                       trust=old_trust, clock=fleet.clock)
    assert before.assess(old).outcomes[0].result is Result.OK


def test_retirement_refused_while_certificates_of_it_are_usable(fleet: Fleet) -> None:
    old = fleet.enroll("dev-old")
    rotate(fleet)
    paths = Paths.of(fleet.authority.settings)
    with fleet.refused(ConflictError, "ca.retire",
                       match=r"issuing CA 1 still has 1 usable certificate\(s\), the last until "
                       + old.certificate.not_valid_after_utc.isoformat().replace("+", r"\+")):
        fleet.authority.retire_issuing(actor="operator")
    assert paths.numbered(1)[1].exists()
    [status_2, status_1] = fleet.authority.issuing_report()
    assert (status_1.issuing.number, status_1.usable, status_1.retirable) == (1, 1, False)
    assert status_1.usable_until == old.certificate.not_valid_after_utc
    assert (status_2.issuing.number, status_2.usable) == (2, 0)


def test_a_superseded_certificate_in_its_grace_still_holds_retirement_back(
        fleet: Fleet) -> None:
    old = fleet.enroll("dev-1").certificate
    rotate(fleet)
    fleet.reenroll(old)
    [_, status_1] = fleet.authority.issuing_report()
    assert status_1.usable == 1  # superseded, still usable for certificates.superseded_grace
    fleet.clock.advance(seconds=fleet.authority.settings.superseded_grace.total_seconds() + 1)
    [_, status_1] = fleet.authority.issuing_report()
    assert (status_1.usable, status_1.retirable) == (0, True)
    retirement = fleet.authority.retire_issuing(actor="operator")
    assert (retirement.issuing.number, retirement.revoked) == (1, [])
    event = next(e for e in fleet.audit() if e.action == "ca.retire")
    assert event.outcome == "ok"
    assert json.loads(event.detail or "{}") == {
        "number": 1, "fingerprint_sha256": pki.fingerprint_sha256(retirement.issuing.certificate),
        "forced": False, "revoked": 0}


def test_forced_retirement_revokes_the_certificates_still_usable(fleet: Fleet) -> None:
    old = fleet.enroll("dev-old")
    rotate(fleet)
    new = fleet.enroll("dev-new")
    after = fleet.authority.last_revocation_id()
    retirement = fleet.authority.retire_issuing(actor="operator", number=1, force=True)
    assert retirement.revoked == [old.record.serial]
    record = fleet.certificate(old.record.serial)
    assert record is not None
    assert (record.status, record.revocation_reason) == ("revoked", "cessationOfOperation")
    assert fleet.certificate(new.record.serial).status == "active"  # type: ignore[union-attr]
    assert fleet.device("dev-old").status == "active"  # type: ignore[union-attr]
    # Brokers follow the revocation events: the live connections of dev-old are dropped.
    with fleet.session() as session:
        events = events_db.revocations_after(session=session, after_id=after)
    assert [(e.kind, e.serial, e.device_id) for e in events] == [
        ("revoked", old.record.serial, "dev-old")]
    # Only the issuing CA still in use signs a CRL now.
    assert [s.issuing.number for s in fleet.authority.current_crls()] == [2]
    event = next(e for e in fleet.audit() if e.action == "ca.retire")
    assert (event.reason, json.loads(event.detail or "{}")["revoked"]) == (
        "cessationOfOperation", 1)


def test_rotation_refused_without_the_root_key_is_audited_and_changes_nothing(
        fleet: Fleet) -> None:
    paths = Paths.of(fleet.authority.settings)
    paths.root_key.unlink()
    chain = paths.chain.read_bytes()
    with fleet.refused(CAError, "ca.rotate", match="give it with --root-key FILE"):
        rotate(fleet)
    assert paths.chain.read_bytes() == chain
    assert not paths.numbered(1)[0].exists()
    assert fleet.enroll("dev-1").certificate.issuer.rfc4514_string() == \
        "CN=Fleet Issuing CA,O=Fleet"


def test_exporting_the_root_key_is_audited(fleet: Fleet, tmp_path: Path) -> None:
    out = tmp_path / "root.key"
    fleet.authority.export_root_key(actor="operator", out=out, remove=True)
    event = next(e for e in fleet.audit() if e.action == "ca.export-root-key")
    assert event.outcome == "ok"
    assert json.loads(event.detail or "{}") == {
        "file": str(out), "removed_from_data_dir": True, "passphrase": "CA"}
    fleet.authority.rotate_issuing(actor="operator", root_key_file=out)
    detail = json.loads(next(e for e in fleet.audit() if e.action == "ca.rotate").detail or "")
    assert detail["root_key"] == "offline"
