"""The audio budget: seconds of audio sent to paid vendors, per day for the whole daemon and per hour per client.

Kept in memory only: a restart gives every budget back. A window opens with the first second counted in it and
refills whole when its period is over. Audio is counted as sessions accept it, so an utterance that is running
shows in the budget at once; an utterance is admitted only while its budgets have something left, and an
admitted one is finished even if it crosses the limit (one utterance overshoots by at most its own length,
``limits.max_utterance_seconds``). Engines that are not ``paid`` (the offline ``local`` engine) are never counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Protocol

from .networks import address_in, parse_networks, peer_address

DAY = 86400.0
HOUR = 3600.0

# Client windows kept before expired ones are swept (each is a few floats; the sweep is O(n)).
_SWEEP_AT = 1024


class BudgetExhausted(Exception):
    """No audio budget left: the message says which budget and when it refills."""

    code = "budget-exhausted"

    def __init__(self, message: str, refills_in: float) -> None:
        super().__init__(message)
        self.message = message
        self.refills_in = refills_in


class Engine(Protocol):
    """What the budget needs to know of an engine (a vendor adapter): whether its audio costs money."""

    @property
    def paid(self) -> bool: ...


def describe_duration(seconds: float) -> str:
    """A wait in words a person reads: "2 h 5 min", "12 min", "40 s"."""
    whole = max(int(seconds + 0.999), 1)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


class _Window:
    """``limit`` seconds of audio per ``period``; the period starts with the first second counted."""

    __slots__ = ("limit", "opened", "period", "used")

    def __init__(self, limit: float, period: float) -> None:
        self.limit = limit
        self.period = period
        self.used = 0.0
        self.opened: float | None = None

    def _refresh(self, now: float) -> None:
        if self.opened is not None and now >= self.opened + self.period:
            self.opened, self.used = None, 0.0

    def spent(self, now: float) -> bool:
        self._refresh(now)
        # A millisecond's slack: the sum of many chunk lengths lands a hair under an exact limit.
        return self.used >= self.limit - 0.001

    def refills_in(self, now: float) -> float:
        return 0.0 if self.opened is None else max(self.opened + self.period - now, 0.0)

    def expired(self, now: float) -> bool:
        return self.opened is None or now >= self.opened + self.period

    def spend(self, seconds: float, now: float) -> None:
        self._refresh(now)
        if self.opened is None:
            self.opened = now
        self.used += seconds


class Charge:
    """What one admitted utterance spends through: ``charge(seconds)`` for each piece of audio accepted."""

    __slots__ = ("_clock", "_windows")

    def __init__(self, windows: tuple[_Window, ...], clock: Callable[[], float]) -> None:
        self._windows = windows
        self._clock = clock

    def __call__(self, seconds: float) -> None:
        now = self._clock()
        for window in self._windows:
            window.spend(seconds, now)


class AudioBudget:
    """The daemon's budgets (either may be off: ``None``); clients in ``exempt`` have no per-client budget."""

    def __init__(
        self,
        daily_seconds: float | None,
        per_client_hourly_seconds: float | None,
        exempt: Iterable[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._daily = _Window(daily_seconds, DAY) if daily_seconds is not None else None
        self._per_client = per_client_hourly_seconds
        self._exempt = parse_networks(exempt)
        self._clients: dict[str, _Window] = {}
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self._daily is not None or self._per_client is not None

    def used_today(self) -> float:
        """Seconds counted in the current daily window (0 when the budget is off)."""
        if self._daily is None:
            return 0.0
        self._daily.spent(self._clock())
        return self._daily.used

    def admit(self, engine: Engine, client: str | None = None) -> Charge | None:
        """A charge for a new utterance on ``engine`` from ``client`` (an IP address; None: not a network
        client), None when nothing is counted; raises ``BudgetExhausted`` when a budget is spent."""
        if not engine.paid or not self.enabled:
            return None
        now = self._clock()
        windows: list[_Window] = []
        for window, name in (
            (self._daily, "the daily audio budget ({limit:g} s for paid vendors)"),
            (self._client_window(client, now), f"the hourly audio budget of client {client} ({{limit:g}} s)"),
        ):
            if window is None:
                continue
            if window.spent(now):
                refills_in = window.refills_in(now)
                raise BudgetExhausted(
                    f"{name.format(limit=window.limit)} is spent; it refills in {describe_duration(refills_in)}",
                    refills_in,
                )
            windows.append(window)
        return Charge(tuple(windows), self._clock) if windows else None

    def _client_window(self, client: str | None, now: float) -> _Window | None:
        limit = self._per_client
        if limit is None or client is None:
            return None
        window = self._clients.get(client)
        if window is not None:
            return window
        address = peer_address(client)
        if address is None or address_in(address, self._exempt):
            return None  # not an IP client (a Unix socket: local), or an exempt one
        if len(self._clients) >= _SWEEP_AT:
            self._clients = {key: w for key, w in self._clients.items() if not w.expired(now)}
        window = self._clients[client] = _Window(limit, HOUR)
        return window
