"""The open-files limit is raised at start and the connection caps fit into it."""

from __future__ import annotations

import resource
import subprocess
import sys

from fleet.descriptors import RESERVE, fit_connections
from fleet.settings import Settings


def test_caps_lowered_in_proportion_to_fit_the_limit(settings: Settings) -> None:
    fitted = fit_connections(settings, services=("est", "broker"), limit=256)
    assert fitted.est_max_connections + fitted.max_connections <= 256 - RESERVE
    assert fitted.max_connections > fitted.est_max_connections > 0  # 20000 : 4096
    assert fitted.max_pending_connections == settings.max_pending_connections


def test_caps_that_fit_are_kept(settings: Settings) -> None:
    assert fit_connections(settings, services=("broker",), limit=1_000_000) is settings


def test_only_the_named_service_is_fitted(settings: Settings) -> None:
    fitted = fit_connections(settings, services=("est",), limit=1024)
    assert fitted.est_max_connections == 1024 - RESERVE
    assert fitted.max_connections == settings.max_connections


def test_soft_limit_raised_to_the_hard_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = min(hard, 4096)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, ceiling))

    output = subprocess.run(
        [sys.executable, "-c", "from fleet.descriptors import raise_open_files_limit as r; "
                               "print(r())"],
        preexec_fn=lower, capture_output=True, text=True, check=True).stdout
    assert int(output) == ceiling
