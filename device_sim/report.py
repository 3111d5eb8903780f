"""What a run tells people: a live progress bar, a summary table, a JSON report (from the
run's own measurements: nothing from Fleet)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from device_sim.metrics import summary
from device_sim.misbehave import MisbehavingDevice
from device_sim.runner import RECEIVED, SENT, RunResult, Snapshot, misbehaving_summary

REPORT_VERSION = 1
MAX_SCATTER_POINTS = 3000


def build_report(result: RunResult) -> dict[str, Any]:
    """The JSON report (every key documented in ``docs``/the CLI help is always present)."""
    m = result.metrics
    c = m.counters
    s = result.scenario
    good = [d for d in result.devices if not isinstance(d, MisbehavingDevice)]
    enrolled_times = [d.enrolled_at for d in good if d.enrolled_at is not None]
    online_times = [d.first_online_at for d in good if d.first_online_at is not None]
    seconds = max(1, math.ceil(result.elapsed))
    by_kind = misbehaving_summary(result.misbehaving)
    revoked = {d.id: d for d in good if d.revoked_at is not None}
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "run_id": result.run_id,
        "started_at": result.started_at,
        "elapsed_s": round(result.elapsed, 2),
        "ok": result.ok,
        "fatal": result.fatal,
        "devices": s.devices,
        "enrollment": {"path": "manufacturer-certificate", "vendor": result.vendor}
        if result.vendor is not None else {"path": "bootstrap-token", "vendor": None},
        "well_behaved": len(good),
        "misbehaving": len(result.misbehaving),
        "enrolled": sum(1 for d in result.devices if d.enrolled_at is not None),
        "connected": len(online_times),
        "online_at_end": result.online_series[-1] if result.online_series else 0,
        "peak_online": max(result.online_series, default=0),
        "time_to_enroll_all_s": _round(max(enrolled_times))
        if len(enrolled_times) == len(good) and good else None,
        "time_to_connect_all_s": _round(max(online_times))
        if len(online_times) == len(good) and good else None,
        "messages_sent": sum(c[k] for k in SENT),
        "messages_received": sum(c[k] for k in RECEIVED),
        "messages": {
            **{k: c[k] for k in SENT + RECEIVED},
            "commands_duplicate": c["commands_duplicate"],
            "commands_acknowledged": result.commands["acknowledged"],
            "commands_lost": result.commands["lost"],
            "commands_lost_allowed": result.commands["excused"],
            "telemetry_dropped_queue_full": c["telemetry_dropped_queue_full"],
        },
        "certificate_lifetime_s": _round(result.issued_lifetime),
        "renewals_ok": c["renewals_ok"],
        "renewals_failed": c["renewals_failed"],
        "renewal_retries": c["renewal_retries"],
        "revoked": len(result.revocations),
        "revocation_latency_ms": summary(m.values("revocation_latency")),
        "revocations": [
            {"device_id": r.device_id, "at_s": _round(r.at), "command_ms": _round(r.command_ms),
             **revoked[r.device_id].revocation} if r.device_id in revoked else
            {"device_id": r.device_id, "at_s": _round(r.at)}
            for r in result.revocations
        ],
        "enrollment_latency_ms": summary(m.values("enroll_latency")),
        "renewal_latency_ms": summary(m.values("renewal_latency")),
        "connect_latency_ms": summary(m.values("connect_latency")),
        "renewal_reconnect_ms": summary(m.values("renewal_reconnect")),
        "reconnects": max(0, c["connects"] - len(online_times)),
        "connect_retries": c["connect_retries"],
        "connect_retries_during_restart": c["connect_retries_restart"],
        "enroll_retries": c["enroll_retries"],
        "broker_restarts": [
            {"at_s": _round(w.begin),
             "down_s": _round(w.end - w.begin) if w.end is not None else None,
             "fleet_back_after_s": result.restart_recovery[i]
             if i < len(result.restart_recovery) else None}
            for i, w in enumerate(result.restarts)
        ],
        "misbehaving_refused": sum(v["refused"] for v in by_kind.values()),
        "misbehaving_admitted": sum(v["admitted"] for v in by_kind.values()),
        "misbehaving_skipped": sum(v["skipped"] for v in by_kind.values()),
        "misbehaving_by_kind": by_kind,
        "misbehaving_probes": [
            {"device_id": d.id, "kind": d.kind.value, "skipped": d.skipped,
             "probes": [{"action": p.action, "refused": p.refused, "detail": p.detail}
                        for p in d.probes]}
            for d in result.misbehaving
        ],
        "unexpected_errors": m.unexpected_errors,
        "errors_by_kind": dict(m.errors_by_kind),
        "errors": [e.as_dict() for e in m.errors],
        "expectations": [{"name": e.name, "ok": e.ok, "detail": e.detail}
                         for e in result.expectations],
        "notes": result.notes,
        "scenario": s.as_dict(),
        "endpoints": {"est_url": result.endpoints.est_url,
                      "mqtt": f"{result.endpoints.mqtt_host}:{result.endpoints.mqtt_port}"},
        "timeseries": {
            "online": result.online_series,
            "sent_per_s": [sum(col) for col in zip(*(m.rate_series(k, seconds) for k in SENT),
                                                   strict=True)],
            "received_per_s": [sum(col) for col in zip(
                *(m.rate_series(k, seconds) for k in RECEIVED), strict=True)],
            "enrolled_per_s": m.rate_series("enrolled", seconds),
            "renewals_per_s": m.rate_series("renewals_ok", seconds),
            "enroll_latency": _thin(m.samples.get("enroll_latency", [])),
            "renewal_latency": _thin(m.samples.get("renewal_latency", [])),
            "revocation_latency": _thin(m.samples.get("revocation_latency", [])),
            "revocations_at": [_round(r.at) for r in result.revocations],
            "restarts": [[_round(w.begin), _round(w.end)] for w in result.restarts],
        },
    }
    return report


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _thin(points: list[tuple[float, float]]) -> list[list[float]]:
    """At most MAX_SCATTER_POINTS points, evenly picked, as ``[t, ms]`` pairs."""
    step = max(1, math.ceil(len(points) / MAX_SCATTER_POINTS))
    return [[round(t, 2), round(ms, 1)] for t, ms in points[::step]]


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")


def print_summary(report: dict[str, Any], console: Console) -> None:
    """The table people read at the end of a run."""
    grid = Table(title=f"fleet sim run {report['run_id']}", title_justify="left",
                 show_header=False, box=None, pad_edge=False)
    grid.add_column("what", style="bold")
    grid.add_column("value")

    def ms(key: str) -> str:
        stats = report[key]
        if not stats["count"]:
            return "-"
        return (f"p50 {stats['p50']} / p95 {stats['p95']} / p99 {stats['p99']} ms "
                f"(n={stats['count']})")

    messages = report["messages"]
    rows = [
        ("devices", f"{report['devices']} ({report['misbehaving']} misbehaving)"),
        ("enrolled with", "manufacturer certificates of vendor "
         f"{report['enrollment']['vendor']} (no Authorization header)"
         if report["enrollment"]["vendor"] else "bootstrap tokens (HTTP Basic)"),
        ("enrolled / connected", f"{report['enrolled']} / {report['connected']}"),
        ("time to enroll / connect all",
         f"{_seconds(report['time_to_enroll_all_s'])} / "
         f"{_seconds(report['time_to_connect_all_s'])}"),
        ("enrollment latency", ms("enrollment_latency_ms")),
        ("certificate lifetime", _seconds(report["certificate_lifetime_s"])),
        ("renewals ok / failed", f"{report['renewals_ok']} / {report['renewals_failed']}"),
        ("renewal latency", ms("renewal_latency_ms")),
        ("messages sent / received",
         f"{report['messages_sent']} / {report['messages_received']}"),
        ("QoS 1 commands delivered / lost",
         f"{messages['commands_received']} / {messages['commands_lost']} "
         f"(+{messages['commands_lost_allowed']} not owed: broker restart, revocation or "
         "device offline)"),
        ("revoked", str(report["revoked"])),
        ("revocation latency", ms("revocation_latency_ms")),
        ("broker restarts", ", ".join(
            f"at {r['at_s']} s, fleet back after {_seconds(r['fleet_back_after_s'])}"
            for r in report["broker_restarts"]) or "-"),
        ("misbehaving refused",
         f"{report['misbehaving_refused']} of {report['misbehaving']}"
         + (f" ({report['misbehaving_skipped']} skipped)" if report["misbehaving_skipped"]
            else "")),
        ("unexpected errors", str(report["unexpected_errors"])),
    ]
    for name, value in rows:
        grid.add_row(name, value)
    console.print(grid)
    for expectation in report["expectations"]:
        mark = "[green]ok[/green]  " if expectation["ok"] else "[red]FAIL[/red]"
        detail = f" ({expectation['detail']})" if expectation["detail"] else ""
        console.print(f"{mark} {expectation['name']}{detail}", highlight=False)
    for note in report["notes"]:
        console.print(f"note: {note}", highlight=False, markup=False)
    if report["fatal"]:
        console.print(f"[red]error:[/red] {report['fatal']}", highlight=False)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 2 * 86400:
        return f"{value / 86400:.1f} d"
    if value >= 2 * 3600:
        return f"{value / 3600:.1f} h"
    return f"{value:g} s"


class LiveProgress:
    """A Rich progress display fed with :class:`Snapshot` once per second."""

    def __init__(self, console: Console, *, devices: int, duration: float) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<9}"), BarColumn(bar_width=30),
            MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            console=console, transient=False, refresh_per_second=4)
        self.time: TaskID = self.progress.add_task("time", total=round(duration), info="")
        self.enrolled = self.progress.add_task("enrolled", total=devices, info="")
        self.online = self.progress.add_task("online", total=devices, info="")
        self._last_sent = 0
        self._last_received = 0

    def __enter__(self) -> LiveProgress:
        self.progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.progress.stop()

    def __call__(self, snap: Snapshot) -> None:
        sent, received = snap.messages_sent - self._last_sent, \
            snap.messages_received - self._last_received
        self._last_sent, self._last_received = snap.messages_sent, snap.messages_received
        self.progress.update(self.time, completed=min(round(snap.t), round(snap.duration)),
                             info=snap.phase)
        self.progress.update(self.enrolled, completed=snap.enrolled,
                             info=f"renewals {snap.renewals_ok}")
        self.progress.update(
            self.online, completed=snap.online,
            info=f"{sent} sent/s {received} recv/s  revoked {snap.revoked}  "
                 f"errors {snap.errors}")
