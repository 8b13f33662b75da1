"""One event model for everything the daemon reports, and the bus that fans events out to sinks.

Sources (a Wyoming connection, the microphone) and the daemon itself ``publish()`` ``AsrEvent``s; each sink
(MQTT, JSON lines, Wyoming forwarding) gets them through its own bounded queue and consumes them in its own
task. ``publish()`` never blocks and never fails: a sink that falls behind loses partials first (a newer
partial supersedes them anyway), and only when its queue holds nothing but lasting events does it lose the
oldest of those, counted and logged. A slow or broken sink can never delay a session.

The bus lives on the event loop: call ``publish()`` from the loop's thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol

_LOGGER = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE = 1000


class EventKind(StrEnum):
    TRANSCRIPT = "transcript"
    PARTIAL = "partial"
    UTTERANCE_START = "utterance-start"
    UTTERANCE_END = "utterance-end"
    ERROR = "error"
    STATE = "state"


def new_event_id() -> str:
    """A unique id that sorts by creation time: 12 hex digits of milliseconds, then 16 random hex digits."""
    return f"{int(time.time() * 1000):012x}{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True, slots=True)
class AsrEvent:
    """Something that happened, as every sink sees it.

    ``source`` is ``wyoming:<peer>``, ``mic:<device>``, ``satellite:<name>`` or ``daemon``; ``session`` ties the
    events of one utterance together. ``id`` is given once, when the event is made, and travels with it everywhere
    (spooled, re-sent, forwarded), so a consumer can drop a duplicate. Times are Unix seconds.
    """

    kind: EventKind
    source: str
    session: str | None = None
    vendor: str | None = None
    language: str | None = None
    # transcript / partial: the text so far (a final's is authoritative)
    text: str | None = None
    # error: a machine code and a message for people (secrets already masked)
    code: str | None = None
    message: str | None = None
    # state: ready, stopping (daemon); listening, unavailable (microphone)
    state: str | None = None
    # when the utterance started (its first audio), and when its audio ended
    started: float | None = None
    ended: float | None = None
    audio_seconds: float | None = None
    # seconds from the end of audio to the final transcript
    latency: float | None = None
    # transcript: the engine that produced it, when not the routed vendor (the fallback took over)
    engine: str | None = None
    time: float = field(default_factory=time.time)
    id: str = field(default_factory=new_event_id)

    @property
    def final(self) -> bool:
        return self.kind is EventKind.TRANSCRIPT

    def to_dict(self) -> dict[str, Any]:
        """The JSON form every sink writes: ``id``, ``kind`` and ``time`` first, unset fields left out."""
        raw = asdict(self)
        out: dict[str, Any] = {"id": self.id, "kind": self.kind.value, "time": round(self.time, 3)}
        for key, value in raw.items():
            if key in out or value is None:
                continue
            out[key] = round(value, 3) if isinstance(value, float) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AsrEvent:
        """The inverse of ``to_dict`` (for events read back from the spool)."""
        known = {name for name in cls.__dataclass_fields__}
        values = {key: value for key, value in data.items() if key in known}
        values["kind"] = EventKind(values["kind"])
        return cls(**values)


class Sink(Protocol):
    """Consumes events, one at a time, in the order they were published."""

    name: str

    async def handle(self, event: AsrEvent) -> None: ...


class Subscription:
    """One sink's bounded queue of events."""

    def __init__(self, name: str, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("queue size must be at least 1")
        self.name = name
        self.maxsize = maxsize
        self.dropped = 0
        self._items: deque[AsrEvent] = deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = False
        self._last_warning = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: AsrEvent) -> None:
        if len(self._items) >= self.maxsize and not self._make_room(event):
            return
        self._items.append(event)
        self._idle.clear()
        self._ready.set()

    def _make_room(self, event: AsrEvent) -> bool:
        """Drop something to fit ``event``; False when ``event`` itself is the one dropped."""
        if event.kind is EventKind.PARTIAL:
            self._count_drop()
            return False
        for index, queued in enumerate(self._items):
            if queued.kind is EventKind.PARTIAL:
                del self._items[index]
                self._count_drop()
                return True
        self._items.popleft()
        self._count_drop()
        return True

    def _count_drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_warning >= 10:
            self._last_warning = now
            _LOGGER.warning(
                "event sink %s is falling behind: %d event(s) dropped so far (queue of %d)",
                self.name,
                self.dropped,
                self.maxsize,
            )

    async def get(self) -> AsrEvent:
        """The oldest queued event (waits for one). Call ``done()`` once it is handled."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        self._busy = True
        return self._items.popleft()

    def done(self) -> None:
        self._busy = False
        if not self._items:
            self._idle.set()

    async def drained(self) -> None:
        """Wait until every queued event has been handled."""
        while self._items or self._busy:
            self._idle.clear()
            await self._idle.wait()


class EventBus:
    """Fans each published event out to every attached sink, without ever blocking the publisher."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self._subscriptions: list[Subscription] = []
        self.published = 0

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subscriptions)

    @property
    def listened(self) -> bool:
        """A sink is attached: events published now reach someone (without one, making them is wasted work)."""
        return bool(self._subscriptions)

    def publish(self, event: AsrEvent) -> None:
        self.published += 1
        for subscription in self._subscriptions:
            subscription.put(event)

    def subscribe(self, name: str, maxsize: int | None = None) -> Subscription:
        subscription = Subscription(name, maxsize or self.queue_size)
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscriptions.remove(subscription)

    @contextlib.asynccontextmanager
    async def attached(self, sink: Sink, *, flush_timeout: float = 5.0) -> AsyncIterator[Subscription]:
        """Feed ``sink`` from its own queue until the block exits; then hand it what is queued (bounded)."""
        subscription = self.subscribe(sink.name)
        runner = asyncio.create_task(_run_sink(sink, subscription), name=f"sink {sink.name}")
        try:
            yield subscription
        finally:
            self.unsubscribe(subscription)
            try:
                async with asyncio.timeout(flush_timeout):
                    await subscription.drained()
            except TimeoutError:
                _LOGGER.warning(
                    "event sink %s: %d event(s) not handled within %g s at shutdown",
                    sink.name,
                    len(subscription),
                    flush_timeout,
                )
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


async def _run_sink(sink: Sink, subscription: Subscription) -> None:
    while True:
        event = await subscription.get()
        try:
            await sink.handle(event)
        except asyncio.CancelledError:
            raise
        except Exception:
            _LOGGER.exception("event sink %s failed on a %s event", sink.name, event.kind.value)
        finally:
            subscription.done()
