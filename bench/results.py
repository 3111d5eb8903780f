"""Figures of one run and the Markdown page they become (bench/RESULTS.md).

A figure is a list of values, one per repeat; a table shows each as median (min-max) and the
ratio of Fleet's median to the peer's median of the same run.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Table:
    title: str
    systems: list[str]
    ratios: list[tuple[str, str]]
    """(numerator, denominator) system pairs shown as ratio columns."""
    intro: str = ""
    rows: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, row: str, system: str, value: float, fmt: str = "{:.1f}") -> None:
        self.rows.setdefault(row, {}).setdefault(system, []).append(value)
        self.formats[row] = fmt

    def median(self, row: str, system: str) -> float:
        values = self.rows.get(row, {}).get(system, [])
        return statistics.median(values) if values else math.nan

    def ratio(self, row: str, numerator: str, denominator: str) -> float:
        peer = self.median(row, denominator)
        return self.median(row, numerator) / peer if peer else math.nan

    def markdown(self) -> list[str]:
        head = ["figure", *self.systems, *(f"{a} / {b}" for a, b in self.ratios)]
        lines = [f"### {self.title}", ""]
        if self.intro:
            lines += [self.intro, ""]
        lines += ["| " + " | ".join(head) + " |",
                  "|---|" + "---:|" * (len(head) - 1)]
        for row, cells in self.rows.items():
            fmt = self.formats[row]
            values = [_cell(cells.get(system, []), fmt) for system in self.systems]
            ratios = [_ratio(self.ratio(row, a, b)) for a, b in self.ratios]
            lines.append("| " + " | ".join([row, *values, *ratios]) + " |")
        lines.append("")
        if self.notes:
            lines += [*self.notes, ""]
        return lines


def _cell(values: list[float], fmt: str) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "-"
    middle = fmt.format(statistics.median(finite))
    if len(finite) == 1:
        return middle
    return f"{middle} ({fmt.format(min(finite))}-{fmt.format(max(finite))})"


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


@dataclass(frozen=True)
class Target:
    what: str
    measured: Callable[[], float]
    bound: float
    at_most: bool
    unit: str = "x"

    def line(self) -> str:
        value = self.measured()
        if math.isnan(value):
            return f"| {self.what} | {self._bound()} | - | not measured |"
        met = value <= self.bound if self.at_most else value >= self.bound
        return (f"| {self.what} | {self._bound()} | {value:.2f}{self.unit} "
                f"| {'met' if met else 'not met'} |")

    def _bound(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.bound:g}{self.unit}"


def targets_markdown(targets: list[Target]) -> list[str]:
    return ["| target | bound | this run | |", "|---|---:|---:|---|",
            *(t.line() for t in targets), ""]
