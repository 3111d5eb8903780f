"""The enrollment and lifecycle policy. Every operation is one transaction plus its audit event.

Refusals roll back whatever the operation had started and are audited in a transaction of
their own, so a refused request changes nothing but the audit log. With group commit
(fleet.authority.commits, the EST service), concurrent enrollments and renewals share one
transaction, each in a savepoint of its own, and a refusal is audited in that transaction.
"""

from __future__ import annotations

from fleet.authority.admission import (
    ADMISSION_CHECKS,
    Admission,
    Candidate,
    ConnectReturnCode,
    Decision,
    Result,
    Stage,
)
from fleet.authority.core import Issued, serial_hex
from fleet.authority.crl import CrlPolicy, SignedCrl
from fleet.authority.enrollment import EnrollmentPolicy, TokenCredential
from fleet.authority.groups import GroupPolicy
from fleet.authority.issuers import IssuingPolicy, IssuingStatus, Retirement
from fleet.authority.lifecycle import LifecyclePolicy
from fleet.authority.manufacturer import ManufacturerCredential, ManufacturerPolicy
from fleet.authority.ocsp import OcspAnswer, OcspPolicy
from fleet.authority.renewal import RenewalPolicy
from fleet.authority.tokens import MAX_TOKENS_PER_CALL, IssuedToken, TokenPolicy

__all__ = [
    "ADMISSION_CHECKS",
    "MAX_TOKENS_PER_CALL",
    "Admission",
    "Authority",
    "Candidate",
    "ConnectReturnCode",
    "Decision",
    "Issued",
    "IssuedToken",
    "IssuingStatus",
    "ManufacturerCredential",
    "OcspAnswer",
    "Result",
    "Retirement",
    "SignedCrl",
    "Stage",
    "TokenCredential",
    "serial_hex",
]


class Authority(GroupPolicy, TokenPolicy, EnrollmentPolicy, ManufacturerPolicy, RenewalPolicy,
                LifecyclePolicy, CrlPolicy, OcspPolicy, IssuingPolicy):
    """Fleet's CA policy over one registry database."""
