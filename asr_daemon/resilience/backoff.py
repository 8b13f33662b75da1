"""Reconnect delays and the retry budget."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, initial * 2**n))."""

    def __init__(self, initial: float, cap: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * (2**self.attempt))
        self.attempt += 1
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class RetryBudget:
    """Counts failures without progress; progress (a final result) gives the budget back."""

    def __init__(self, max_failures: int) -> None:
        self.max_failures = max_failures
        self.failures = 0

    def fail(self) -> bool:
        """Record a failure; False when the budget is spent."""
        self.failures += 1
        return self.failures < self.max_failures

    def progress(self) -> None:
        self.failures = 0
