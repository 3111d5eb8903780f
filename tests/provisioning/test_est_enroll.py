"""simpleenroll (RFC 7030 4.2.1): bootstrap-token enrollment and each of its refusals."""

from __future__ import annotations

import base64

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from est_support import EST, Est, baseline, expect_refusal, make_csr, past_authority
from sqlmodel import select

from fleet import pki
from fleet.registry.engine import session as new_session
from fleet.registry.models import BootstrapToken, Device

KEY_TYPES = ("p256", "p384", "ed25519", "rsa2048")


def _device(est: Est, device_id: str) -> Device | None:
    with new_session(est.engine) as session:
        return session.get(Device, device_id)


def test_enroll_with_basic_issues_exactly_one_device_certificate(est_any_db: Est) -> None:
    est = est_any_db
    token = est.token("sensors")
    reply = est.enroll(make_csr("dev-1"), token, username="dev-1")
    assert reply.status == 200, reply.text
    assert reply.headers["Content-Type"] == "application/pkcs7-mime; smime-type=certs-only"
    assert reply.headers["Content-Transfer-Encoding"] == "base64"
    (cert,) = reply.certificates()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://fleet.local/device/dev-1"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.issuer == est.authority.ca.issuing.subject
    device = _device(est, "dev-1")
    assert device is not None
    assert (device.status, device.group) == ("active", "sensors")
    assert [e.outcome for e in est.audit("enroll")] == ["ok"]


def test_enroll_with_bearer_token(est: Est) -> None:
    reply = est.enroll(make_csr("dev-bearer"), est.token(), bearer=True)
    assert reply.status == 200, reply.text
    assert len(reply.certificates()) == 1


def test_enroll_with_empty_basic_username(est: Est) -> None:
    reply = est.enroll(make_csr("dev-anon"), est.token(), username="")
    assert reply.status == 200, reply.text


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_enroll_accepts_every_allowed_key_type(est: Est, key_type: pki.KeyType) -> None:
    key = pki.generate_private_key(key_type)
    reply = est.enroll(make_csr(f"dev-{key_type}", key), est.token())
    assert reply.status == 200, reply.text
    assert reply.certificates()[0].public_key() == key.public_key()


def test_enroll_under_a_label_joins_the_labelled_group(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_LABELS="line-1=sensors")  # type: ignore[operator]
    reply = est.enroll(make_csr("dev-label"), est.token("sensors"),
                       path=f"{EST}/line-1/simpleenroll")
    assert reply.status == 200, reply.text
    device = _device(est, "dev-label")
    assert device is not None
    assert device.group == "sensors"


def test_enroll_refused_token_of_another_group_under_a_label(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_LABELS="line-1=sensors")  # type: ignore[operator]
    token = est.token("cameras")
    before = baseline(est, "enroll")
    reply = est.enroll(make_csr("dev-x"), token, path=f"{EST}/line-1/simpleenroll")
    expect_refusal(est, reply, 401, before, says="group")


def test_enroll_refused_unknown_label_404(est: Est) -> None:
    reply = est.enroll(make_csr("dev-x"), est.token(), path=f"{EST}/nolabel/simpleenroll")
    assert reply.status == 404
    assert _device(est, "dev-x") is None


# -- 401: credentials ------------------------------------------------------------------------

def test_enroll_refused_missing_credentials(est: Est) -> None:
    before = baseline(est, "enroll")
    reply = est.enroll(make_csr("dev-x"), None)
    event = expect_refusal(est, reply, 401, before, says="authentication required")
    assert event.actor == "est:127.0.0.1"


@pytest.mark.parametrize("header", ["Basic !!!notbase64", "Basic " + base64.b64encode(
    b"no-colon").decode(), "Digest username=x", "Bearer"])
def test_enroll_refused_malformed_authorization(est: Est, header: str) -> None:
    before = baseline(est, "enroll")
    reply = est.enroll(make_csr("dev-x"), None,
                       headers={"Content-Type": "application/pkcs10", "Authorization": header})
    expect_refusal(est, reply, 401, before)


def test_enroll_refused_unknown_token(est: Est) -> None:
    est.token()
    before = baseline(est, "enroll")
    reply = est.enroll(make_csr("dev-x"), "0123456789abcdef." + "A" * 32)
    expect_refusal(est, reply, 401, before, says="unknown or invalid bootstrap token")


def test_enroll_refused_bad_token_secret(est: Est) -> None:
    token_id = est.token().split(".")[0]
    before = baseline(est, "enroll")
    reply = est.enroll(make_csr("dev-x"), f"{token_id}." + "B" * 32)
    expect_refusal(est, reply, 401, before, says="unknown or invalid bootstrap token")


def test_enroll_refused_malformed_token(est: Est) -> None:
    before = baseline(est, "enroll")
    expect_refusal(est, est.enroll(make_csr("dev-x"), "not-a-token"), 401, before)


def test_enroll_refused_expired_token(est: Est) -> None:
    est.authority.create_group(name="sensors", actor="operator")
    token = str(past_authority(est, days=2).create_tokens(group="sensors", actor="test")[0].token)
    before = baseline(est, "enroll")
    expect_refusal(est, est.enroll(make_csr("dev-x"), token), 401, before, says="expired")


def test_enroll_refused_used_token(est: Est) -> None:
    token = est.token()
    assert est.enroll(make_csr("dev-first"), token).status == 200
    before = baseline(est, "enroll")
    reply = est.enroll(make_csr("dev-second"), token)
    expect_refusal(est, reply, 401, before, says="already used")


def test_enroll_refused_revoked_token(est: Est) -> None:
    token = est.token()
    est.authority.revoke_token(token_id=token.split(".")[0], actor="test")
    before = baseline(est, "enroll")
    expect_refusal(est, est.enroll(make_csr("dev-x"), token), 401, before, says="revoked")


# -- 400: the CSR ----------------------------------------------------------------------------

def test_enroll_refused_malformed_csr(est: Est) -> None:
    token = est.token()
    before = baseline(est, "enroll")
    reply = est.enroll(b"\x30\x03\x02\x01\x00", token)
    expect_refusal(est, reply, 400, before, says="CSR")


def test_enroll_refused_tampered_csr(est: Est) -> None:
    der = bytearray(make_csr("dev-x"))
    der[-1] ^= 0x01  # a bit of the signature
    token = est.token()
    before = baseline(est, "enroll")
    expect_refusal(est, est.enroll(bytes(der), token), 400, before)


def test_enroll_refused_body_not_base64(est: Est) -> None:
    token = est.token()
    before = baseline(est, "enroll")
    reply = est.enroll(b"%%% not base64 %%%", token, encode=False)
    expect_refusal(est, reply, 400, before, says="base64")


def test_enroll_refused_bad_key(est: Est) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    token = est.token()
    before = baseline(est, "enroll")
    reply = est.enroll(make_csr("dev-x", weak), token)
    expect_refusal(est, reply, 400, before, says="RSA 1024")


@pytest.mark.parametrize(("extension", "says"), [
    (x509.BasicConstraints(ca=True, path_length=None), "CA:true"),
    (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), "serverAuth"),
    (x509.SubjectAlternativeName([x509.DNSName("evil.example")]), "subject alternative names"),
    (x509.SubjectAlternativeName([
        x509.UniformResourceIdentifier("spiffe://fleet.local/device/dev-x"),
        x509.UniformResourceIdentifier("spiffe://fleet.local/device/other")]),
     "subject alternative names"),
], ids=["ca-true", "server-auth", "extra-dns-san", "extra-uri-san"])
def test_enroll_refused_csr_requests_more_than_the_profile(
        est: Est, extension: x509.ExtensionType, says: str) -> None:
    token = est.token()
    before = baseline(est, "enroll")
    reply = est.enroll(make_csr("dev-x", extensions=[extension]), token)
    expect_refusal(est, reply, 400, before, says=says)


def test_enroll_refused_identity_mismatch_username(est: Est) -> None:
    token = est.token()
    before = baseline(est, "enroll")
    reply = est.enroll(make_csr("dev-x"), token, username="dev-y")
    expect_refusal(est, reply, 400, before, says="does not match")


def test_enroll_refused_identity_mismatch_bound_token(est: Est) -> None:
    token = est.token(device_id="dev-bound")
    before = baseline(est, "enroll")
    reply = est.enroll(make_csr("dev-other"), token)
    expect_refusal(est, reply, 400, before, says="bound to device")


def test_enroll_refused_identity_mismatch_foreign_spiffe_uri(est: Est) -> None:
    token = est.token()
    before = baseline(est, "enroll")
    san = x509.SubjectAlternativeName([
        x509.UniformResourceIdentifier("spiffe://fleet.local/device/someone-else")])
    reply = est.enroll(make_csr("dev-x", extensions=[san]), token)
    expect_refusal(est, reply, 400, before, says="spiffe://fleet.local/device/someone-else")


def test_enroll_refused_invalid_device_id(est: Est) -> None:
    token = est.token()
    before = baseline(est, "enroll")
    expect_refusal(est, est.enroll(make_csr("bad/id"), token), 400, before)


# -- 403: the device -------------------------------------------------------------------------

def test_enroll_refused_revoked_device(est: Est) -> None:
    est.device("dev-r")
    est.authority.revoke_device(device_id="dev-r", reason="keyCompromise", actor="test")
    token = est.token()
    before = baseline(est, "enroll")
    expect_refusal(est, est.enroll(make_csr("dev-r"), token), 403, before, says="revoked")


def test_enroll_refused_suspended_device(est: Est) -> None:
    est.device("dev-s")
    est.authority.suspend_device(device_id="dev-s", actor="test")
    token = est.token()
    before = baseline(est, "enroll")
    expect_refusal(est, est.enroll(make_csr("dev-s"), token), 403, before, says="suspended")


def test_enroll_refused_already_registered_device(est: Est) -> None:
    est.device("dev-a")
    token = est.token()
    before = baseline(est, "enroll")
    reply = est.enroll(make_csr("dev-a"), token)
    expect_refusal(est, reply, 403, before, says="simplereenroll")


def test_enroll_with_a_bound_token_replaces_a_lost_certificate(est: Est) -> None:
    first = est.device("dev-lost")
    token = est.token(device_id="dev-lost")
    reply = est.enroll(make_csr("dev-lost"), token)
    assert reply.status == 200, reply.text
    assert reply.certificates()[0].serial_number != first.certificate.serial_number


def test_enroll_refusal_leaves_the_token_usable(est: Est) -> None:
    token = est.token()
    assert est.enroll(make_csr("dev-x"), token, username="dev-y").status == 400
    with new_session(est.engine) as session:
        row = session.exec(select(BootstrapToken)).one()
        assert row.uses_left == 1
    assert est.enroll(make_csr("dev-x"), token, username="dev-x").status == 200
