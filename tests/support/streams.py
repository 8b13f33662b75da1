"""Reading a vendor stream's events, and a read transport for reader tests."""

from __future__ import annotations

import asyncio
from typing import Protocol

from asr_daemon.vendors.base import StreamCompleted, VendorError, VendorEvent


class EventSource(Protocol):
    events: asyncio.Queue[VendorEvent]


async def events_until_done(stream: EventSource, wait: float = 5.0) -> list[VendorEvent]:
    """Every event up to and including the stream's end (completion or an error)."""
    events: list[VendorEvent] = []
    async with asyncio.timeout(wait):
        while True:
            event = await stream.events.get()
            events.append(event)
            if isinstance(event, StreamCompleted | VendorError):
                return events


class FakeTransport:
    """A read transport that only records whether the reader paused it."""

    def __init__(self) -> None:
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
