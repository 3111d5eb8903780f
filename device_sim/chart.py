"""The picture of a run: one self-contained HTML page with inline SVG charts (no network; from
the run's own measurements, nothing from Fleet)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

WIDTH, HEIGHT = 880, 230
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 14, 34
COLORS = {"online": "#2b6cb0", "sent": "#2f855a", "received": "#dd6b20",
          "enrollment": "#2b6cb0", "renewal": "#dd6b20", "revocation": "#c53030"}
MARK_COLOR = "#feb2b2"
"""The dashed line at each revocation: lighter than the revocation dots drawn on it."""

Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    points: Sequence[Point]
    color: str
    dots: bool = False


def nice_ceiling(value: float) -> float:
    """A round number at or above *value* for the top of an axis."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(10 * magnitude)


def svg_chart(title: str, series: Sequence[Series], *, x_max: float, y_label: str,
              bands: Sequence[tuple[float, float]] = (), marks: Sequence[float] = ()) -> str:
    """A line/dot chart with axes, grid, shaded *bands* and vertical *marks*; the legend
    names the series that have points."""
    x_max = max(x_max, 1.0)
    y_step = nice_ceiling(max((y for s in series for _, y in s.points), default=0.0) * 1.05 / 4)
    y_max = y_step * max(1, math.ceil(
        max((y for s in series for _, y in s.points), default=0.0) * 1.05 / y_step))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(value: float) -> float:
        return LEFT + plot_w * min(max(value, 0.0), x_max) / x_max

    def y(value: float) -> float:
        return TOP + plot_h * (1 - min(max(value, 0.0), y_max) / y_max)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'role="img" aria-label="{html.escape(title)}">']
    for begin, end in bands:
        parts.append(f'<rect x="{x(begin):.1f}" y="{TOP}" width="{max(x(end) - x(begin), 2):.1f}"'
                     f' height="{plot_h}" fill="#edf2f7"><title>broker restart</title></rect>')
    for tick in range(round(y_max / y_step) + 1):
        value = y_step * tick
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" '
                     f'y2="{y(value):.1f}" stroke="#e2e8f0"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" '
                     f'class="tick">{_fmt(value)}</text>')
    x_step = nice_ceiling(x_max / 8)
    tick_x = 0.0
    while tick_x <= x_max + 1e-9:
        parts.append(f'<text x="{x(tick_x):.1f}" y="{HEIGHT - BOTTOM + 16}" '
                     f'text-anchor="middle" class="tick">{_fmt(tick_x)}</text>')
        tick_x += x_step
    parts.append(f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 4}" text-anchor="end" '
                 f'class="tick">seconds</text>')
    parts.append(f'<text x="14" y="{TOP + plot_h / 2:.1f}" class="tick" text-anchor="middle" '
                 f'transform="rotate(-90 14 {TOP + plot_h / 2:.1f})">{html.escape(y_label)}</text>')
    for mark in marks:
        parts.append(f'<line x1="{x(mark):.1f}" x2="{x(mark):.1f}" y1="{TOP}" '
                     f'y2="{TOP + plot_h}" stroke="{MARK_COLOR}" stroke-dasharray="4 3">'
                     f'<title>revocation at {mark:g} s</title></line>')
    for item in series:
        if item.dots:
            parts.extend(f'<circle cx="{x(px):.1f}" cy="{y(py):.1f}" r="2.5" '
                         f'fill="{item.color}" fill-opacity="0.8" stroke="#fff" '
                         'stroke-width="0.6"/>' for px, py in item.points)
        elif item.points:
            path = " ".join(f"{x(px):.1f},{y(py):.1f}" for px, py in item.points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{item.color}" '
                         'stroke-width="1.6"/>')
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
                 'stroke="#a0aec0"/>')
    legend_x = LEFT + 8
    for item in (s for s in series if s.points):
        parts.append(f'<rect x="{legend_x}" y="{TOP + 6}" width="10" height="10" '
                     f'fill="{item.color}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="{TOP + 15}" class="legend">'
                     f'{html.escape(item.name)}</text>')
        legend_x += 24 + 7 * len(item.name)
    parts.append("</svg>")
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{''.join(parts)}</figure>"


def _fmt(value: float) -> str:
    if value >= 10000:
        return f"{value / 1000:g}k"
    return f"{value:g}" if value == int(value) else f"{value:.1f}"


def _key(bands: Sequence[object], marks: Sequence[object]) -> str:
    """What the shading and the dashed lines mean, for the ones the charts have."""
    key = [text for text, shown in (("Shaded: broker restart.", bands),
                                    ("Dashed red lines: revocations.", marks)) if shown]
    return "".join(f" {text}" for text in key)


def render_html(report: dict[str, Any]) -> str:
    """The whole page: headline figures, the three charts, expectations and notes."""
    ts = report["timeseries"]
    x_max = float(report["elapsed_s"])
    bands = [(begin, end if end is not None else begin) for begin, end in ts["restarts"]]
    marks = ts["revocations_at"]
    online = Series("online devices", [(i + 1, v) for i, v in enumerate(ts["online"])],
                    COLORS["online"])
    sent = Series("sent/s", [(i + 0.5, v) for i, v in enumerate(ts["sent_per_s"])],
                  COLORS["sent"])
    received = Series("received/s", [(i + 0.5, v) for i, v in enumerate(ts["received_per_s"])],
                      COLORS["received"])
    latency = [
        Series("enrollment", [(p[0], p[1]) for p in ts["enroll_latency"]],
               COLORS["enrollment"], dots=True),
        Series("renewal", [(p[0], p[1]) for p in ts["renewal_latency"]],
               COLORS["renewal"], dots=True),
        Series("revocation (device sees the drop)",
               [(p[0], p[1]) for p in ts["revocation_latency"]],
               COLORS["revocation"], dots=True),
    ]
    charts = [
        svg_chart("Connected devices", [online], x_max=x_max, y_label="devices", bands=bands,
                  marks=marks),
        svg_chart("Messages per second", [sent, received], x_max=x_max, y_label="messages/s",
                  bands=bands, marks=marks),
        svg_chart("Enrollment, renewal and revocation latency", latency, x_max=x_max,
                  y_label="ms", bands=bands, marks=marks),
    ]
    headline = [
        ("devices", report["devices"]), ("enrolled", report["enrolled"]),
        ("connected", report["connected"]), ("messages sent", report["messages_sent"]),
        ("messages received", report["messages_received"]),
        ("renewals ok", report["renewals_ok"]), ("renewals failed", report["renewals_failed"]),
        ("revoked", report["revoked"]),
        ("revocation p50 / p95 / p99 ms", " / ".join(
            str(report["revocation_latency_ms"][k]) for k in ("p50", "p95", "p99"))),
        ("misbehaving refused", f"{report['misbehaving_refused']} of {report['misbehaving']}"),
        ("unexpected errors", report["unexpected_errors"]),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in headline)
    checks = "".join(
        f'<li class="{"ok" if e["ok"] else "fail"}">{"ok" if e["ok"] else "FAIL"} '
        f'{html.escape(e["name"])}{(" (" + html.escape(e["detail"]) + ")") if e["detail"] else ""}'
        "</li>" for e in report["expectations"])
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report["notes"])
    verdict = "passed" if report["ok"] else "FAILED"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>fleet sim run {html.escape(report["run_id"])}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 920px;
       color: #1a202c; }}
h1 {{ font-size: 20px; }} figure {{ margin: 18px 0; }} figcaption {{ font-weight: 600; }}
table {{ border-collapse: collapse; }}
th {{ text-align: left; padding: 2px 16px 2px 0; font-weight: 500; }}
.tick {{ font-size: 11px; fill: #4a5568; }} .legend {{ font-size: 12px; fill: #2d3748; }}
.ok {{ color: #2f855a; }} .fail {{ color: #c53030; font-weight: 600; }}
</style></head><body>
<h1>fleet sim run {html.escape(report["run_id"])}: {verdict}</h1>
<p>Started {html.escape(report["started_at"])}, {report["elapsed_s"]} s.{_key(bands, marks)}</p>
<table>{rows}</table>
{"".join(charts)}
<h2>Expectations</h2><ul>{checks}</ul>
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
</body></html>
"""
