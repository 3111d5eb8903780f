from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from fleet import pki
from fleet.authority import Authority, TokenCredential


def test_enroll_then_admit(authority: Authority) -> None:
    token = authority.create_tokens(group="sensors", actor="test")[0]
    key = pki.generate_private_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")])).sign(key, hashes.SHA256())
    issued = authority.enroll(credential=TokenCredential(str(token.token)),
                              csr=csr.public_bytes(serialization.Encoding.PEM), actor="test")
    assert authority.admit(certificate=issued.certificate).group == "sensors"
