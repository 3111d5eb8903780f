"""The picture: round axis ticks and well-formed, self-contained SVG."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree

import pytest

from device_sim.chart import COLORS, MARK_COLOR, Series, nice_ceiling, render_html, svg_chart


@pytest.mark.parametrize(("value", "ceiling"), [(0, 1.0), (0.7, 1.0), (3, 5.0), (210, 250.0),
                                                (262.5, 500.0), (1000, 1000.0), (1001, 2000.0)])
def test_nice_ceiling(value: float, ceiling: float) -> None:
    assert nice_ceiling(value) == ceiling


def test_chart_is_well_formed_svg_with_round_ticks() -> None:
    html = svg_chart("Connected devices", [Series("online", [(1, 0), (2, 400), (3, 1000)],
                                                  "#2b6cb0")],
                     x_max=3, y_label="devices", bands=[(1.5, 2.0)], marks=[2.5])
    svg = html[html.index("<svg"):html.index("</svg>") + len("</svg>")]
    root = ElementTree.fromstring(svg)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert {"0", "500", "1000"} <= set(texts)
    assert "online" in texts
    assert root.find("{http://www.w3.org/2000/svg}polyline") is not None
    assert "<script" not in html
    assert "href" not in html


def test_empty_chart_still_renders() -> None:
    html = svg_chart("Latency", [Series("renewal", [], "#dd6b20", dots=True)], x_max=0,
                     y_label="ms")
    ElementTree.fromstring(html[html.index("<svg"):html.index("</svg>") + len("</svg>")])


SVG = "{http://www.w3.org/2000/svg}"


def report(*, restarts: list[list[float]], revocations: list[list[float]],
           renewals: list[list[float]]) -> dict[str, Any]:
    """A report as build_report makes it, with the events given."""
    return {
        "run_id": "abc123", "started_at": "2030-01-01T00:00:00Z", "elapsed_s": 30.0, "ok": True,
        "devices": 3, "enrolled": 3, "connected": 3, "messages_sent": 10,
        "messages_received": 10, "renewals_ok": len(renewals), "renewals_failed": 0,
        "revoked": len(revocations),
        "revocation_latency_ms": {"p50": 90, "p95": 110, "p99": 120},
        "misbehaving": 0, "misbehaving_refused": 0, "unexpected_errors": 0,
        "expectations": [], "notes": [],
        "timeseries": {
            "online": [1, 2, 3], "sent_per_s": [1, 2], "received_per_s": [1, 2],
            "enroll_latency": [[1.0, 900.0], [1.5, 1400.0]], "renewal_latency": renewals,
            "revocation_latency": [[at + 0.1, ms] for at, ms in revocations],
            "revocations_at": [at for at, _ in revocations], "restarts": restarts,
        },
    }


def latency_chart(page: str) -> ElementTree.Element:
    chunk = page.split("<figure>")[3]  # connected, messages, latency
    return ElementTree.fromstring(chunk[chunk.index("<svg"):chunk.index("</svg>") + 6])


def test_legend_names_only_what_happened() -> None:
    page = render_html(report(restarts=[], revocations=[], renewals=[]))
    assert "broker restart" not in page
    assert "revocations." not in page
    legend = [t.text for t in latency_chart(page).iter(f"{SVG}text")
              if t.get("class") == "legend"]
    assert legend == ["enrollment"]


def test_legend_names_a_restart_and_revocations_that_happened() -> None:
    page = render_html(report(restarts=[[10.0, 12.0]], revocations=[[20.0, 95.0]],
                              renewals=[[15.0, 300.0]]))
    assert "Shaded: broker restart." in page
    assert "Dashed red lines: revocations." in page
    legend = [t.text for t in latency_chart(page).iter(f"{SVG}text")
              if t.get("class") == "legend"]
    assert legend == ["enrollment", "renewal", "revocation (device sees the drop)"]


def test_revocation_dots_are_drawn_over_their_lines_and_stand_out() -> None:
    page = render_html(report(restarts=[], revocations=[[20.0, 95.0], [21.0, 130.0]],
                              renewals=[]))
    chart = latency_chart(page)
    elements = list(chart.iter())
    marks = [i for i, e in enumerate(elements)
             if e.tag == f"{SVG}line" and e.get("stroke-dasharray")]
    dots = [i for i, e in enumerate(elements)
            if e.tag == f"{SVG}circle" and e.get("fill") == COLORS["revocation"]]
    assert len(marks) == 2
    assert len(dots) == 2
    assert min(dots) > max(marks)  # on top
    assert {elements[i].get("stroke") for i in marks} == {MARK_COLOR}
    assert COLORS["revocation"] != MARK_COLOR
