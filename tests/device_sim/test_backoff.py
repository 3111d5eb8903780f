"""Reconnect backoff: exponential ceiling, full jitter, reset after success."""

from __future__ import annotations

import random

import pytest

from device_sim.backoff import Backoff, jittered


def test_ceiling_doubles_up_to_the_maximum() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, rng=random.Random(1))
    ceilings = []
    for _ in range(6):
        ceilings.append(backoff.ceiling())
        backoff.next_delay()
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_every_delay_stays_within_zero_and_the_ceiling() -> None:
    backoff = Backoff(initial=0.5, maximum=8.0, rng=random.Random(7))
    for _ in range(200):
        ceiling = backoff.ceiling()
        assert 0 <= backoff.next_delay() <= ceiling


def test_jitter_spreads_a_fleet_that_failed_together() -> None:
    delays = [Backoff(initial=1.0, maximum=30.0, rng=random.Random(seed)) for seed in range(100)]
    for backoff in delays:
        for _ in range(4):
            backoff.next_delay()
    fifth = sorted(b.next_delay() for b in delays)
    assert fifth[-1] - fifth[0] > 8  # not one synchronized wave
    assert len({round(d, 3) for d in fifth}) > 90


def test_reset_starts_from_the_smallest_window_again() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, rng=random.Random(3))
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.ceiling() == 0.5
    assert backoff.next_delay() <= 0.5


def test_same_seed_same_delays() -> None:
    a = Backoff(rng=random.Random(42))
    b = Backoff(rng=random.Random(42))
    assert [a.next_delay() for _ in range(5)] == [b.next_delay() for _ in range(5)]


@pytest.mark.parametrize(("initial", "maximum", "factor"), [(0, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_invalid_backoff_refused(initial: float, maximum: float, factor: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial=initial, maximum=maximum, factor=factor)


def test_jittered_stays_within_the_spread() -> None:
    rng = random.Random(5)
    values = [jittered(10.0, 0.1, rng) for _ in range(500)]
    assert min(values) >= 9.0
    assert max(values) <= 11.0
    assert max(values) - min(values) > 1.5
