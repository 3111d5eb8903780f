"""What a run measures: counters, latency samples, per-second series and errors.

Times are seconds since the start of the run; one process keeps one :class:`Metrics`. Device
side: nothing from Fleet.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_ERRORS_KEPT = 200
MAX_ERRORS_KEPT_PER_KIND = 40


def percentile(values: Sequence[float], q: float) -> float | None:
    """The *q*-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError("percentile must be between 0 and 100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(ordered[low])
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def summary(values: Sequence[float]) -> dict[str, float | None]:
    """``{p50, p95, p99, max, count}`` rounded to 0.1 (``None`` when there are no values)."""

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "p50": rounded(percentile(values, 50)),
        "p95": rounded(percentile(values, 95)),
        "p99": rounded(percentile(values, 99)),
        "max": rounded(max(values) if values else None),
        "count": len(values),
    }


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """Something that went wrong and was not expected by the scenario."""

    t: float
    kind: str
    device_id: str | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "kind": self.kind, "device_id": self.device_id,
                "detail": self.detail}


@dataclass
class Metrics:
    """Counters, latency samples ``(t, ms)``, per-second event counts and unexpected errors."""

    counters: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    per_second: dict[str, Counter[int]] = field(default_factory=dict)
    errors: list[ErrorRecord] = field(default_factory=list)
    errors_by_kind: Counter[str] = field(default_factory=Counter)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def event(self, name: str, t: float, n: int = 1) -> None:
        """Count *name* and remember in which second of the run it happened."""
        self.counters[name] += n
        self.per_second.setdefault(name, Counter())[int(t)] += n

    def sample(self, name: str, t: float, milliseconds: float) -> None:
        self.samples.setdefault(name, []).append((t, milliseconds))

    def values(self, name: str) -> list[float]:
        return [value for _, value in self.samples.get(name, ())]

    def error(self, t: float, kind: str, device_id: str | None, detail: str) -> None:
        """Record an unexpected error; the first few of each kind are kept in full."""
        self.errors_by_kind[kind] += 1
        if len(self.errors) < MAX_ERRORS_KEPT and \
                self.errors_by_kind[kind] <= MAX_ERRORS_KEPT_PER_KIND:
            self.errors.append(ErrorRecord(t, kind, device_id, detail[:500]))

    @property
    def unexpected_errors(self) -> int:
        return sum(self.errors_by_kind.values())

    def rate_series(self, name: str, seconds: int) -> list[int]:
        """Events of *name* in each second ``0 .. seconds-1``."""
        counts = self.per_second.get(name, Counter())
        return [counts.get(second, 0) for second in range(seconds)]


def spans_cover(spans: Iterable[tuple[float, float | None]], start: float, end: float) -> bool:
    """Does any span ``(begin, end or None for "still open")`` overlap ``[start, end]``?"""
    if end < start:
        return False
    return any(begin <= end and (finish is None or finish >= start) for begin, finish in spans)
