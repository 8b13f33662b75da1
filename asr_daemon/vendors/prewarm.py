"""Pre-warmed vendor connections: one connection per vendor kept open and accepted, so an utterance skips the
TCP, TLS and WebSocket handshakes (and Yating's token request, AmiVoice's ``s`` round trip).

A held connection is kept alive with silence where the vendor cuts idle streams (``keepalive_seconds``) and
replaced after ``max_idle`` seconds where the vendor's idle limit is unknown. It is handed out only to
streams it fits (``VendorAdapter.stream_variant``: the same pipeline, the same phrase hints). Trade-off,
documented for users: a held connection may count as usage with vendors that bill connected time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType

from ..resilience.backoff import Backoff
from ..resilience.policy import ResiliencePolicy
from ..resilience.replay import ConnectionTimeline
from .base import FinalResult, PartialResult, Stream, StreamOptions, StreamReady, VendorAdapter, VendorFailure

_LOGGER = logging.getLogger(__name__)


class StreamPool:
    """Holds one ready connection for one vendor."""

    def __init__(self, adapter: VendorAdapter, policy: ResiliencePolicy, max_idle: float = 10.0) -> None:
        self.adapter = adapter
        self.policy = policy
        self.max_idle = max_idle
        language = adapter.languages[0] if adapter.languages else ""
        self._template = StreamOptions(language=language, session_id="prewarm")
        self._variant = adapter.stream_variant(self._template)
        self._held: Stream | None = None
        self._taken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.hits = 0
        self.misses = 0

    async def __aenter__(self) -> StreamPool:
        self._task = asyncio.create_task(self._maintain(), name=f"prewarm {self.adapter.name}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._release()

    def take(self, options: StreamOptions) -> Stream | None:
        """The held connection if it is ready and fits ``options`` (then a new one is prepared)."""
        stream = self._held
        if stream is None or not stream.ready or stream.closed or not _idle_and_healthy(stream):
            self.misses += 1
            return None
        if self.adapter.stream_variant(options) != self._variant:
            self.misses += 1
            return None
        self._held = None
        self._taken.set()
        self.hits += 1
        return stream

    async def _release(self) -> None:
        stream, self._held = self._held, None
        if stream is not None:
            await stream.aclose()

    async def _maintain(self) -> None:
        backoff = Backoff(self.policy.backoff_initial, self.policy.backoff_max)
        while True:
            stream = self.adapter.open_stream(self._template, self.policy)
            try:
                await stream.connect()
                async with asyncio.timeout(self.policy.response_timeout):
                    await stream.wait_ready()
            except (VendorFailure, TimeoutError) as exc:
                await stream.aclose()
                delay = backoff.next_delay()
                _LOGGER.info("pre-warming %s failed (%s); again in %.1f s", self.adapter.name, exc, delay)
                await asyncio.sleep(delay)
                continue
            except BaseException:
                # The pool is closing mid-handshake: the half-open stream (its reader, its keepalive) goes too.
                await stream.aclose()
                raise
            if stream.closed:
                await stream.aclose()
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            stream.timeline = ConnectionTimeline(0, stream.codec.audio_format.bytes_per_second)
            self._held = stream
            self._taken.clear()
            await self._hold(stream)

    async def _hold(self, stream: Stream) -> None:
        """Keep ``stream`` alive until it is taken, breaks, or has been idle for ``max_idle``."""
        keepalive = stream.codec.keepalive_seconds
        silence = b"\x00" * stream.codec.chunk_bytes
        loop = asyncio.get_running_loop()
        expires = loop.time() + (self.max_idle if keepalive is None else max(self.max_idle, 300.0))
        while True:
            wait = expires - loop.time()
            if keepalive is not None:
                wait = min(wait, keepalive)
            if wait <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._taken.wait()
            if self._taken.is_set():
                return
            if stream.closed or not _idle_and_healthy(stream):
                break
            if keepalive is not None and stream.timeline is not None:
                await stream.send_audio(silence)
                stream.timeline.silence(len(silence))
        if self._held is stream:
            self._held = None
            await stream.aclose()


def _idle_and_healthy(stream: Stream) -> bool:
    """Drop what a vendor says about silence; anything else (an error, an end, text) spoils the connection."""
    while not stream.events.empty():
        event = stream.events.get_nowait()
        if isinstance(event, StreamReady):
            continue
        if isinstance(event, PartialResult | FinalResult) and not event.text.strip():
            continue
        return False
    return True
