"""Pushes the local sources' events to Wyoming event URIs, the way wyoming-satellite's ``--event-uri`` does.

Each configured URI (``events.forward_uris``) gets a connection of its own that is opened when there is
something to send and kept; it is re-opened with backoff when it breaks. Events of every local source are
forwarded (the microphone ``mic:...``, satellites ``satellite:<name>``); not those of Wyoming callers
(``wyoming:...``), which already receive their own, nor the daemon's. The mapping:

==================  =================================================================
event               Wyoming event
==================  =================================================================
utterance-start     ``voice-started``
utterance-end       ``voice-stopped``
transcript          ``transcript`` (``text``, ``language``)
error               ``error`` (``text``, ``code``)
==================  =================================================================

Every forwarded event's data also carries ``id``, ``source``, ``session`` and ``vendor``. Each URI holds at
most ``MAX_PENDING`` undelivered events (the oldest go first) while its peer is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from types import TracebackType

from wyoming.asr import Transcript
from wyoming.client import AsyncClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.vad import VoiceStarted, VoiceStopped

from ..events import AsrEvent, EventKind
from ..resilience.backoff import Backoff

_LOGGER = logging.getLogger(__name__)

MAX_PENDING = 100
CONNECT_TIMEOUT = 5.0
WRITE_TIMEOUT = 5.0


def forwarded_source(source: str) -> bool:
    """Whether events of ``source`` are forwarded: local sources only."""
    return source != "daemon" and not source.startswith("wyoming:")


def wyoming_event(event: AsrEvent) -> Event | None:
    """The Wyoming event for ``event``, or None when it is not forwarded."""
    if event.kind is EventKind.UTTERANCE_START:
        wyoming = VoiceStarted().event()
    elif event.kind is EventKind.UTTERANCE_END:
        wyoming = VoiceStopped().event()
    elif event.kind is EventKind.TRANSCRIPT:
        wyoming = Transcript(text=event.text or "", language=event.language).event()
    elif event.kind is EventKind.ERROR:
        wyoming = Error(text=event.message or "", code=event.code).event()
    else:
        return None
    data = dict(wyoming.data or {})
    data.update({"id": event.id, "source": event.source, "session": event.session, "vendor": event.vendor})
    return Event(type=wyoming.type, data=data)


class _Forwarder:
    def __init__(self, uri: str, min_delay: float, max_delay: float) -> None:
        self.uri = uri
        self.backoff = Backoff(min_delay, max_delay)
        self.pending: deque[Event] = deque(maxlen=MAX_PENDING)
        self.sent = 0
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._task = asyncio.create_task(self._run(), name=f"forward {uri}")

    def put(self, event: Event) -> None:
        if len(self.pending) == self.pending.maxlen:
            _LOGGER.warning("event forwarding to %s: %d events waiting; dropping the oldest", self.uri, MAX_PENDING)
        self.pending.append(event)
        self._empty.clear()
        self._wake.set()

    async def drained(self) -> None:
        await self._empty.wait()

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            while not self.pending:
                self._wake.clear()
                await self._wake.wait()
            client = AsyncClient.from_uri(self.uri)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await client.connect()
                _LOGGER.info("event forwarding: connected to %s", self.uri)
                self.backoff.reset()
                while True:
                    while self.pending:
                        async with asyncio.timeout(WRITE_TIMEOUT):
                            await client.write_event(self.pending[0])
                        self.pending.popleft()
                        self.sent += 1
                        if not self.pending:
                            self._empty.set()
                    self._wake.clear()
                    await self._wake.wait()
            except (OSError, TimeoutError, ConnectionError) as exc:
                delay = self.backoff.next_delay()
                _LOGGER.warning(
                    "event forwarding to %s failed (%s); retrying in %.1f s", self.uri, exc or type(exc).__name__, delay
                )
            finally:
                with contextlib.suppress(Exception):
                    await client.disconnect()
            await asyncio.sleep(delay)


class WyomingForwardSink:
    name = "wyoming-forward"

    def __init__(self, uris: list[str], *, min_delay: float = 1.0, max_delay: float = 30.0) -> None:
        self.uris = list(uris)
        self.min_delay = min_delay
        self.max_delay = max_delay
        self._forwarders: list[_Forwarder] = []

    async def __aenter__(self) -> WyomingForwardSink:
        self._forwarders = [_Forwarder(uri, self.min_delay, self.max_delay) for uri in self.uris]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        forwarders, self._forwarders = self._forwarders, []
        # What is queued gets a moment to go out (the bus already bounded the whole shutdown).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.gather(*(f.drained() for f in forwarders))
        for forwarder in forwarders:
            await forwarder.aclose()

    async def handle(self, event: AsrEvent) -> None:
        if not forwarded_source(event.source):
            return
        wyoming = wyoming_event(event)
        if wyoming is None:
            return
        for forwarder in self._forwarders:
            forwarder.put(wyoming)
