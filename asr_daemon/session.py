"""One utterance, from the first audio byte to a final transcript or an error.

The session opens the vendor stream in the background while audio keeps arriving (nothing is lost while the
connection is being set up: audio waits in the outbox), normalises and re-chunks audio to what the vendor
wants, ends the stream at ``finish()`` and waits for the vendor's completion under a deadline. Its
``outcome`` future always resolves: with the joined transcript, or with a ``SessionError`` that says why not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .audio.chunker import Rechunker
from .audio.normalise import AudioFormatError, AudioNormaliser
from .redact import redact
from .text import join_segments
from .vendors.base import (
    AudioFormat,
    FinalResult,
    PartialResult,
    StreamCompleted,
    StreamOptions,
    VendorAdapter,
    VendorError,
    VendorFailure,
)
from .vendors.transport import VendorStream

_LOGGER = logging.getLogger(__name__)


class SessionError(Exception):
    """Why an utterance produced no transcript: ``code`` for machines, ``message`` for people."""

    def __init__(self, code: str, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal

    @classmethod
    def from_vendor(cls, vendor: str, error: VendorError) -> SessionError:
        code = "vendor-rejected" if error.fatal else "vendor-error"
        vendor_code = f" [{error.code}]" if error.code else ""
        return cls(code, redact(f"{vendor}: {error.message}{vendor_code}"), fatal=error.fatal)


@dataclass
class SessionLimits:
    max_audio_seconds: float = 60.0
    final_timeout: float = 10.0


@dataclass
class Transcript:
    """A finished utterance."""

    text: str
    segments: list[FinalResult] = field(default_factory=list)
    audio_seconds: float = 0.0
    # Seconds from audio-stop to the vendor's completion.
    final_latency: float = 0.0


_END = object()


class Session:
    """Streams one utterance to one vendor."""

    def __init__(
        self,
        adapter: VendorAdapter,
        options: StreamOptions,
        limits: SessionLimits,
        on_partial: Callable[[str], None] | None = None,
    ) -> None:
        self.adapter = adapter
        self.options = options
        self.limits = limits
        self.id = options.session_id
        self._on_partial = on_partial
        self._stream = VendorStream(adapter, options)
        target: AudioFormat = self._stream.codec.audio_format
        self._target = target
        self._normaliser = AudioNormaliser(target)
        self._chunker = Rechunker(self._stream.codec.chunk_bytes)
        self._max_bytes = int(limits.max_audio_seconds * target.bytes_per_second)
        self._accepted = 0
        self._outbox: asyncio.Queue[object] = asyncio.Queue()
        self._segments: list[FinalResult] = []
        self._partial = ""
        self._stopped_at: float | None = None
        self._finishing = False
        loop = asyncio.get_running_loop()
        self.outcome: asyncio.Future[Transcript] = loop.create_future()
        self._task = asyncio.create_task(self._run(), name=f"session {self.id}")

    # -- the caller's side -------------------------------------------------------------------------------

    @property
    def audio_seconds(self) -> float:
        return self._accepted / self._target.bytes_per_second

    @property
    def done(self) -> bool:
        return self.outcome.done()

    @property
    def finishing(self) -> bool:
        """``finish()`` was called: the client sent all its audio."""
        return self._finishing

    def feed(self, data: bytes, fmt: AudioFormat) -> None:
        """Accept client audio; raises ``SessionError`` for audio that cannot be used (the session is then failed)."""
        if self.outcome.done() or self._finishing:
            return
        try:
            pcm = self._normaliser.push(data, fmt)
        except AudioFormatError as exc:
            self.fail(SessionError("bad-audio", f"audio not understood: {exc}"))
            raise self._error() from None
        self._queue(pcm)

    async def finish(self) -> Transcript:
        """No more audio: end the vendor stream and wait (bounded) for the transcript."""
        if not self._finishing and not self.outcome.done():
            self._finishing = True
            self._stopped_at = time.monotonic()
            with contextlib.suppress(SessionError):
                self._queue(self._normaliser.flush())
            rest = self._chunker.flush()
            if rest:
                self._outbox.put_nowait(rest)
            self._outbox.put_nowait(_END)
        try:
            return await asyncio.wait_for(asyncio.shield(self.outcome), self.limits.final_timeout)
        except TimeoutError:
            self.fail(
                SessionError(
                    "timeout",
                    f"{self.adapter.name}: no final transcript within "
                    f"{self.limits.final_timeout:g} s of the end of audio",
                )
            )
            raise self._error() from None
        finally:
            await self.aclose()

    def fail(self, error: SessionError) -> None:
        if not self.outcome.done():
            self.outcome.set_exception(error)

    async def aclose(self) -> None:
        """Stop everything this session runs (idempotent)."""
        if not self.outcome.done():
            self.fail(SessionError("cancelled", "the utterance was abandoned"))
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        await self._stream.aclose()
        # Retrieve the exception so asyncio does not warn about it.
        if self.outcome.done() and not self.outcome.cancelled():
            self.outcome.exception()

    # -- internals -------------------------------------------------------------------------------------

    def _error(self) -> SessionError:
        error = self.outcome.exception()
        assert isinstance(error, SessionError)
        return error

    def _queue(self, pcm: bytes) -> None:
        if not pcm:
            return
        self._accepted += len(pcm)
        if self._accepted > self._max_bytes:
            self.fail(
                SessionError(
                    "too-long",
                    f"utterance longer than {self.limits.max_audio_seconds:g} s; audio after that was not used",
                )
            )
            raise self._error()
        for chunk in self._chunker.push(pcm):
            self._outbox.put_nowait(chunk)

    async def _run(self) -> None:
        name = self.adapter.name
        try:
            await self._stream.connect()
            _LOGGER.debug(
                "session %s: %s connected in %.0f ms", self.id, name, (self._stream.connect_seconds or 0) * 1000
            )
            receiver = asyncio.create_task(self._receive())
            sender = asyncio.create_task(self._send())
            try:
                await asyncio.wait((receiver, sender), return_when=asyncio.FIRST_COMPLETED)
                if sender.done() and not receiver.done():
                    sender.result()
                    await receiver
            finally:
                for task in (receiver, sender):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        except VendorFailure as failure:
            self.fail(SessionError.from_vendor(name, failure.error))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _LOGGER.exception("session %s: internal error", self.id)
            self.fail(SessionError("internal", f"internal error: {exc}"))
        finally:
            await self._stream.aclose()
            if not self.outcome.done():
                self.fail(SessionError("vendor-error", f"{name}: the stream ended without a result"))

    async def _send(self) -> None:
        await self._stream.wait_ready()
        while True:
            item = await self._outbox.get()
            if self._stream.closed:
                return
            if item is _END:
                await self._stream.end()
                return
            assert isinstance(item, bytes)
            await self._stream.send_audio(item)

    async def _receive(self) -> None:
        name = self.adapter.name
        while True:
            event = await self._stream.events.get()
            if isinstance(event, PartialResult):
                self._partial = event.text
                self._report_partial()
            elif isinstance(event, FinalResult):
                self._segments.append(event)
                self._partial = ""
                self._report_partial()
            elif isinstance(event, StreamCompleted):
                if not self._finishing:
                    # The vendor ended the stream by itself (e.g. an idle cut): the audio after is not covered.
                    self.fail(
                        SessionError("vendor-error", f"{name}: the vendor ended the stream before the end of audio")
                    )
                    return
                latency = time.monotonic() - (self._stopped_at or time.monotonic())
                text = join_segments(self.options.language, [s.text for s in self._segments])
                if not self.outcome.done():
                    self.outcome.set_result(Transcript(text, list(self._segments), self.audio_seconds, latency))
                return
            elif isinstance(event, VendorError):
                self.fail(SessionError.from_vendor(name, event))
                return

    def _report_partial(self) -> None:
        if self._on_partial is None:
            return
        texts = [s.text for s in self._segments]
        if self._partial:
            texts.append(self._partial)
        try:
            self._on_partial(join_segments(self.options.language, texts))
        except Exception:
            _LOGGER.exception("session %s: partial listener failed", self.id)
