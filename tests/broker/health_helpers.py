"""Reading a service's /metrics (and the broker's /healthz) over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

TIMEOUT = 5.0


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of ``GET http://127.0.0.1:<port><path>``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=TIMEOUT) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    status, _, body = get(port, "/healthz")
    report: dict[str, Any] = json.loads(body)
    return status, report


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by name and sorted labels."""
    status, _, body = get(port, "/metrics")
    assert status == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples}


def metric(port: int, name: str, **labels: str) -> float:
    """The sum of the samples of *name* that carry *labels* (and any others); 0 when the
    service has counted none yet."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in metrics(port).items()
               if sample == name and wanted <= set(have))


def total(port: int, name: str) -> float:
    """The sum of a counter over all its labels."""
    return sum(value for (sample, _), value in metrics(port).items() if sample == name)
