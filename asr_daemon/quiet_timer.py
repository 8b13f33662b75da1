"""A timer for "nothing happened for N seconds" that costs one clock read per event, not a timer per event.

Audio moves in chunks every 10–100 ms and a silence limit is seconds long: setting and cancelling a loop timer
(or entering an ``asyncio.timeout``) for every chunk would cost more than the chunk's own handling. Here each
event only records the time; the one loop timer, when it fires early, is set again for the time that is left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class QuietTimer:
    """Calls ``on_quiet`` once ``seconds`` pass without :meth:`mark`; :meth:`start` arms it (again)."""

    __slots__ = ("_handle", "_loop", "_on_quiet", "_since", "expired", "seconds")

    def __init__(self, seconds: float, on_quiet: Callable[[], None]) -> None:
        self.seconds = seconds
        self._on_quiet = on_quiet
        self._loop = asyncio.get_running_loop()
        self._since = self._loop.time()
        self._handle: asyncio.TimerHandle | None = None
        # It fired, and nothing was marked since.
        self.expired = False

    @property
    def running(self) -> bool:
        return self._handle is not None

    def mark(self) -> None:
        """Something happened: the quiet time starts again from now."""
        self._since = self._loop.time()
        self.expired = False

    def start(self) -> None:
        """Arm the timer (from the last mark) unless it is armed already."""
        if self._handle is None:
            self._handle = self._loop.call_at(self._since + self.seconds, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        deadline = self._since + self.seconds
        if self._loop.time() < deadline:
            self._handle = self._loop.call_at(deadline, self._check)
            return
        self._handle = None
        self.expired = True
        self._on_quiet()
