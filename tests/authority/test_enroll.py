"""simpleenroll: a bootstrap token authorizes a first certificate; every refusal changes nothing."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pki.x509_factory import cached_key, der, make_csr, spiffe

from fleet import pki
from fleet.authority import Authority, TokenCredential
from fleet.errors import (
    CSRError,
    DeviceNotActiveError,
    ForbiddenError,
    IdentityError,
    KeyPolicyError,
    ProfileError,
    TokenError,
)
from fleet.pki import Identity
from fleet.registry import CertificateStatus, DeviceStatus

from .conftest import Fleet


def test_enroll_creates_an_active_device_and_records_the_certificate(fleet: Fleet) -> None:
    token = fleet.token(group="sensors")
    issued = fleet.enroll("dev-1", token)
    cert, record = issued.certificate, issued.record

    device = fleet.device("dev-1")
    assert device is not None
    assert (device.group, device.status) == ("sensors", DeviceStatus.ACTIVE)
    assert device.created_at == fleet.clock.now

    assert record.serial == format(cert.serial_number, "x")
    stored = fleet.certificate(record.serial)
    assert stored is not None
    assert stored.device_id == "dev-1"
    assert stored.service is None
    assert stored.status == CertificateStatus.ACTIVE
    assert stored.fingerprint_sha256 == pki.fingerprint_sha256(cert)
    assert stored.pem == pki.certificate_pem(cert)
    assert stored.not_after == fleet.clock.now + timedelta(days=30)
    assert stored.not_before == fleet.clock.now - timedelta(minutes=5)

    verdict = pki.verify_leaf(cert, issuers=[fleet.authority.ca.issuing],
                              trust_domain="fleet.local", now=fleet.clock.now)
    assert verdict.ok
    assert verdict.identity == Identity("device", "dev-1")
    assert cert.public_key() == fleet.keys["dev-1"].public_key()

    assert fleet.tokens()[0].uses_left == 0
    event = fleet.audit()[-1]
    assert (event.action, event.outcome, event.actor) == ("enroll", "ok", "est")
    assert (event.device_id, event.serial) == ("dev-1", record.serial)
    assert event.detail is not None
    detail = json.loads(event.detail)
    assert detail["token_id"] == token.split(".")[0]
    assert detail["group"] == "sensors"
    assert detail["key"] == "EC P-256"
    fleet.assert_no_secret_in_audit()


def test_enroll_with_each_accepted_key_type(fleet: Fleet, subtests: pytest.Subtests) -> None:
    for kind in ["p384", "ed25519", "rsa2048", "rsa3072"]:
        with subtests.test(key=kind):
            issued = fleet.enroll(f"dev-{kind}", key=cached_key(kind))
            assert issued.certificate.public_key() == cached_key(kind).public_key()


def test_enroll_accepts_der_and_base64(fleet: Fleet) -> None:
    csr = make_csr("dev-1", key=cached_key("p256"))
    assert fleet.enroll("dev-1", csr=der(csr)).record.device_id == "dev-1"
    csr = make_csr("dev-2", key=cached_key("p256"))
    body = base64.encodebytes(der(csr)).replace(b"\n", b"\r\n")  # 76 columns, CRLF
    assert fleet.enroll("dev-2", csr=body).record.device_id == "dev-2"


def test_enroll_ignores_extensions_the_profile_allows(fleet: Fleet) -> None:
    csr = make_csr("dev-1", key=cached_key("p256"), uris=[spiffe("dev-1")], extensions=[
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
        x509.BasicConstraints(ca=False, path_length=None)])
    cert = fleet.enroll("dev-1", csr=der(csr)).certificate
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_enroll_with_matching_username_and_label_group(fleet: Fleet) -> None:
    issued = fleet.enroll("dev-1", fleet.token(group="cameras"), username="dev-1",
                          group="cameras")
    assert issued.record.device_id == "dev-1"
    device = fleet.device("dev-1")
    assert device is not None
    assert device.group == "cameras"


def test_enroll_with_a_bound_token_activates_the_pending_device(fleet: Fleet) -> None:
    token = fleet.token(group="sensors", device_id="dev-1")
    fleet.enroll("dev-1", token)
    device = fleet.device("dev-1")
    assert device is not None
    assert device.status == DeviceStatus.ACTIVE


def test_multi_use_group_token_enrolls_that_many_devices(fleet: Fleet) -> None:
    token = fleet.token(group="sensors", uses=3)
    for i in range(3):
        fleet.enroll(f"dev-{i}", token)
    assert fleet.tokens()[0].uses_left == 0
    with fleet.refused(TokenError, "enroll", match="already used"):
        fleet.enroll("dev-3", token)


def test_reprovisioning_an_active_device_with_a_bound_token(fleet: Fleet) -> None:
    first = fleet.enroll("dev-1", fleet.token(device_id="dev-1"))
    second = fleet.enroll("dev-1", fleet.token(device_id="dev-1"), key=cached_key("p384"))
    old = fleet.certificate(first.record.serial)
    assert old is not None
    assert old.status == CertificateStatus.SUPERSEDED
    assert second.record.status == CertificateStatus.ACTIVE
    assert json.loads(fleet.audit()[-1].detail or "{}")["superseded"] == [first.record.serial]


def test_public_base_url_puts_crl_and_aia_into_device_certificates(fleet: Fleet) -> None:
    authority = Authority(
        settings=fleet.authority.settings.with_overrides(
            public_base_url="https://fleet.example.com"),
        engine=fleet.authority.engine, ca=fleet.authority.ca, clock=fleet.clock)
    token = fleet.token()
    cert = authority.enroll(credential=TokenCredential(token), csr=fleet.csr("dev-1"),
                            actor="est").certificate
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert cdp[0].full_name == [x509.UniformResourceIdentifier("https://fleet.example.com/crl")]
    cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)


def test_device_lifetime_comes_from_settings(fleet: Fleet) -> None:
    authority = Authority(
        settings=fleet.authority.settings.with_overrides(device_lifetime=timedelta(seconds=90)),
        engine=fleet.authority.engine, ca=fleet.authority.ca, clock=fleet.clock)
    cert = authority.enroll(credential=TokenCredential(fleet.token()), csr=fleet.csr("dev-1"),
                            actor="est").certificate
    assert cert.not_valid_after_utc == fleet.clock.now + timedelta(seconds=90)


# -- refusals: each one names the reason, changes nothing and is audited ---------------------

def test_enroll_refused_malformed_csr(fleet: Fleet) -> None:
    token = fleet.token()
    with fleet.refused(CSRError, "enroll", match="base64"):
        fleet.enroll("dev-1", token, csr=b"this is not a CSR")


def test_enroll_refused_tampered_csr(fleet: Fleet) -> None:
    token = fleet.token()
    tampered = der(make_csr("dev-1", key=cached_key("p256"))).replace(b"dev-1", b"dev-2")
    with fleet.refused(CSRError, "enroll", match="proof of possession"):
        fleet.enroll("dev-2", token, csr=tampered)


def test_enroll_refused_unsupported_key(fleet: Fleet, subtests: pytest.Subtests) -> None:
    token = fleet.token()
    for kind in ["rsa1024", "p521", "secp256k1", "ed448", "dsa2048"]:
        with subtests.test(key=kind):
            with fleet.refused(KeyPolicyError, "enroll", match="not accepted"):
                fleet.enroll("dev-1", token, key=cached_key(kind))
            assert fleet.audit()[-1].device_id is None  # the CSR was not looked at further


def test_enroll_refused_csr_requesting_ca(fleet: Fleet) -> None:
    token = fleet.token()
    csr = make_csr("dev-1", extensions=[x509.BasicConstraints(ca=True, path_length=None)])
    with fleet.refused(ProfileError, "enroll", match="CA:true"):
        fleet.enroll("dev-1", token, csr=der(csr))


def test_enroll_refused_csr_naming_another_device_than_the_bound_token(fleet: Fleet) -> None:
    token = fleet.token(device_id="dev-1")
    with fleet.refused(IdentityError, "enroll", match="bound to device 'dev-1'"):
        fleet.enroll("dev-2", token)
    assert fleet.device("dev-2") is None


def test_enroll_refused_csr_with_a_foreign_uri(fleet: Fleet) -> None:
    token = fleet.token()
    with fleet.refused(IdentityError, "enroll", match="device/dev-2"):
        fleet.enroll("dev-1", token, csr=der(make_csr("dev-1", uris=[spiffe("dev-2")])))


@pytest.mark.filterwarnings("ignore:Attribute's length must be")
def test_enroll_refused_invalid_device_id(fleet: Fleet, subtests: pytest.Subtests) -> None:
    token = fleet.token()
    for common_name in ["dev/1", "-dev", "a" * 65, "dev 1", "dev\x00", "+", "#"]:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name,
                                             _validate=False)])
        with subtests.test(cn=common_name):
            with fleet.refused(IdentityError, "enroll", match="invalid device id"):
                fleet.enroll(common_name, token, csr=der(make_csr(name=name)))
            assert fleet.audit()[-1].device_id is None


def test_enroll_refused_username_other_than_the_csr(fleet: Fleet) -> None:
    token = fleet.token()
    with fleet.refused(IdentityError, "enroll", match="username 'dev-2'"):
        fleet.enroll("dev-1", token, username="dev-2")


def test_enroll_refused_unknown_token(fleet: Fleet, subtests: pytest.Subtests) -> None:
    fleet.token()
    for token in ["0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "not-a-token", "",
                  "0123456789ABCDEF.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "\x00"]:
        with subtests.test(token=token), fleet.refused(
                TokenError, "enroll", match="unknown or invalid bootstrap token"):
            fleet.enroll("dev-1", token)


def test_enroll_refused_bad_secret(fleet: Fleet) -> None:
    token_id = fleet.token().split(".")[0]
    with fleet.refused(TokenError, "enroll", match="unknown or invalid bootstrap token"):
        fleet.enroll("dev-1", f"{token_id}.{'B' * 32}")
    assert json.loads(fleet.audit()[-1].detail or "{}")["token_id"] == token_id


def test_enroll_refused_expired_token(fleet: Fleet) -> None:
    token = fleet.token(ttl=timedelta(hours=1))
    fleet.clock.advance(hours=1)
    with fleet.refused(TokenError, "enroll", match="expired"):
        fleet.enroll("dev-1", token)


def test_enroll_just_before_token_expiry(fleet: Fleet) -> None:
    token = fleet.token(ttl=timedelta(hours=1))
    fleet.clock.advance(minutes=59, seconds=59)
    fleet.enroll("dev-1", token)


def test_enroll_refused_used_token(fleet: Fleet) -> None:
    token = fleet.token()
    fleet.enroll("dev-1", token)
    with fleet.refused(TokenError, "enroll", match="already used"):
        fleet.enroll("dev-2", token)


def test_enroll_refused_revoked_token(fleet: Fleet) -> None:
    token = fleet.token()
    fleet.authority.revoke_token(token_id=token.split(".")[0], actor="ops")
    with fleet.refused(TokenError, "enroll", match="revoked"):
        fleet.enroll("dev-1", token)


def test_enroll_refused_wrong_group(fleet: Fleet) -> None:
    token = fleet.token(group="sensors")
    with fleet.refused(TokenError, "enroll", match="for group 'sensors', not 'cameras'"):
        fleet.enroll("dev-1", token, group="cameras")


def test_enroll_refused_revoked_device(fleet: Fleet) -> None:
    fleet.enroll("dev-1")
    fleet.authority.revoke_device(device_id="dev-1", reason="keyCompromise", actor="ops")
    token = fleet.token()
    with fleet.refused(DeviceNotActiveError, "enroll", match="revoked"):
        fleet.enroll("dev-1", token)


def test_enroll_refused_revoked_device_with_a_token_bound_before_revocation(
    fleet: Fleet,
) -> None:
    token = fleet.token(device_id="dev-1")
    fleet.authority.revoke_device(device_id="dev-1", reason="cessationOfOperation", actor="ops")
    with fleet.refused(TokenError, "enroll", match="revoked"):
        fleet.enroll("dev-1", token)


def test_enroll_refused_suspended_device(fleet: Fleet) -> None:
    fleet.enroll("dev-1", fleet.token(device_id="dev-1"))
    token = fleet.token(device_id="dev-1")
    fleet.authority.suspend_device(device_id="dev-1", actor="ops")
    with fleet.refused(DeviceNotActiveError, "enroll", match="suspended"):
        fleet.enroll("dev-1", token)


def test_enroll_refused_identity_takeover_with_an_unbound_token(fleet: Fleet) -> None:
    fleet.enroll("dev-1")
    token = fleet.token()
    with fleet.refused(ForbiddenError, "enroll", match="already registered"):
        fleet.enroll("dev-1", token)


def test_enroll_refused_unbound_token_for_a_pre_registered_device(fleet: Fleet) -> None:
    fleet.token(device_id="dev-1")  # the factory reserved dev-1 for its bound token
    token = fleet.token()
    with fleet.refused(ForbiddenError, "enroll", match="already registered"):
        fleet.enroll("dev-1", token)


def test_enroll_refused_token_bound_to_a_device_in_another_group_label(fleet: Fleet) -> None:
    token = fleet.token(group="sensors", device_id="dev-1")
    with fleet.refused(TokenError, "enroll", match="group"):
        fleet.enroll("dev-1", token, group="cameras")


def test_refusals_never_leak_the_secret_into_the_audit_log(fleet: Fleet) -> None:
    token = fleet.token(device_id="dev-1")
    audited = len(fleet.audit())
    attempts: list[Callable[[], object]] = [
        lambda: fleet.enroll("dev-2", token),
        lambda: fleet.enroll("dev-1", token, username="dev-9"),
        lambda: fleet.enroll("dev-1", token, group="other"),
        lambda: fleet.enroll("dev-1", token, csr=b"junk " + token.encode()),
        lambda: fleet.enroll("dev-1", token.replace(".", ":")),
        lambda: fleet.enroll("dev-1", token + "x"),
    ]
    for attempt in attempts:
        with pytest.raises((TokenError, IdentityError, CSRError)):
            attempt()
    assert [e.outcome for e in fleet.audit()[audited:]] == ["refused"] * len(attempts)
    fleet.assert_no_secret_in_audit()
    fleet.enroll("dev-1", token)  # and the token still works


def test_enroll_refused_csr_cn_holding_a_token_never_records_it(fleet: Fleet) -> None:
    """`openssl req -subj "/CN=$TOKEN"`: a token is shaped like a device id, and must not
    become one (nor a claimed id in the audit log)."""
    token = fleet.token()
    with fleet.refused(IdentityError, "enroll", match="CN holds a bootstrap token"):
        fleet.enroll(token, token)
    fleet.secrets.append(token)  # the whole token, as the CN carried it
    fleet.assert_no_secret_in_audit()
    assert fleet.device(token) is None
