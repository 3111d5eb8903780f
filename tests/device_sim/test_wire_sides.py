"""The simulated devices know Fleet only over the wire: no device-side module imports it.

A device built from Fleet's own PKI code would share Fleet's bugs (a CSR, a PKCS#7 or a PEM
read the same wrong way on both sides passes unseen). Only the modules named here act as the
operator or join the two sides; every other module of ``device_sim``, a new one too, is device
side.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

NOT_DEVICE_SIDE = {
    "operator": "the operator: tokens, revocations, clean-up through fleet.authority",
    "runner": "the run: catches the operator's Fleet errors",
    "scenario": "configuration: durations read with Fleet's settings parser",
}
SERVER = ("fleet", "provisioning")
PACKAGE = Path(__file__).resolve().parents[2] / "device_sim"
DEVICE_SIDE = sorted(path for path in PACKAGE.glob("*.py") if path.stem not in NOT_DEVICE_SIDE)


def server_imports(source: str) -> list[str]:
    """Every module of Fleet's server packages *source* imports, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [name for name in names if name.split(".")[0] in SERVER]
    return found


def test_the_import_check_sees_every_form() -> None:
    source = ("import fleet.pki\nfrom fleet import files\nimport provisioning.app as app\n"
              "def late():\n    from fleet.errors import PKIError\n"
              "from device_sim.crypto import build_csr\nimport fleetwood\n")
    assert server_imports(source) == ["fleet.pki", "fleet", "provisioning.app", "fleet.errors"]


def test_the_modules_that_may_use_fleet_exist() -> None:
    assert {path.stem for path in PACKAGE.glob("*.py")} >= set(NOT_DEVICE_SIDE)
    assert {"crypto", "credentials", "device", "est_client", "misbehave", "tls"} <= {
        path.stem for path in DEVICE_SIDE}


@pytest.mark.parametrize("path", DEVICE_SIDE, ids=lambda path: path.stem)
def test_device_side_module_does_not_import_fleet(path: Path) -> None:
    assert server_imports(path.read_text()) == []
