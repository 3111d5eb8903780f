"""Errors raised by the Fleet core.

The edges map them to their own vocabulary: HTTP status codes in ``provisioning``,
CONNACK return codes in ``fleet.broker``, exit codes in ``fleet.cli``.

    FleetError
     +-- ConfigError                 a setting has a bad value (carries key, value)
     +-- CAError                     the CA on disk is missing, unreadable or locked
     +-- PKIError                    something about an X.509 object
     |    +-- CSRError               malformed, unsigned or tampered CSR
     |    +-- KeyPolicyError         key type or size not accepted
     |    +-- IdentityError          a CSR or certificate names the wrong identity
     |    +-- ProfileError           a CSR asks for what the profile forbids
     +-- AuthenticationError         a credential is missing or wrong (HTTP 401)
     |    +-- TokenError             unknown, expired, used up, revoked, wrong group/device
     |    |    +-- InvalidTokenError  malformed, unknown or wrong secret: no identity proven
     |    +-- ManufacturerCertificateError  no registered vendor vouches for it (chain,
     |                                      validity, the vendor's CRL)
     +-- ForbiddenError              authenticated, but not allowed (HTTP 403)
     |    +-- DeviceNotActiveError   device is revoked or suspended
     |    +-- CertificateNotActiveError   certificate is superseded, revoked or expired
     +-- NotFoundError               unknown device, certificate or token
     |    +-- UnknownGroupError      a group nobody declared (carries the declared ones)
     +-- ConflictError               the operation does not apply in the current state
     +-- RegistryUnavailableError    the database cannot be reached (HTTP 503)
     +-- NotInitializedError         no CA or no registry where one is named: `fleet init`
"""

from __future__ import annotations


class FleetError(Exception):
    """Base of every error the Fleet core raises on purpose."""

    def __init__(self, message: str, **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def __str__(self) -> str:
        return self.message


class ConfigError(FleetError):
    """A configuration key has a value Fleet cannot use."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        super().__init__(f"config {key}={value!r}: {reason}", key=key, value=value)
        self.key = key
        self.value = value
        self.reason = reason


class CAError(FleetError):
    """The CA cannot be created, loaded or unlocked."""


class PKIError(FleetError):
    """An X.509 object is unacceptable."""


class CSRError(PKIError):
    """The CSR is malformed, oversized, unsigned or tampered with."""


class KeyPolicyError(PKIError):
    """The public key type or size is not accepted."""


class IdentityError(PKIError):
    """A CSR or certificate names another (or no valid) identity."""


class ProfileError(PKIError):
    """A CSR requests extensions the certificate profile forbids."""


class AuthenticationError(FleetError):
    """A credential is missing or does not authenticate."""


class TokenError(AuthenticationError):
    """A bootstrap token cannot be used: unknown, expired, used up, revoked or wrong binding."""


class InvalidTokenError(TokenError):
    """The token is malformed, unknown or its secret is wrong: nothing about the caller is
    verified (its refusals are aggregated, see fleet.audit)."""


class ManufacturerCertificateError(AuthenticationError):
    """A manufacturer certificate (IDevID) does not verify against a registered vendor's CA:
    unknown vendor, broken chain, outside its validity, revoked by the vendor's CRL."""


class ForbiddenError(FleetError):
    """The caller is authenticated but not allowed to do this."""


class DeviceNotActiveError(ForbiddenError):
    """The device is revoked or suspended."""


class CertificateNotActiveError(ForbiddenError):
    """The certificate is superseded, revoked, expired or unknown to the registry."""


class NotFoundError(FleetError):
    """An unknown device, certificate or token."""


class UnknownGroupError(NotFoundError):
    """A group that is not declared (``fleet group create``); the message names the declared
    ones."""


class ConflictError(FleetError):
    """The operation does not apply to the current state."""


class RegistryUnavailableError(FleetError):
    """The registry database cannot be reached."""


class NotInitializedError(FleetError):
    """The data dir holds no CA, or the registry does not exist: ``fleet init`` has not set
    them up there (nothing is created in their place)."""
