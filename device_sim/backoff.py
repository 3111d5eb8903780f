"""Exponential backoff with jitter, as devices use it to reconnect after a drop (device side:
nothing from Fleet)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """Delays whose ceiling doubles from *initial* up to *maximum*, drawn with "full jitter".

    Full jitter (a uniform draw between zero and the current ceiling) spreads a fleet that lost
    its broker at the same instant, so it does not come back at the same instant.
    """

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        if self.factor < 1:
            raise ValueError("backoff factor must be at least 1")

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return float(min(self.maximum, self.initial * self.factor ** min(self.attempt, 64)))

    def next_delay(self) -> float:
        """The next delay in seconds; each call widens the window until it reaches the maximum."""
        delay = self.rng.uniform(0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Call after a success: the next failure starts from the smallest window again."""
        self.attempt = 0


def jittered(value: float, spread: float, rng: random.Random) -> float:
    """*value* moved by a uniform fraction in [-spread, +spread] of itself."""
    return value * (1 + rng.uniform(-spread, spread))
