"""Wire format as real EST clients need it (RFC 8951 section 3, est-wire notes)."""

from __future__ import annotations

import base64
import http.client
import socket
import ssl

import pytest
from est_support import EST, Est, b64, baseline, expect_refusal, make_csr

from fleet import pki
from fleet.registry.engine import session as new_session
from fleet.registry.models import Device
from provisioning import wire

ENROLL = f"{EST}/simpleenroll"


def _enrolled(est: Est, device_id: str) -> bool:
    with new_session(est.engine) as session:
        return session.get(Device, device_id) is not None


def test_responses_are_base64_in_crlf_lines_of_64(est: Est) -> None:
    reply = est.enroll(make_csr("dev-lines"), est.token())
    assert reply.status == 200
    assert reply.headers["Content-Transfer-Encoding"] == "base64"
    lines = reply.body.split(b"\r\n")
    assert lines[-1] == b""
    assert all(0 < len(line) <= 64 for line in lines[:-1])
    assert len(reply.certificates()) == 1


@pytest.mark.parametrize("encoding", ["crlf-76", "crlf-64", "lf-64", "unwrapped",
                                      "spaces-and-tabs"])
@pytest.mark.parametrize("cte", [None, "base64"])
def test_enroll_accepts_base64_layouts_with_or_without_cte(
        est: Est, encoding: str, cte: str | None) -> None:
    device_id = f"dev-{encoding}-{cte}"
    der = make_csr(device_id)
    text = base64.b64encode(der)
    body = {
        "crlf-76": b64(der, width=76),
        "crlf-64": b64(der),
        "lf-64": b64(der, newline=b"\n"),
        "unwrapped": text,
        "spaces-and-tabs": b" \t".join(text[i:i + 10] for i in range(0, len(text), 10)),
    }[encoding]
    headers = {"Content-Type": "application/pkcs10"}
    if cte:
        headers["Content-Transfer-Encoding"] = cte
    reply = est.enroll(body, est.token(), headers=headers, encode=False)
    assert reply.status == 200, reply.text
    assert _enrolled(est, device_id)


def test_enroll_accepts_content_type_parameters(est: Est) -> None:
    reply = est.enroll(make_csr("dev-param"), est.token(),
                       headers={"Content-Type": "Application/PKCS10; charset=us-ascii"})
    assert reply.status == 200, reply.text


def test_enroll_accepts_a_pem_body(est: Est) -> None:
    der = make_csr("dev-pem")
    pem = (b"-----BEGIN CERTIFICATE REQUEST-----\n" + b64(der, newline=b"\n")
           + b"-----END CERTIFICATE REQUEST-----\n")
    assert est.enroll(pem, est.token(), encode=False).status == 200


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded",
                                          "application/pkcs7-mime", "text/plain"])
def test_enroll_refused_wrong_content_type_415(est: Est, content_type: str | None) -> None:
    token = est.token()
    before = baseline(est, "enroll")
    headers = {} if content_type is None else {"Content-Type": content_type}
    reply = est.enroll(make_csr("dev-415"), token, headers=headers)
    expect_refusal(est, reply, 415, before, says="application/pkcs10")


def test_reenroll_refused_wrong_content_type_415(est: Est) -> None:
    device = est.device("dev-415r")
    before = baseline(est, "reenroll")
    reply = est.request("POST", f"{EST}/simplereenroll", b64(make_csr("dev-415r", device.key)),
                        {"Content-Type": "text/plain"}, device=device)
    event = expect_refusal(est, reply, 415, before)
    assert event.serial == format(device.certificate.serial_number, "x")


def test_enroll_refused_oversized_body_413(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_MAX_BODY_BYTES="1024")  # type: ignore[operator]
    token = est.token()
    big = make_csr("dev-big", pki.generate_private_key("rsa3072"))  # ~1.3 kB base64 of DER
    before = baseline(est, "enroll")
    reply = est.enroll(big, token)
    expect_refusal(est, reply, 413, before, says="1024 bytes")


def test_enroll_refused_oversized_chunked_body_413(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_MAX_BODY_BYTES="1024")  # type: ignore[operator]
    token = est.token()
    before = baseline(est, "enroll")
    context = ssl.create_default_context(cafile=str(est.ca_file))
    connection = http.client.HTTPSConnection("localhost", est.port, context=context, timeout=30)
    auth = base64.b64encode(f":{token}".encode()).decode()
    chunks = iter([b"A" * 600, b"A" * 600, b"A" * 600])
    connection.request("POST", ENROLL, body=chunks, encode_chunked=True,
                       headers={"Content-Type": "application/pkcs10",
                                "Authorization": f"Basic {auth}",
                                "Transfer-Encoding": "chunked"})
    response = connection.getresponse()
    reply_status, reply_text = response.status, response.read().decode()
    connection.close()
    assert reply_status == 413, reply_text
    assert est.snapshot() == before.state
    est.record_refusals()
    assert len(est.refusals("enroll")) == before.refusals + 1


def test_enroll_refused_declared_oversized_body_without_reading_it(make_est: object) -> None:
    est: Est = make_est(FLEET_EST_MAX_BODY_BYTES="1024")  # type: ignore[operator]
    token = est.token()
    context = ssl.create_default_context(cafile=str(est.ca_file))
    with socket.create_connection(("127.0.0.1", est.port)) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        auth = base64.b64encode(f":{token}".encode()).decode()
        tls.sendall((f"POST {ENROLL} HTTP/1.1\r\nHost: localhost\r\n"
                     "Content-Type: application/pkcs10\r\n"
                     f"Authorization: Basic {auth}\r\nContent-Length: 100000000\r\n\r\n").encode())
        head = tls.recv(4096)
    assert head.startswith(b"HTTP/1.1 413")


def test_csrattrs_body_decodes_to_the_advertised_attributes(est: Est) -> None:
    reply = est.get(f"{EST}/csrattrs")
    assert pki.decode_base64(reply.body) == wire.csr_attributes()
