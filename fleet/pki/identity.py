"""Device and service identities, their SPIFFE URIs and the MQTT client ids each may use.

A device's only client id is its id; a service's client ids are its name, and its name followed
by one of ``SERVICE_CLIENT_ID_SEPARATORS`` and anything. Device ids and service names are kept
disjoint by construction: no device id is a client id of any service (``is_service_client_id``),
so no client id belongs to both kinds. ``fleet.registry.names`` enforces this where identities
are created.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

from fleet.errors import IdentityError

DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""A device id is safe as a single MQTT topic level and as a URI path segment."""

SERVICE_CLIENT_ID_SEPARATORS = "-_.:/@"
"""What may follow a service's name in its client ids."""

TRUST_DOMAIN_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,253}[a-z0-9])?$")

Kind = Literal["device", "service"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate speaks for: a device or a backend service."""

    kind: Kind
    name: str

    def spiffe_uri(self, trust_domain: str) -> str:
        return f"spiffe://{trust_domain}/{self.kind}/{self.name}"

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def _check_name(value: str, what: str, **context: object) -> str:
    if not isinstance(value, str) or not DEVICE_ID_PATTERN.fullmatch(value):
        raise IdentityError(
            f"invalid {what} {value!r}: use 1-64 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit",
            **context,
        )
    return value


def check_device_id(device_id: str) -> str:
    """Return *device_id* unchanged if it is a valid device id, else raise IdentityError."""
    return _check_name(device_id, "device id", device_id=device_id)


def check_service_name(name: str) -> str:
    """Return *name* unchanged if it is a valid service name, else raise IdentityError."""
    return _check_name(name, "service name", service=name)


def check_group_name(group: str) -> str:
    """Return *group* unchanged if it is a valid group name (the device id rule), else raise."""
    return _check_name(group, "group", group=group)


def device(device_id: str) -> Identity:
    return Identity("device", check_device_id(device_id))


def service(name: str) -> Identity:
    return Identity("service", check_service_name(name))


def is_service_client_id(service: str, client_id: str) -> bool:
    """Whether *client_id* is a client id of service *service*."""
    return client_id == service or (client_id.startswith(service)
                                    and client_id[len(service)] in SERVICE_CLIENT_ID_SEPARATORS)


def client_id_problem(identity: Identity, client_id: str) -> str | None:
    """Why *identity* may not use *client_id*, or None."""
    if client_id == identity.name or (identity.kind == "service"
                                      and is_service_client_id(identity.name, client_id)):
        return None
    expected = (f"{identity.name!r}" if identity.kind == "device" else
                f"{identity.name!r} or {identity.name!r} + one of {SERVICE_CLIENT_ID_SEPARATORS}")
    return f"client id {client_id!r} does not match the certificate ({identity}); use {expected}"


def services_claiming(device_id: str) -> list[str]:
    """Every service name that has *device_id* among its client ids (see is_service_client_id):
    the id itself and each prefix that ends before a separator."""
    return [device_id] + [device_id[:i] for i, c in enumerate(device_id)
                          if i and c in SERVICE_CLIENT_ID_SEPARATORS]


def parse_spiffe_uri(uri: str, trust_domain: str) -> Identity:
    """Parse ``spiffe://<trust_domain>/<device|service>/<name>``."""
    prefix = f"spiffe://{trust_domain}/"
    if not uri.startswith(prefix):
        raise IdentityError(f"URI {uri!r} is not in trust domain {trust_domain!r}", uri=uri)
    kind, sep, name = uri[len(prefix) :].partition("/")
    if not sep or kind not in ("device", "service"):
        raise IdentityError(f"URI {uri!r} names neither a device nor a service", uri=uri)
    return device(name) if kind == "device" else service(name)


def common_names(name: x509.Name) -> list[str]:
    return [str(a.value) for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)]


def uri_sans(extensions: x509.Extensions) -> list[str]:
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def identity_from_certificate(cert: x509.Certificate, trust_domain: str) -> Identity:
    """The identity of a certificate: from its one SPIFFE URI SAN, cross-checked with its CN."""
    uris = uri_sans(cert.extensions)
    if len(uris) != 1:
        raise IdentityError(
            f"certificate must carry exactly one URI SAN, found {len(uris)}",
            serial=format(cert.serial_number, "x"),
        )
    ident = parse_spiffe_uri(uris[0], trust_domain)
    cns = common_names(cert.subject)
    if cns != [ident.name]:
        raise IdentityError(
            f"certificate CN {cns!r} does not match its URI SAN {uris[0]!r}",
            serial=format(cert.serial_number, "x"),
        )
    return ident
