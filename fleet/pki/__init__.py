"""Pure X.509 for Fleet: keys, CSRs, profiles, issuing, CRLs, PKCS#7, verification.

Nothing here reads files, opens sockets or reads the clock: ``now`` is always a parameter.
"""

from fleet.pki.crl import REASON_CODES, RevokedEntry, build_crl, check_reason, crls_pem
from fleet.pki.csr import (
    CSRRequest,
    check_requested_identity,
    decode_base64,
    inspect_csr,
    load_csr,
    same_subject_and_san,
)
from fleet.pki.identity import (
    DEVICE_ID_PATTERN,
    Identity,
    check_device_id,
    check_group_name,
    check_service_name,
    identity_from_certificate,
)
from fleet.pki.issue import issue_certificate
from fleet.pki.keys import (
    KEY_TYPES,
    KeyType,
    PrivateKey,
    check_key_policy,
    generate_private_key,
    load_private_key_pem,
    private_key_pem,
)
from fleet.pki.ocsp import (
    CertId,
    CertStatus,
    OcspMalformedError,
    OcspQuery,
    Responder,
    build_ocsp_response,
    parse_ocsp_request,
    unsuccessful_ocsp_response,
)
from fleet.pki.pkcs7 import certs_only, load_certs_only
from fleet.pki.profiles import (
    Profile,
    ca_profile,
    identity_profile,
    ocsp_responder_profile,
    server_profile,
)
from fleet.pki.verify import (
    Reason,
    Verdict,
    authority_key_id,
    certificate_pem,
    end_entity,
    fingerprint_sha256,
    issuer_problem,
    key_identifier,
    load_certificate,
    load_certificates,
    spki_sha256,
    usage_problem,
    validity_problem,
    verify_leaf,
)

__all__ = [
    "DEVICE_ID_PATTERN", "KEY_TYPES", "REASON_CODES", "CSRRequest", "CertId", "CertStatus",
    "Identity", "KeyType", "OcspMalformedError", "OcspQuery", "PrivateKey", "Profile", "Reason",
    "Responder", "RevokedEntry", "Verdict", "authority_key_id", "build_crl",
    "build_ocsp_response", "ca_profile", "certificate_pem", "certs_only", "check_device_id",
    "check_group_name", "check_key_policy", "check_reason", "check_requested_identity",
    "check_service_name", "crls_pem", "decode_base64", "end_entity", "fingerprint_sha256",
    "generate_private_key", "identity_from_certificate", "identity_profile", "inspect_csr",
    "issue_certificate", "issuer_problem", "key_identifier", "load_certificate",
    "load_certificates", "load_certs_only", "load_csr", "load_private_key_pem",
    "ocsp_responder_profile", "parse_ocsp_request", "private_key_pem", "same_subject_and_san",
    "server_profile", "spki_sha256", "unsuccessful_ocsp_response", "usage_problem",
    "validity_problem", "verify_leaf",
]
