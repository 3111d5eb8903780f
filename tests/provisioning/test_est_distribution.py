"""cacerts, csrattrs, /crl and /healthz: what any client may fetch without credentials."""

from __future__ import annotations

import base64

import pytest
from cryptography import x509
from est_support import EST, Est

from provisioning import wire


@pytest.mark.parametrize("path", [f"{EST}/cacerts", f"{EST}/factory/cacerts"])
def test_cacerts_returns_the_ca_chain(make_est: object, path: str) -> None:
    est = make_est(FLEET_EST_LABELS="factory=sensors")  # type: ignore[operator]
    reply = est.get(path)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/pkcs7-mime"
    assert reply.headers["Content-Transfer-Encoding"] == "base64"
    ca = est.authority.ca
    assert {c.subject for c in reply.certificates()} == {ca.issuing.subject, ca.root.subject}


def test_cacerts_refused_unknown_label_404(est: Est) -> None:
    reply = est.get(f"{EST}/nosuchlabel/cacerts")
    assert reply.status == 404
    assert "nosuchlabel" in reply.text
    assert reply.headers["Content-Type"].startswith("text/plain")


def test_csrattrs_asks_for_p256_and_sha256(est: Est) -> None:
    reply = est.get(f"{EST}/csrattrs")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/csrattrs"
    assert reply.headers["Content-Transfer-Encoding"] == "base64"
    der = base64.b64decode(b"".join(reply.body.split()))
    assert der == wire.csr_attributes()
    # SEQUENCE { ecdsa-with-SHA256, SEQUENCE { id-ecPublicKey, SET { secp256r1 } } }
    assert der.hex() == ("3021" "06082a8648ce3d040302" "3015" "06072a8648ce3d0201"
                         "310a" "06082a8648ce3d030107")


def test_crl_is_der_signed_by_the_issuing_ca_and_lists_revocations(est: Est) -> None:
    device = est.device("crl-dev")
    est.authority.revoke_certificate(serial=format(device.certificate.serial_number, "x"),
                                     reason="keyCompromise", actor="test")
    reply = est.get("/crl")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/pkix-crl"
    crl = x509.load_der_x509_crl(reply.body)
    assert crl.is_signature_valid(est.authority.ca.issuing.public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(device.certificate.serial_number)


def test_healthz_ok(est: Est) -> None:
    reply = est.get("/healthz")
    assert (reply.status, reply.text) == (200, "ok\n")


def test_unknown_path_is_404(est: Est) -> None:
    assert est.get(f"{EST}/serverkeygen").status == 404
    assert est.get("/").status == 404


def test_wrong_method_is_405(est: Est) -> None:
    assert est.get(f"{EST}/simpleenroll").status == 405
    assert est.request("POST", f"{EST}/cacerts", b"").status == 405
