"""simplereenroll (RFC 7030 4.2.2): renewal and rekey with the TLS client certificate."""

from __future__ import annotations

import ssl
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from est_support import (
    EST,
    Enrolled,
    Est,
    baseline,
    expect_refusal,
    make_csr,
    past_authority,
)
from sqlmodel import select

from fleet import pki
from fleet.authority import TokenCredential
from fleet.registry import utcnow
from fleet.registry.engine import session as new_session
from fleet.registry.models import Certificate


def _status(est: Est, cert: x509.Certificate) -> str:
    with new_session(est.engine) as session:
        row = session.exec(select(Certificate).where(
            Certificate.serial == format(cert.serial_number, "x"))).one()
        return str(row.status)


def test_reenroll_renew_keeps_the_key_and_supersedes_the_old_certificate(
        est_any_db: Est) -> None:
    est = est_any_db
    device = est.device("dev-renew")
    reply = est.reenroll(make_csr("dev-renew", device.key), device)
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Transfer-Encoding"] == "base64"
    (renewed,) = reply.certificates()
    assert renewed.public_key() == device.key.public_key()
    assert renewed.subject == device.certificate.subject
    assert renewed.serial_number != device.certificate.serial_number
    assert _status(est, device.certificate) == "superseded"
    assert _status(est, renewed) == "active"
    assert [e.outcome for e in est.audit("reenroll")] == ["ok"]


def test_reenroll_rekey_with_a_new_key(est_any_db: Est) -> None:
    est = est_any_db
    device = est.device("dev-rekey")
    new_key = pki.generate_private_key("p384")
    reply = est.reenroll(make_csr("dev-rekey", new_key), device)
    assert reply.status == 200, reply.text
    (rekeyed,) = reply.certificates()
    assert rekeyed.public_key() == new_key.public_key()
    # The new certificate renews in turn.
    again = Enrolled("dev-rekey", new_key, rekeyed, est.tmp)
    assert est.reenroll(make_csr("dev-rekey", new_key), again).status == 200


def test_reenroll_with_the_full_subject_of_the_certificate(est: Est) -> None:
    device = est.device("dev-full")
    reply = est.reenroll(make_csr("dev-full", device.key, subject=device.certificate.subject),
                         device)
    assert reply.status == 200, reply.text


def test_reenroll_under_a_label(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_LABELS="line-1=sensors")  # type: ignore[operator]
    device = est.device("dev-label")
    reply = est.reenroll(make_csr("dev-label", device.key), device,
                         path=f"{EST}/line-1/simplereenroll")
    assert reply.status == 200, reply.text


def test_reenroll_refused_without_client_certificate(est: Est) -> None:
    device = est.device("dev-nocert")
    before = baseline(est, "reenroll")
    reply = est.reenroll(make_csr("dev-nocert", device.key), None)
    expect_refusal(est, reply, 401, before, says="client certificate")


def test_reenroll_refused_superseded_certificate(est: Est) -> None:
    device = est.device("dev-sup")
    assert est.reenroll(make_csr("dev-sup", device.key), device).status == 200
    before = baseline(est, "reenroll")
    reply = est.reenroll(make_csr("dev-sup", device.key), device)
    expect_refusal(est, reply, 403, before, says="superseded")


def test_reenroll_refused_revoked_certificate(est: Est) -> None:
    device = est.device("dev-rc")
    est.authority.revoke_certificate(serial=format(device.certificate.serial_number, "x"),
                                     reason="keyCompromise", actor="test")
    before = baseline(est, "reenroll")
    reply = est.reenroll(make_csr("dev-rc", device.key), device)
    expect_refusal(est, reply, 403, before, says="revoked")


def test_reenroll_refused_revoked_device(est: Est) -> None:
    device = est.device("dev-rd")
    est.authority.revoke_device(device_id="dev-rd", reason="keyCompromise", actor="test")
    before = baseline(est, "reenroll")
    reply = est.reenroll(make_csr("dev-rd", device.key), device)
    expect_refusal(est, reply, 403, before, says="revoked")


def test_reenroll_refused_suspended_device(est: Est) -> None:
    device = est.device("dev-sd")
    est.authority.suspend_device(device_id="dev-sd", actor="test")
    before = baseline(est, "reenroll")
    reply = est.reenroll(make_csr("dev-sd", device.key), device)
    expect_refusal(est, reply, 403, before, says="suspended")


def test_reenroll_refused_identity_mismatch(est: Est) -> None:
    device = est.device("dev-me")
    before = baseline(est, "reenroll")
    reply = est.reenroll(make_csr("dev-other", device.key), device)
    expect_refusal(est, reply, 400, before, says="identical")


def test_reenroll_refused_csr_requests_ca(est: Est) -> None:
    device = est.device("dev-ca")
    before = baseline(est, "reenroll")
    csr = make_csr("dev-ca", device.key,
                   extensions=[x509.BasicConstraints(ca=True, path_length=None)])
    expect_refusal(est, est.reenroll(csr, device), 400, before, says="CA:true")


def _handshake_refused(est: Est, device: Enrolled) -> None:
    before = est.snapshot()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        est.reenroll(make_csr(device.device_id, device.key), device)
    assert est.snapshot() == before


def test_reenroll_refused_expired_certificate_in_the_handshake(est: Est) -> None:
    past = past_authority(est, days=40)  # a 30-day certificate that expired 10 days ago
    key = pki.generate_private_key()
    past.create_group(name="sensors", actor="operator")
    token = str(past.create_tokens(group="sensors", actor="test")[0].token)
    issued = past.enroll(credential=TokenCredential(token), csr=make_csr("dev-old", key),
                         actor="test")
    assert issued.certificate.not_valid_after_utc < utcnow()
    _handshake_refused(est, Enrolled("dev-old", key, issued.certificate, est.tmp))


def test_reenroll_refused_certificate_of_another_ca_in_the_handshake(est: Est) -> None:
    now = utcnow()
    other_key = pki.generate_private_key()
    other_ca = pki.issue_certificate(
        profile=pki.ca_profile("Other CA", lifetime=timedelta(days=30), path_length=0),
        public_key=other_key.public_key(), issuer_key=other_key, issuer=None, now=now)
    key = pki.generate_private_key()
    forged = pki.issue_certificate(
        profile=pki.identity_profile(pki.Identity("device", "dev-forged"),
                                     trust_domain="fleet.local", lifetime=timedelta(days=1)),
        public_key=key.public_key(), issuer_key=other_key, issuer=other_ca, now=now)
    assert forged.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-forged"
    _handshake_refused(est, Enrolled("dev-forged", key, forged, est.tmp))
