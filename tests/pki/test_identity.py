"""Device ids, service names and SPIFFE URIs."""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fleet import pki
from fleet.errors import IdentityError
from fleet.pki import Identity
from fleet.pki.identity import parse_spiffe_uri

ALNUM = string.ascii_letters + string.digits
ALLOWED = ALNUM + "._-"


def is_valid_device_id(text: str) -> bool:
    """DESIGN.md, written without the regex: 1-64 ASCII chars, first alphanumeric."""
    return 1 <= len(text) <= 64 and text[0] in ALNUM and all(c in ALLOWED for c in text)


@given(st.from_regex(pki.DEVICE_ID_PATTERN, fullmatch=True))
@settings(max_examples=200)
def test_every_id_matching_the_pattern_is_accepted(device_id: str) -> None:
    assert pki.check_device_id(device_id) == device_id


@given(st.text(alphabet=st.sampled_from(ALLOWED + "/+#$ \n\t\x00é٣\uff41"), max_size=70)
       | st.text(max_size=70))
@settings(max_examples=400)
@example("dev-1\n")
@example("٣")  # a non-ASCII digit
@example("a" * 65)
def test_check_device_id_agrees_with_the_definition(text: str) -> None:
    if is_valid_device_id(text):
        assert pki.check_device_id(text) == text
    else:
        with pytest.raises(IdentityError, match="invalid device id"):
            pki.check_device_id(text)


@pytest.mark.parametrize("device_id", [
    "", "-dev", ".dev", "_dev", "a" * 65, "dev/1", "dev+1", "dev#", "dev 1", "dev\n", "dév",
    "dev\x00", "+", "#", "$SYS",
])
def test_invalid_device_ids(device_id: str) -> None:
    with pytest.raises(IdentityError):
        pki.check_device_id(device_id)


@pytest.mark.parametrize("device_id", ["a", "A" * 64, "dev-1.a_b", "0abc", "9"])
def test_valid_device_ids(device_id: str) -> None:
    assert pki.check_device_id(device_id) == device_id


def test_service_names_follow_the_same_rule() -> None:
    assert pki.check_service_name("telemetry-ingest") == "telemetry-ingest"
    with pytest.raises(IdentityError, match="invalid service name"):
        pki.check_service_name("../etc")


@given(name=st.from_regex(pki.DEVICE_ID_PATTERN, fullmatch=True),
       kind=st.sampled_from(["device", "service"]))
@settings(max_examples=100)
def test_spiffe_uri_roundtrip(name: str, kind: str) -> None:
    identity = Identity(kind, name)  # type: ignore[arg-type]
    uri = identity.spiffe_uri("fleet.local")
    assert uri == f"spiffe://fleet.local/{kind}/{name}"
    assert parse_spiffe_uri(uri, "fleet.local") == identity


@pytest.mark.parametrize(("uri", "message"), [
    pytest.param("spiffe://other.local/device/dev-1", "trust domain", id="other-trust-domain"),
    pytest.param("spiffe://fleet.local.evil/device/dev-1", "trust domain", id="suffixed-domain"),
    pytest.param("spiffe://fleet.local/user/dev-1", "neither", id="unknown-kind"),
    pytest.param("spiffe://fleet.local/device", "neither", id="no-name"),
    pytest.param("spiffe://fleet.local/device/", "invalid device id", id="empty-name"),
    pytest.param("spiffe://fleet.local/device/a/b", "invalid device id", id="nested"),
    pytest.param("https://fleet.local/device/dev-1", "trust domain", id="other-scheme"),
])
def test_parse_spiffe_uri_refusals(uri: str, message: str) -> None:
    with pytest.raises(IdentityError, match=message):
        parse_spiffe_uri(uri, "fleet.local")


def test_identity_str() -> None:
    assert str(Identity("device", "dev-1")) == "device/dev-1"
