"""Pacing: never send audio faster than a vendor accepts (replayed audio would otherwise burst)."""

from __future__ import annotations

import time


class Pacer:
    """Allows ``speed`` × real time after an initial burst of ``burst_seconds``."""

    def __init__(self, bytes_per_second: int, speed: float | None, burst_seconds: float = 1.0) -> None:
        self.rate = bytes_per_second * speed if speed else None
        self.burst = bytes_per_second * burst_seconds
        self.started = time.monotonic()
        self.sent = 0

    def delay_for(self, size: int) -> float:
        """Seconds to wait before sending ``size`` more bytes."""
        if self.rate is None:
            return 0.0
        allowed_at = self.started + (self.sent + size - self.burst) / self.rate
        return max(0.0, allowed_at - time.monotonic())

    def sent_bytes(self, size: int) -> None:
        self.sent += size
