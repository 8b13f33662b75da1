"""The tunables of reconnection and dead-link detection, with their reasons."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from ..settings import ResilienceSettings


@dataclass(frozen=True)
class ResiliencePolicy:
    # Reconnect delays: full jitter over an exponential ceiling (250 ms doubling to 5 s).
    backoff_initial: float = 0.25
    backoff_max: float = 5.0
    # Failed attempts in a row without a final result before the utterance is given up.
    max_failures: int = 4
    # A vendor that owes us an answer (after the end of audio, or a handshake) and sends nothing for this
    # long is treated as a dead link; where the vendor answers WebSocket pings they detect it in the same bound.
    response_timeout: float = 5.0
    # Where pings are on: one every ping_interval, dead when unanswered for ping_timeout (≤ 4 s in all).
    ping_interval: float = 1.5
    ping_timeout: float = 2.5
    # Unacknowledged TCP data (a path gone dark while we send) kills the socket after this long.
    tcp_user_timeout: float = 5.0

    @classmethod
    def from_settings(cls, settings: ResilienceSettings) -> Self:
        """The policy the ``resilience:`` section configures (the TCP timeout keeps its default)."""
        return cls(**settings.model_dump())


DEFAULT_POLICY = ResiliencePolicy()
