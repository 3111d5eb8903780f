"""The picture: round axis ticks and well-formed, self-contained SVG."""

from __future__ import annotations

from xml.etree import ElementTree

import pytest

from device_sim.chart import Series, nice_ceiling, svg_chart


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
