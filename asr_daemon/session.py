"""One utterance, from the first audio byte to a final transcript or an error.

The session opens the vendor stream in the background while audio keeps arriving (audio accepted meanwhile
waits in the replay buffer, so none is lost), sends it re-chunked to the vendor's preferred size, ends the
stream at ``finish()`` and waits for the vendor's completion under a deadline. Its ``outcome`` future
always resolves: with the joined transcript, or with a ``SessionError`` that says why not.

When the vendor connection fails mid-utterance (a drop, a stall, a transient vendor error) the session
reconnects with backoff and replays the audio that no final result covers yet, paced no faster than the
vendor accepts. Finals from before and after the drop are stitched in utterance order with their times
corrected; finals that cannot be placed in time (vendors that give none) are recognised again from the
replayed audio instead of being kept twice. Fatal errors (bad key, rejected configuration) end the
utterance at once, never retried.

A session runs between ``start()`` and ``aclose()`` (or as ``async with session:``): building one starts
nothing, so a caller that never starts it has nothing to close.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .audio.normalise import AudioFormatError, AudioNormaliser
from .quiet_timer import QuietTimer
from .redact import redact
from .resilience.backoff import Backoff, RetryBudget
from .resilience.pacing import Pacer
from .resilience.policy import DEFAULT_POLICY, ResiliencePolicy
from .resilience.replay import ConnectionTimeline, ReplayBuffer
from .text import join_segments
from .vendors.base import (
    AudioFormat,
    FinalResult,
    PartialResult,
    Stream,
    StreamCompleted,
    StreamOptions,
    VendorAdapter,
    VendorError,
    VendorEvent,
    VendorFailure,
)

if TYPE_CHECKING:
    from .vendors.prewarm import StreamPool

_LOGGER = logging.getLogger(__name__)

# The most client audio per second a session accepts, in bytes (48 kHz, 8 channels, 16 bit; or 192 kHz mono
# 32 bit). A client's input per utterance is bounded by this times ``max_audio_seconds`` whatever it declares
# (46 MB with the defaults), where the formats the converter can read would allow ~3 GiB.
MAX_INPUT_BYTES_PER_SECOND = 48000 * 8 * 2

# The reconnect delays' jitter, one generator for every session: seeding a new one costs a system call and more
# than the rest of a session's set-up.
_JITTER = random.Random()

# What a stream may hand to Session._take_result as it arrives.
_RESULTS = (PartialResult, FinalResult)


def input_format_error(fmt: AudioFormat) -> SessionError | None:
    """Why client audio in ``fmt`` is refused (None: accepted)."""
    if fmt.rate * fmt.width * fmt.channels > MAX_INPUT_BYTES_PER_SECOND:
        return SessionError(
            "bad-audio",
            f"audio format {fmt.rate} Hz, {fmt.width * 8} bit, {fmt.channels} channels is more than "
            f"{MAX_INPUT_BYTES_PER_SECOND} bytes per second (e.g. 48 kHz, 8 channels, 16 bit)",
        )
    return None


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
    policy: ResiliencePolicy = DEFAULT_POLICY
    # With a fallback engine: how long after the end of audio the routed vendor has before the fallback takes
    # over (the fallback then has what is left of final_timeout).
    fallback_after: float = 5.0


@dataclass
class Transcript:
    """A finished utterance."""

    text: str
    segments: list[FinalResult] = field(default_factory=list)
    audio_seconds: float = 0.0
    # Seconds from audio-stop to the vendor's completion.
    final_latency: float = 0.0
    # Vendor connections that failed and were replaced, and the audio sent again because of it.
    reconnects: int = 0
    replayed_bytes: int = 0
    # The engine that produced the text; differs from the session's vendor when the fallback took over.
    engine: str = ""
    fallback: bool = False


@dataclass(slots=True)
class _DirectSend:
    """What ``_send_now`` needs of the sender's current connection."""

    stream: Stream
    timeline: ConnectionTimeline
    keepalive: QuietTimer | None


class _ConnectionLost(Exception):
    """The current vendor connection failed in a way a new connection may fix."""

    def __init__(self, error: VendorError) -> None:
        super().__init__(error.message)
        self.error = error


class Session:
    """Streams one utterance to one vendor, surviving dropped connections."""

    def __init__(
        self,
        adapter: VendorAdapter,
        options: StreamOptions,
        limits: SessionLimits,
        on_partial: Callable[[str], None] | None = None,
        pool: StreamPool | None = None,
        keep_audio: bool = False,
        charge: Callable[[float], None] | None = None,
    ) -> None:
        self.adapter = adapter
        self.options = options
        self.limits = limits
        self.policy = limits.policy
        self.id = options.session_id
        self._on_partial = on_partial
        self._pool = pool
        codec_class = adapter.codec_class
        self._target: AudioFormat = codec_class.audio_format
        self._chunk_bytes = codec_class.chunk_bytes
        self._speed = codec_class.max_send_speed
        self._keepalive = codec_class.keepalive_seconds
        self._normaliser = AudioNormaliser(self._target)
        self._buffer = ReplayBuffer(self._target.bytes_per_second, align=self._target.bytes_for_ms(10))
        self._max_bytes = int(limits.max_audio_seconds * self._target.bytes_per_second)
        # The client's own bytes, before conversion: bounded too, whatever format it declares.
        self._max_input_bytes = int(limits.max_audio_seconds * MAX_INPUT_BYTES_PER_SECOND)
        self._input_bytes = 0
        self._input_format: AudioFormat | None = None
        # Counts accepted audio (seconds) against the audio budget; None: not counted.
        self._charge = charge
        self._seconds_per_byte = 1.0 / self._target.bytes_per_second
        # Connections in a row that failed without a final result, and the delay before the next one.
        self._retries = RetryBudget(self.policy.max_failures)
        self._backoff = Backoff(self.policy.backoff_initial, self.policy.backoff_max, _JITTER)
        self._audio_arrived = asyncio.Event()
        # Where the current connection's audio has been sent up to (a buffer position).
        self._sent_to = 0
        # Set while the sender waits caught up and _accept may send for it (see _send_now).
        self._direct: _DirectSend | None = None
        # False: every vendor message goes through the sender's loop (the plain path tests compare against).
        self.direct_sends = True
        # False: every vendor result goes through the receiver's loop (see _take_result).
        self.direct_results = True
        # The receiver's wait for the vendor's next event, timed once the end of audio is out (see _receive).
        self._answer_deadline: asyncio.Timeout | None = None
        self._committed: list[FinalResult] = []  # finals whose audio left the replay buffer
        self._pending: list[FinalResult] = []  # finals of the current connection without times
        self._partial = ""
        self._stopped_at: float | None = None
        self._finishing = False
        self.reconnects = 0
        self.replayed_bytes = 0
        # Seconds the first vendor connection took to open (None until one opened).
        self.connect_seconds: float | None = None
        # Looked up once: on Python 3.11 every lookup of the running loop is a getpid() system call.
        self._loop = loop = asyncio.get_running_loop()
        self._done: asyncio.Future[Transcript] = loop.create_future()
        self._stream: Stream | None = None
        # Every accepted byte, for a fallback engine to hear the whole utterance (only when one is configured).
        self.all_audio: bytearray | None = bytearray() if keep_audio else None
        self._task: asyncio.Task[None] | None = None
        self._shut_down = False

    def start(self) -> Session:
        """Start streaming to the vendor (idempotent); ``aclose()`` stops it."""
        if self._task is None and not self._shut_down:
            self._task = self._loop.create_task(self._run(), name=f"session {self.id}")
        return self

    async def __aenter__(self) -> Session:
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the caller's side -------------------------------------------------------------------------------

    @property
    def audio_seconds(self) -> float:
        return self._buffer.end / self._target.bytes_per_second

    @property
    def outcome(self) -> asyncio.Future[Transcript]:
        """Resolves with the transcript, or fails with a ``SessionError`` saying why there is none."""
        return self._done

    @property
    def accepted_bytes(self) -> int:
        """Normalised audio accepted for the vendor."""
        return self._buffer.end

    @property
    def done(self) -> bool:
        return self._done.done()

    @property
    def finishing(self) -> bool:
        """``finish()`` was called: the client sent all its audio."""
        return self._finishing

    @property
    def audio_format(self) -> AudioFormat:
        """The format of the audio the vendor is sent (what ``feed`` returns)."""
        return self._target

    @property
    def is_recording(self) -> bool:
        """The client's audio began with a RIFF/WAVE header: an uploaded recording, not a live stream."""
        return self._normaliser.wav_format is not None

    @property
    def finals_end(self) -> float | None:
        """Where the vendor's last placed final ends, in seconds of utterance audio (None: no final yet)."""
        if not self._committed:
            return None
        end_ms = self._committed[-1].end_ms
        return end_ms / 1000 if end_ms is not None else None

    @property
    def partial_pending(self) -> bool:
        """The vendor holds a hypothesis no final has settled yet (speech it is still recognising)."""
        return bool(self._partial)

    def feed(self, data: bytes, fmt: AudioFormat) -> bytes:
        """Accept client audio; raises ``SessionError`` for audio that cannot be used (the session is then failed).

        Returns the audio as the vendor gets it (``audio_format``). Once the vendor failed, audio is still kept
        where a fallback will need the whole utterance.
        """
        if self._finishing or (self._done.done() and self.all_audio is None):
            return b""
        if fmt is not self._input_format:
            refused = input_format_error(fmt)
            if refused is not None:
                self.fail(refused)
                raise refused
            self._input_format = fmt
        self._input_bytes += len(data)
        if self._input_bytes > self._max_input_bytes:
            error = SessionError(
                "too-long",
                f"utterance input larger than {self._max_input_bytes} bytes "
                f"({self.limits.max_audio_seconds:g} s at the largest accepted format)",
            )
            self.fail(error)
            raise error
        try:
            pcm = self._normaliser.push(data, fmt)
        except AudioFormatError as exc:
            error = SessionError("bad-audio", f"audio not understood: {exc}")
            self.fail(error)
            raise error from None
        self._accept(pcm)
        return pcm

    def answer_now(self, text: str | None = None) -> Transcript:
        """End the utterance with the finals the vendor already gave (or ``text``), sending the vendor nothing more.

        For a caller that knows the speech is over and already covered by finals; ``aclose()`` then lets the
        vendor connection go.
        """
        if not self._finishing:
            self._finishing = True
            self._stopped_at = time.monotonic()
        if not self._done.done():
            self._complete(text)
        transcript = self._done.result() if self._done.exception() is None else None
        task = self._task
        if task is not None and not task.done() and asyncio.current_task() is not task:
            task.cancel()
        if transcript is None:
            raise self._error()
        return transcript

    async def finish(self) -> Transcript:
        """No more audio: end the vendor stream and wait (bounded) for the transcript."""
        if not self._finishing and not self._done.done():
            with contextlib.suppress(SessionError):
                self._accept(self._normaliser.flush())
            self._finishing = True
            self._stopped_at = time.monotonic()
            self._audio_arrived.set()
        try:
            # The transcript goes back at once; the vendor connection's close handshake happens in aclose().
            async with asyncio.timeout(self.limits.final_timeout):
                return await asyncio.shield(self._done)
        except TimeoutError:
            self.fail(
                SessionError(
                    "timeout",
                    f"{self.adapter.name}: no final transcript within {self.limits.final_timeout:g} s "
                    "of the end of audio",
                )
            )
            await self._shutdown()
            raise self._error() from None
        except SessionError:
            await self._shutdown()
            raise

    def fail(self, error: SessionError) -> None:
        """End the utterance with ``error``; its vendor connection is let go now, not when the client leaves."""
        if not self._done.done():
            self._done.set_exception(error)
        task = self._task
        # From inside the session's own task the stream is closed on the way out anyway.
        if task is not None and not task.done() and asyncio.current_task() is not task:
            task.cancel()

    async def aclose(self) -> None:
        """Stop everything this session runs (idempotent)."""
        await self._shutdown()

    async def _shutdown(self) -> None:
        if not self._done.done():
            self.fail(SessionError("cancelled", "the utterance was abandoned"))
        task = self._task
        # Cancelled again until it ends: a library that swallowed one cancellation must not keep the session alive.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait((task,), timeout=1.0)
        if task is not None and not task.cancelled():
            task.exception()  # retrieved, so asyncio does not warn about it
        # A cancelled task's traceback holds the frames of _run, which hold this session: letting go of the task
        # ends that reference cycle, so a finished session is freed at once rather than by the cyclic collector.
        self._task = None
        self._shut_down = True
        self._on_partial = None  # the utterance's: it holds this session, so the pair would wait for the collector
        if self._stream is not None:
            await self._stream.aclose()
        # The outcome's exception too, for the same reason.
        if self._done.done() and not self._done.cancelled():
            self._done.exception()

    # -- internals -------------------------------------------------------------------------------------

    def _error(self) -> SessionError:
        error = self._done.exception()
        assert isinstance(error, SessionError)
        return error

    def _accept(self, pcm: bytes) -> None:
        if not pcm:
            return
        before = self._buffer.end
        after = before + len(pcm)
        if after > self._max_bytes:
            error = SessionError(
                "too-long", f"utterance longer than {self.limits.max_audio_seconds:g} s; audio after that was not used"
            )
            self.fail(error)
            raise error
        self._buffer.append(pcm)
        if self._charge is not None:
            self._charge(len(pcm) * self._seconds_per_byte)
        if self.all_audio is not None:
            self.all_audio += pcm
        direct = self._direct
        if direct is not None:
            # The sender waits, caught up: whole vendor messages go out from here (the hot path, _send_now).
            if after - self._sent_to >= self._chunk_bytes and not self._send_now(direct):
                self._audio_arrived.set()
        elif after // self._chunk_bytes != before // self._chunk_bytes:
            # Wake the sender once a whole vendor message is there, not for every small client chunk.
            self._audio_arrived.set()

    def _send_now(self, direct: _DirectSend) -> bool:
        """Hot path of ``_send``'s loop: the whole vendor messages buffered, sent without waking the sender.

        Per vendor message the sender's way costs an event, a task step and an awaited send. This runs only while
        that loop would do nothing but send (a first connection, unpaced, waiting for audio) and keeps its
        bookkeeping (position, connection clock, keepalive). False: the stream cannot take a message without
        waiting; the sender, woken, goes on from the same position.
        """
        chunk_bytes = self._chunk_bytes
        buffer = self._buffer
        while buffer.end - self._sent_to >= chunk_bytes:
            chunk = buffer.read(self._sent_to, chunk_bytes)
            if not direct.stream.send_audio_now(chunk):
                return False
            direct.timeline.audio(chunk_bytes)
            self._sent_to += chunk_bytes
            if direct.keepalive is not None:
                direct.keepalive.mark()
        return True

    async def _run(self) -> None:
        name = self.adapter.name
        backoff = self._backoff
        budget = self._retries
        first = True
        try:
            while not self._done.done():
                try:
                    await self._attempt(first)
                    return
                except _ConnectionLost as lost:
                    failures_left = budget.fail()
                    self._drop_uncommitted()
                    if not failures_left:
                        self.fail(
                            SessionError(
                                "vendor-error",
                                redact(
                                    f"{name}: gave up after {budget.failures} failed connections: {lost.error.message}"
                                ),
                            )
                        )
                        return
                    delay = backoff.next_delay()
                    replay = self._buffer.end - self._buffer.start
                    _LOGGER.warning(
                        "session %s: %s connection lost (%s); reconnecting in %.2f s, replaying %.1f s of audio",
                        self.id,
                        name,
                        redact(lost.error.message),
                        delay,
                        replay / self._target.bytes_per_second,
                    )
                    await asyncio.sleep(delay)
                    self.reconnects += 1
                    first = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _LOGGER.exception("session %s: internal error", self.id)
            self.fail(SessionError("internal", f"internal error: {exc}"))
        finally:
            if self._stream is not None:
                await self._stream.aclose()
            if not self._done.done():
                self.fail(SessionError("vendor-error", f"{name}: the stream ended without a result"))

    async def _attempt(self, first: bool) -> None:
        """One vendor connection: connect, (re)send the buffered audio, stream, complete."""
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None
        stream = self._pool.take(self.options) if (first and self._pool is not None) else None
        if stream is None:
            stream = self.adapter.open_stream(self.options, self.policy)
            self._stream = stream
            try:
                await stream.connect()
            except VendorFailure as failure:
                if failure.error.fatal:
                    self.fail(SessionError.from_vendor(self.adapter.name, failure.error))
                    return
                raise _ConnectionLost(failure.error) from None
            if self.connect_seconds is None:
                self.connect_seconds = stream.connect_seconds
            _LOGGER.debug(
                "session %s: %s connected in %.0f ms", self.id, self.adapter.name, (stream.connect_seconds or 0) * 1000
            )
        else:
            self._stream = stream
            _LOGGER.debug("session %s: took a pre-warmed %s connection", self.id, self.adapter.name)
        # The vendor's clock started at this connection's first audio byte (keepalive silence of a pre-warmed
        # connection included); utterance audio starts at the buffer's start.
        timeline = stream.timeline or ConnectionTimeline(0, self._target.bytes_per_second)
        timeline.base = self._buffer.start
        stream.timeline = timeline
        if not first:
            self.replayed_bytes += self._buffer.end - self._buffer.start
        receiver = self._loop.create_task(self._receive(stream, timeline))
        sender = self._loop.create_task(self._send(stream, timeline, replaying=not first))
        try:
            done, _ = await asyncio.wait((receiver, sender), return_when=asyncio.FIRST_COMPLETED)
            if sender in done:
                sender.result()
            await receiver
        finally:
            for task in (receiver, sender):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, _ConnectionLost):
                    await task

    async def _send(self, stream: Stream, timeline: ConnectionTimeline, replaying: bool) -> None:
        if not stream.ready:
            try:
                async with asyncio.timeout(self.policy.response_timeout):
                    await stream.wait_ready()
            except TimeoutError:
                raise _ConnectionLost(
                    VendorError(f"the vendor did not accept the stream within {self.policy.response_timeout:g} s")
                ) from None
        # The first connection gets audio at the client's own pace; a replay would burst, so it is paced.
        pacer = Pacer(self._target.bytes_per_second, self._speed if replaying else None)
        self._sent_to = self._buffer.start
        silence = b"\x00" * self._chunk_bytes
        # Silence is sent once no audio went out for keepalive_seconds (one timer, not one per message).
        keepalive = QuietTimer(self._keepalive, self._audio_arrived.set) if self._keepalive is not None else None
        # While this loop waits caught up, new audio is sent by _accept (unpaced connections only).
        direct = _DirectSend(stream, timeline, keepalive) if pacer.rate is None and self.direct_sends else None
        try:
            while not stream.closed:
                available = self._buffer.end - self._sent_to
                if available >= self._chunk_bytes or (self._finishing and available > 0):
                    chunk = self._buffer.read(self._sent_to, self._chunk_bytes)
                    delay = pacer.delay_for(len(chunk))
                    if delay:
                        await asyncio.sleep(delay)
                    await stream.send_audio(chunk)
                    pacer.sent_bytes(len(chunk))
                    timeline.audio(len(chunk))
                    self._sent_to += len(chunk)
                    if keepalive is not None:
                        keepalive.mark()
                    continue
                if self._finishing:
                    await stream.end()
                    # The vendor owes the final answer now: the receiver's wait gets its deadline.
                    if self._answer_deadline is not None:
                        self._start_answer_deadline(self._answer_deadline)
                    return
                if keepalive is not None and keepalive.expired:
                    # The client paused: keep the vendor's idle limit from cutting the stream.
                    await stream.send_audio(silence)
                    timeline.silence(len(silence))
                    keepalive.mark()
                    continue
                self._audio_arrived.clear()
                if keepalive is not None:
                    keepalive.start()
                self._direct = direct
                try:
                    await self._audio_arrived.wait()
                finally:
                    self._direct = None
        finally:
            if keepalive is not None:
                keepalive.cancel()

    async def _receive(self, stream: Stream, timeline: ConnectionTimeline) -> None:
        name = self.adapter.name
        events = stream.events
        try:
            # One deadline for the connection, not one per event: unset until the vendor owes the final answer
            # (the sender sets it when the end of audio goes out); then each event the vendor sends moves it on.
            async with asyncio.timeout(None) as deadline:
                self._answer_deadline = deadline
                if stream.end_sent.is_set():
                    self._start_answer_deadline(deadline)
                if self.direct_results:
                    # Results are taken as the stream receives them (_take_result); the rest is queued for here.
                    stream.consumer = functools.partial(self._take_result, timeline)
                while True:
                    event = await events.get()
                    self._move_answer_deadline(deadline)
                    if isinstance(event, PartialResult):
                        self._on_partial_result(event)
                    elif isinstance(event, FinalResult):
                        self._on_final_result(event, timeline)
                    elif isinstance(event, StreamCompleted):
                        if not self._finishing or not stream.codec.ended:
                            raise _ConnectionLost(VendorError("the vendor ended the stream before the end of audio"))
                        self._complete()
                        return
                    elif isinstance(event, VendorError):
                        if event.fatal:
                            self.fail(SessionError.from_vendor(name, event))
                            return
                        raise _ConnectionLost(event)
        except TimeoutError:
            raise _ConnectionLost(
                VendorError(f"no answer from the vendor for {self.policy.response_timeout:g} s after the end of audio")
            ) from None
        finally:
            stream.consumer = None
            self._answer_deadline = None

    def _take_result(self, timeline: ConnectionTimeline, event: VendorEvent) -> bool:
        """Hot path of ``_receive``'s loop: a result handled in the stream's own callback, as it arrives.

        The loop's way costs a queue put, a wake-up and a task step per vendor message before the partial can go
        on to the client. Only results are taken here, and only while nothing waits in the queue (the stream
        checks), so the order is the loop's; the end of the stream and errors still go through the loop.
        ``Session.direct_results = False`` is the plain path (tests/test_session_results.py compares them).
        """
        if not isinstance(event, _RESULTS):
            return False
        if self._answer_deadline is not None:
            self._move_answer_deadline(self._answer_deadline)
        try:
            if isinstance(event, PartialResult):
                self._on_partial_result(event)
            else:
                self._on_final_result(event, timeline)
        except Exception as exc:  # in the loop this ends the session the same way (see _run)
            _LOGGER.exception("session %s: internal error", self.id)
            self.fail(SessionError("internal", f"internal error: {exc}"))
        return True

    def _on_partial_result(self, event: PartialResult) -> None:
        self._partial = event.text
        self._report_partial()

    def _on_final_result(self, event: FinalResult, timeline: ConnectionTimeline) -> None:
        self._on_final(event, timeline)
        self._partial = ""
        self._report_partial()

    def _start_answer_deadline(self, deadline: asyncio.Timeout) -> None:
        """The vendor owes the final answer from now (the end of audio went out)."""
        if deadline.when() is None:
            deadline.reschedule(self._loop.time() + self.policy.response_timeout)

    def _move_answer_deadline(self, deadline: asyncio.Timeout) -> None:
        """The vendor sent something while it owes the answer: it gets the whole response timeout again."""
        if deadline.when() is not None:
            deadline.reschedule(self._loop.time() + self.policy.response_timeout)

    def _on_final(self, final: FinalResult, timeline: ConnectionTimeline) -> None:
        if final.end_ms is None:
            # Not progress: without times it cannot be placed, and a new connection recognises its audio again.
            self._pending.append(final)
            return
        start = timeline.to_utterance_ms(final.start_ms) if final.start_ms is not None else None
        end_position = timeline.to_utterance_bytes(final.end_ms)
        placed = FinalResult(final.text, start, end_position * 1000 // self._target.bytes_per_second)
        # Everything recognised so far on this connection is now safe: its audio is no longer needed.
        self._committed.extend(self._pending)
        self._pending.clear()
        self._committed.append(placed)
        trimmed_from = self._buffer.start
        self._buffer.trim(end_position)
        if self._buffer.start > trimmed_from:
            # Audio recognised for good: the connection worked, so the failures before it no longer count.
            self._retries.progress()
            self._backoff.reset()

    def _drop_uncommitted(self) -> None:
        # Finals without times are recognised again from the replayed audio; keeping them would repeat them.
        self._pending.clear()
        self._partial = ""

    def _complete(self, text: str | None = None) -> None:
        segments = self._committed + self._pending if text is None else []
        latency = time.monotonic() - (self._stopped_at or time.monotonic())
        if text is None:
            text = join_segments(self.options.language, [s.text for s in segments])
        if not self._done.done():
            self._done.set_result(
                Transcript(
                    text, segments, self.audio_seconds, latency, self.reconnects, self.replayed_bytes, self.adapter.name
                )
            )

    def _report_partial(self) -> None:
        if self._on_partial is None:
            return
        texts = [s.text for s in self._committed + self._pending]
        if self._partial:
            texts.append(self._partial)
        try:
            self._on_partial(join_segments(self.options.language, texts))
        except Exception:
            _LOGGER.exception("session %s: partial listener failed", self.id)


# Failures a fallback engine can make up for (not the client's own: bad audio, an utterance too long).
_VENDOR_FAILURES = frozenset({"vendor-rejected", "vendor-error", "timeout"})


class FallbackSession(Session):
    """A session whose routed vendor gets ``limits.fallback_after`` after the end of audio; if it fails or is
    still silent then, the whole utterance (kept in memory, bounded by ``max_audio_seconds``) goes to the
    fallback engine, whose transcript says it came from there. An early vendor failure is not reported to the
    client: the fallback is still to come."""

    def __init__(
        self,
        adapter: VendorAdapter,
        options: StreamOptions,
        limits: SessionLimits,
        fallback: VendorAdapter,
        on_partial: Callable[[str], None] | None = None,
        pool: StreamPool | None = None,
        charge: Callable[[float], None] | None = None,
    ) -> None:
        self.fallback = fallback
        # The fallback's audio is counted again when it is a paid vendor too.
        self._fallback_charge = charge if fallback.paid else None
        self.full_limits = limits
        primary_limits = SessionLimits(
            limits.max_audio_seconds, min(limits.fallback_after, limits.final_timeout), limits.policy
        )
        super().__init__(adapter, options, primary_limits, on_partial, pool, keep_audio=True, charge=charge)
        # What the client sees; the vendor's own outcome (``_done``) stays internal until the fallback had its turn.
        self._public: asyncio.Future[Transcript] = self._loop.create_future()
        self._done.add_done_callback(self._forward)

    @property
    def outcome(self) -> asyncio.Future[Transcript]:
        return self._public

    def _forward(self, primary: asyncio.Future[Transcript]) -> None:
        if self._public.done() or primary.cancelled():
            return
        error = primary.exception()
        if error is None:
            self._public.set_result(primary.result())
        elif not (isinstance(error, SessionError) and error.code in _VENDOR_FAILURES):
            self._public.set_exception(error)
        # A vendor failure waits for finish(), where the fallback runs.

    def fail(self, error: SessionError) -> None:
        super().fail(error)
        if error.code not in _VENDOR_FAILURES and not self._public.done():
            self._public.set_exception(error)

    def answer_now(self, text: str | None = None) -> Transcript:
        result = super().answer_now(text)
        if not self._public.done():
            self._public.set_result(result)
        return result

    async def finish(self) -> Transcript:
        started = time.monotonic()
        try:
            return await super().finish()
        except SessionError as error:
            if error.code not in _VENDOR_FAILURES or self._public.done():
                raise
            primary_error = error
        remaining = self.full_limits.final_timeout - (time.monotonic() - started)
        _LOGGER.warning(
            "session %s: %s gave no transcript (%s); transcribing with the fallback %s",
            self.id,
            self.adapter.name,
            primary_error.message,
            self.fallback.name,
        )
        try:
            result = await self._run_fallback(max(remaining, 0.5))
        except SessionError as error:
            combined = SessionError(
                error.code, f"{primary_error.message}; fallback {self.fallback.name}: {error.message}"
            )
            if not self._public.done():
                self._public.set_exception(combined)
            raise combined from None
        if not self._public.done():
            self._public.set_result(result)
        return result

    async def _run_fallback(self, deadline: float) -> Transcript:
        limits = SessionLimits(self.full_limits.max_audio_seconds, deadline, self.full_limits.policy)
        options = StreamOptions(self.options.language, self.options.phrases, f"{self.id}-fallback")
        async with Session(self.fallback, options, limits, charge=self._fallback_charge) as session:
            session.feed(bytes(self.all_audio or b""), self._target)
            result = await session.finish()
        result.fallback = True
        return result

    async def aclose(self) -> None:
        await self._shutdown()
        if not self._public.done():
            self._public.set_exception(SessionError("cancelled", "the utterance was abandoned"))
        if not self._public.cancelled():
            self._public.exception()


def open_session(
    adapter: VendorAdapter,
    options: StreamOptions,
    limits: SessionLimits,
    *,
    on_partial: Callable[[str], None] | None = None,
    pool: StreamPool | None = None,
    fallback: VendorAdapter | None = None,
    charge: Callable[[float], None] | None = None,
) -> Session:
    """A session for ``adapter`` (not started yet), with ``fallback`` behind it when one is configured and is
    another engine; ``charge`` counts its audio against the audio budget."""
    if fallback is None or fallback is adapter:
        return Session(adapter, options, limits, on_partial, pool, charge=charge)
    return FallbackSession(adapter, options, limits, fallback, on_partial, pool, charge)
