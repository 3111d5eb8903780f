"""Contract test of `fleet export emqx`: the HOCON EMQX 5 reads (listener, authenticator and
authorizer, as in https://docs.emqx.com/en/emqx/latest/access-control/authn/http.html,
https://docs.emqx.com/en/emqx/latest/access-control/authz/http.html and the ssl listener of
https://docs.emqx.com/en/emqx/latest/network/emqx-mqtt-tls.html), and the service certificate
it writes, which the real provisioning service admits."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

from est_support import Enrolled, Est
from typer.testing import CliRunner

from fleet import pki
from fleet.cli.app import app
from fleet.integrations import emqx


def export(est: Est, out: Path, *args: str) -> str:
    result = CliRunner().invoke(app, ["--data-dir", str(est.settings.data_dir), "export",
                                      "emqx", "--out", str(out), *args])
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def render(template: dict[str, str], values: dict[str, str]) -> dict[str, str]:
    """What EMQX sends for a body template: each ${name} replaced by its value."""
    return {key: re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], value)
            for key, value in template.items()}


def test_emqx_contract_export_writes_the_configuration_and_a_working_service_certificate(
        est: Est, tmp_path: Path) -> None:
    device = est.device("d1")
    out = tmp_path / "emqx"
    url = f"https://localhost:{est.port}"
    export(est, out, "--fleet-url", url, "--port", "18883")
    conf = (out / "emqx.conf").read_text()
    for line in ('bind = "127.0.0.1:18883"', "verify = verify_peer",
                 "fail_if_no_peer_cert = true", "mqtt.peer_cert_as_username = cn",
                 "mechanism = password_based", "backend = http", "type = http",
                 "no_match = deny", f'url = "{url}/emqx/authn"', f'url = "{url}/emqx/authz"',
                 f'certfile = "{out}/emqx.pem"', f'keyfile = "{out}/emqx.key"',
                 f'cacertfile = "{out}/ca.pem"', 'clientid = "${clientid}"',
                 'cert_common_name = "${cert_common_name}"', 'topic = "${topic}"',
                 'action = "${action}"', "listeners.tcp.default.enable = false"):
        assert line in conf, line
    assert conf.count("{") == conf.count("}")
    assert stat.S_IMODE((out / "emqx.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "server.key").stat().st_mode) == 0o600
    certificate = pki.load_certificate((out / "emqx.pem").read_bytes())
    assert pki.identity_from_certificate(certificate, est.settings.trust_domain) == \
        pki.Identity("service", "emqx")

    # EMQX, presenting the exported certificate, asks with the exported body template.
    caller = Enrolled("emqx", pki.load_private_key_pem((out / "emqx.key").read_bytes()),
                      certificate, tmp_path)
    body = render(emqx.AUTHN_BODY, {"clientid": "d1", "username": "d1",
                                    "cert_common_name": "d1", "cert_subject": "CN=d1,O=Fleet",
                                    "peerhost": "192.0.2.1"})
    reply = est.request("POST", "/emqx/authn", json.dumps(body).encode(),
                        {"Content-Type": "application/json"}, device=caller)
    assert reply.status == 200, reply.text
    result = json.loads(reply.body)
    assert result["result"] == "allow"
    assert result["expire_at"] == int(device.certificate.not_valid_after_utc.timestamp())


def test_emqx_contract_export_refuses_a_plain_http_fleet_url(est: Est, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--data-dir", str(est.settings.data_dir), "export",
                                      "emqx", "--out", str(tmp_path / "x"), "--fleet-url",
                                      "http://localhost:8443"])
    assert result.exit_code != 0
    assert "https://" in result.stderr
    assert not (tmp_path / "x").exists()
