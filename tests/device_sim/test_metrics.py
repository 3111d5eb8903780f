"""Report statistics: percentiles, summaries, per-second series, merging."""

from __future__ import annotations

import pytest

from device_sim.metrics import (
    MAX_ERRORS_KEPT,
    MAX_ERRORS_KEPT_PER_KIND,
    Metrics,
    percentile,
    spans_cover,
    summary,
)


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile(values, 75) == pytest.approx(3.25)


def test_percentile_ignores_input_order() -> None:
    assert percentile([9, 1, 5, 3, 7], 50) == 5.0


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([42.0], 99) == 42.0


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None


def test_p99_of_a_hundred_samples_sits_near_the_top() -> None:
    values = list(range(1, 101))
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 95) == pytest.approx(95.05)


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_out_of_range_refused(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], q)


def test_summary_has_the_report_keys() -> None:
    stats = summary([100.0, 200.0, 300.0])
    assert stats == {"p50": 200.0, "p95": 290.0, "p99": 298.0, "max": 300.0, "count": 3}
    assert summary([]) == {"p50": None, "p95": None, "p99": None, "max": None, "count": 0}


def test_events_are_counted_per_second() -> None:
    metrics = Metrics()
    for t in (0.1, 0.9, 1.5, 3.2):
        metrics.event("telemetry_sent", t)
    assert metrics.counters["telemetry_sent"] == 4
    assert metrics.rate_series("telemetry_sent", 5) == [2, 1, 0, 1, 0]


def test_errors_are_counted_even_beyond_what_is_kept() -> None:
    metrics = Metrics()
    for i in range(MAX_ERRORS_KEPT + 5):
        metrics.error(float(i), f"kind-{i % 10}", f"d{i}", "lost")
    assert metrics.unexpected_errors == MAX_ERRORS_KEPT + 5
    assert len(metrics.errors) == MAX_ERRORS_KEPT


def test_every_kind_of_error_keeps_a_few_examples() -> None:
    metrics = Metrics()
    for i in range(MAX_ERRORS_KEPT):
        metrics.error(float(i), "renewal-failed", f"d{i}", "closed")
    metrics.error(1.0, "command-lost", "d1", "never arrived")
    assert sum(1 for e in metrics.errors if e.kind == "renewal-failed") == \
        MAX_ERRORS_KEPT_PER_KIND
    assert any(e.kind == "command-lost" for e in metrics.errors)


def test_spans_cover() -> None:
    spans = [(1.0, 3.0), (5.0, None)]
    assert spans_cover(spans, 2.0, 2.5)
    assert spans_cover(spans, 0.0, 1.0)
    assert not spans_cover(spans, 3.5, 4.5)
    assert spans_cover(spans, 10.0, 20.0)  # still open
    assert not spans_cover(spans, 4.0, 3.0)  # empty interval
