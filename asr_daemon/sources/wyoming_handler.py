"""One Wyoming connection: Home Assistant (or a satellite through it) asking for one transcript.

``transcribe`` picks the vendor by language, ``audio-start`` opens the vendor stream, each ``audio-chunk`` is
forwarded as it arrives, and ``audio-stop`` waits (bounded) for the final. Partials go out as
``transcript-start``/``transcript-chunk``; the answer is ``transcript`` + ``transcript-stop`` or an ``error``,
after which the connection is closed (Home Assistant opens a new one per utterance). A failure noticed
before ``audio-stop`` is reported at once and the vendor stream let go, and the connection keeps reading until
``audio-stop``: closing earlier would make Home Assistant's next audio write fail.

Only audio keeps an utterance alive: one that gets no audio for ``idle_timeout`` (other events do not count),
or has no ``audio-stop`` within ``utterance_wall_seconds`` of its start, is answered with an error and the
connection closed, whatever the client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioStart
from wyoming.error import Error
from wyoming.event import Event, write_event
from wyoming.server import AsyncEventHandler

from ..budget import AudioBudget, BudgetExhausted
from ..events import AsrEvent, EventBus, EventKind
from ..quiet_timer import QuietTimer
from ..redact import redact
from ..routing import Router
from ..session import Session, SessionError, SessionLimits, input_format_error, open_session
from ..session import Transcript as SessionTranscript
from ..vendors.base import AudioFormat, StreamOptions, VendorAdapter
from ..vendors.prewarm import StreamPool
from .transcribe_request import BadTranscribe, parse_transcribe
from .wyoming_reader import EventStreamReader

if TYPE_CHECKING:
    from ..service.metrics import Metrics

_LOGGER = logging.getLogger(__name__)

# A client that does not read what we write is given this long per event before we hang up.
WRITE_TIMEOUT = 10.0

# The event types the handler acts on (wyoming's names), compared as plain strings on the hot path.
AUDIO_CHUNK = "audio-chunk"
AUDIO_START = "audio-start"
AUDIO_STOP = "audio-stop"
TRANSCRIBE = "transcribe"
DESCRIBE = "describe"

# Longer than any real language tag (RFC 5646 asks for tags of at least 35 characters to be handled).
MAX_LANGUAGE_CHARS = 64


@dataclass
class HandlerContext:
    """What every connection shares (read-only)."""

    info: Event
    router: Router
    limits: SessionLimits
    idle_timeout: float = 30.0
    # Sessions currently streaming, for status and drain.
    sessions: set[Session] = field(default_factory=set)
    # Utterance start/end, partials, finals and errors go out here (sinks subscribe to the bus).
    events: EventBus = field(default_factory=EventBus)
    # Pre-warmed connections by vendor name (vendors with ``prewarm``).
    pools: dict[str, StreamPool] = field(default_factory=dict)
    # Told of every finished utterance: the session and its transcript or error (metrics, vendor health).
    observe: Callable[[Session, SessionTranscript | None, SessionError | None], None] | None = None
    metrics: Metrics | None = None
    # Takes over an utterance the routed vendor cannot transcribe in time (``fallback_vendor``).
    fallback: VendorAdapter | None = None
    # Seconds from an utterance's start to its audio-stop, however the client behaves.
    utterance_wall_seconds: float = 120.0
    # Seconds of audio for paid vendors (``budget``); None: no budget.
    budget: AudioBudget | None = None


class WyomingAsrHandler(AsyncEventHandler):
    """Handles one client connection (built with ``functools.partial(WyomingAsrHandler, context)``)."""

    def __init__(self, context: HandlerContext, reader: EventStreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.events = reader
        self.context = context
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "local"
        # The client's IP address, for its audio budget (None: a Unix socket).
        self.client_address: str | None = str(peer[0]) if isinstance(peer, tuple) and peer else None
        self._write_lock = asyncio.Lock()
        self._request = Transcribe()
        self._session: Session | None = None
        # The current utterance already got its answer (an early error): swallow audio until audio-stop.
        self._answered = False
        self._in_utterance = False
        self._emitted = ""
        self._started_stream = False
        self._partial_text = ""
        self._partial_wakeup = asyncio.Event()
        self._partial_pump: asyncio.Task[None] | None = None
        self._closing = False
        self._early_failure: asyncio.Task[None] | None = None
        self.source = f"wyoming:{self.peer}"
        # The current utterance's start (wall clock) once utterance-start went out, until utterance-end did.
        self._utterance_started: float | None = None
        self._utterance_ended: float | None = None
        self._published_partial = ""
        # The last audio-chunk format, reused while chunks repeat it (they all do).
        self._chunk_format: AudioFormat | None = None
        # The session refused a chunk taken on the spot: the handler's task answers it.
        self._refused_chunk: SessionError | None = None
        # The utterance's limits: time without client audio, and time since its start.
        self._audio_quiet: QuietTimer | None = None
        self._wall_limit: asyncio.TimerHandle | None = None
        self._cut: asyncio.Task[None] | None = None

    @property
    def who(self) -> str:
        """How log lines name this connection: its session id while an utterance runs, and the peer."""
        return f"session {self._session.id}: {self.peer}" if self._session is not None else self.peer

    @property
    def in_utterance(self) -> bool:
        return self._in_utterance

    # -- reading -----------------------------------------------------------------------------------------

    async def run(self) -> None:
        events = self.events
        events.idle_timeout = self.context.idle_timeout
        events.take_now = self._take_chunk
        try:
            while not self._closing:
                try:
                    event = await events.read_event()
                except TimeoutError:
                    _LOGGER.info("%s: no event for %g s; closing", self.who, self.context.idle_timeout)
                    await self._answer_error("idle", f"no event for {self.context.idle_timeout:g} s")
                    break
                except (AttributeError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
                    _LOGGER.warning("%s: malformed event (%s); closing", self.who, type(exc).__name__)
                    await self._answer_error("bad-event", "malformed event: expected a JSON object with a 'type'")
                    break
                if event is None:
                    if events.violation:
                        _LOGGER.warning("%s: %s; closing", self.who, events.violation)
                        await self._answer_error("too-large", events.violation)
                    elif events.malformed and not self._closing:
                        _LOGGER.warning("%s: malformed event (not JSON); closing", self.who)
                        await self._answer_error("bad-event", "malformed event: the header or data is not JSON")
                    elif self._in_utterance and not self._closing:
                        _LOGGER.info("%s: disconnected mid-utterance (no audio-stop)", self.who)
                    break
                try:
                    keep_going = await self.handle_event(event)
                except Exception as exc:
                    # A bug of ours: the client gets an answer saying so (not silence), the log the traceback.
                    _LOGGER.exception("%s: failed to handle a %s event; closing", self.who, event.type)
                    await self._answer_error("internal", f"internal error handling {event.type}: {exc}")
                    break
                if not keep_going:
                    break
        finally:
            events.close()
            await self.disconnect()
            self.writer.close()

    async def stop(self) -> None:
        """Stop reading (the daemon is shutting down); an event being handled is finished first."""
        self._closing = True
        self.events.close()

    async def handle_event(self, event: Event) -> bool:
        event_type = event.type
        if event_type == AUDIO_CHUNK:
            return await self._on_chunk(event)
        if event_type == AUDIO_START:
            return await self._on_audio_start(event)
        if event_type == AUDIO_STOP:
            return await self._on_audio_stop()
        if event_type == TRANSCRIBE:
            return await self._on_transcribe(event)
        if event_type == DESCRIBE:
            await self._write(self.context.info)
            return True
        return True

    async def disconnect(self) -> None:
        await self._end_session()

    # -- events ------------------------------------------------------------------------------------------

    async def _on_transcribe(self, event: Event) -> bool:
        if self._in_utterance:
            _LOGGER.warning("%s: transcribe during an utterance ignored", self.who)
            return True
        try:
            request = parse_transcribe(event)
        except BadTranscribe as exc:
            await self._answer_error("bad-event", str(exc))
            return True
        if request.language is not None and len(request.language) > MAX_LANGUAGE_CHARS:
            _LOGGER.warning("%s: transcribe with a %d-character language refused", self.who, len(request.language))
            await self._answer_error("bad-event", f"transcribe: 'language' longer than {MAX_LANGUAGE_CHARS} characters")
            return True
        self._request = request
        return True

    async def _on_audio_start(self, event: Event) -> bool:
        try:
            start = AudioStart.from_event(event)
            fmt = _format_of(start.rate, start.width, start.channels)
        except (KeyError, TypeError, ValueError, AttributeError):
            await self._answer_error("bad-event", "audio-start needs integer rate, width and channels")
            self._in_utterance, self._answered = True, True
            self._start_limits()
            return True
        if self._in_utterance:
            _LOGGER.warning("%s: audio-start during an utterance; the previous one is abandoned", self.who)
            await self._end_session()
        refused = input_format_error(fmt)
        if refused is not None:
            # Refused before a byte of it is read: no vendor stream is opened for it.
            self._answered = False
            await self._fail_utterance(refused)
            self._in_utterance = True
            self._start_limits()
            return True
        await self._begin_utterance(fmt)
        return True

    def _format_of_chunk(self, data: dict[str, Any]) -> AudioFormat:
        """An audio-chunk's format; the previous chunk's object while it repeats (raises for a bad one)."""
        fmt = self._chunk_format
        rate, width, channels = data["rate"], data["width"], data["channels"]
        if (
            fmt is None
            or rate != fmt.rate
            or width != fmt.width
            or channels != fmt.channels
            or type(rate) is not int
            or type(width) is not int
            or type(channels) is not int
        ):
            fmt = self._chunk_format = _format_of(rate, width, channels)
        return fmt

    def _take_chunk(self, event: Event) -> bool:
        """Feed a streaming utterance's audio chunk to its session as it arrives, without a task switch.

        Called by the reader while this handler waits for its next event; anything else (another event type,
        no session, a bad format, audio the session refuses) is left to ``handle_event`` in order.
        """
        if event.type != AUDIO_CHUNK:
            return False
        quiet = self._audio_quiet
        if quiet is not None:
            quiet.mark()  # only audio keeps an utterance alive
        if self._answered or self._refused_chunk is not None:
            return False
        session = self._session
        if session is None:
            return False
        try:
            fmt = self._format_of_chunk(event.data)
        except (KeyError, TypeError, ValueError, AttributeError):
            return False
        audio = event.payload
        if audio:
            if self.context.metrics is not None:
                self.context.metrics.audio_in_bytes.inc(len(audio))
            try:
                session.feed(audio, fmt)
            except SessionError as error:
                self._refused_chunk = error
                return False
        return True

    async def _on_chunk(self, event: Event) -> bool:
        refused, self._refused_chunk = self._refused_chunk, None
        if refused is not None:
            # Taken on the spot and refused by the session: only the answer is left to give.
            await self._fail_utterance(refused)
            return True
        try:
            fmt = self._format_of_chunk(event.data)
        except (KeyError, TypeError, ValueError, AttributeError):
            if not self._answered:
                await self._fail_utterance(
                    SessionError("bad-event", "audio-chunk needs integer rate, width and channels")
                )
            return True
        if not self._in_utterance:
            # Chunks without audio-start: the chunk's own format starts the utterance.
            await self._begin_utterance(fmt)
        if not self._take_chunk(event):
            refused, self._refused_chunk = self._refused_chunk, None
            if refused is not None:
                await self._fail_utterance(refused)
        return True

    async def _on_audio_stop(self) -> bool:
        if not self._in_utterance:
            await self._answer_error("bad-event", "audio-stop without audio")
            return False
        session = self._session
        self._stop_limits()  # from here final_timeout bounds the wait
        self._publish_utterance_end()
        if session is None or self._answered:
            # An early failure may still be on its way to the client: it goes out before we close.
            early, self._early_failure = self._early_failure, None
            if early is not None:
                await early
            await self._end_session()
            return False
        try:
            result = await session.finish()
        except SessionError as error:
            await self._fail_utterance(error)
            await self._end_session()
            return False
        if self.context.observe is not None:
            self.context.observe(session, result, None)
        await self._stop_partials()
        text = result.text
        if text.startswith(self._emitted) and len(text) > len(self._emitted):
            await self._start_stream()
            await self._write(TranscriptChunk(text[len(self._emitted) :]).event())
        language = self._request.language
        # The transcript says which engine made it when the fallback took over.
        context = {"engine": result.engine, "fallback": True} if result.fallback else None
        await self._write(Transcript(text=text, language=language, context=context).event())
        if self._started_stream:
            await self._write(TranscriptStop().event())
        _LOGGER.info(
            "session %s: %s %s, %.1f s of audio → %d chars, final %.0f ms after audio-stop%s",
            session.id,
            session.adapter.name,
            repr(language) if language else "-",
            result.audio_seconds,
            len(text),
            result.final_latency * 1000,
            "" if text else " (no speech recognised)",
        )
        _LOGGER.debug("session %s: transcript %r", session.id, text)
        self._publish(
            EventKind.TRANSCRIPT,
            text=text,
            started=self._utterance_started,
            ended=self._utterance_ended,
            audio_seconds=result.audio_seconds,
            latency=result.final_latency,
            engine=result.engine if result.fallback else None,
        )
        await self._end_session()
        return False

    # -- utterance lifecycle -------------------------------------------------------------------------

    async def _begin_utterance(self, fmt: AudioFormat) -> None:
        self._in_utterance = True
        self._answered = False
        self._emitted = ""
        self._started_stream = False
        self._published_partial = ""
        self._utterance_started = self._utterance_ended = None
        self._start_limits()
        language = self._request.language
        adapter = self.context.router.route(language)
        session_id = uuid.uuid4().hex[:8]
        if adapter is None:
            served = ", ".join(self.context.router.languages()) or "none: no vendor is configured"
            await self._fail_utterance(
                SessionError("unsupported-language", f"no vendor serves language {language!r} (served: {served})")
            )
            return
        charge = None
        if self.context.budget is not None:
            try:
                charge = self.context.budget.admit(adapter, self.client_address)
            except BudgetExhausted as spent:
                await self._fail_utterance(SessionError(spent.code, spent.message))
                return
        phrases = tuple((self._request.transcript_names or []) + (self._request.transcript_terms or []))
        options = StreamOptions(
            language=language or (adapter.languages[0] if adapter.languages else ""),
            phrases=tuple(p for p in phrases if isinstance(p, str)),
            session_id=session_id,
        )
        session = open_session(
            adapter,
            options,
            self.context.limits,
            on_partial=self._on_partial,
            pool=self.context.pools.get(adapter.name),
            fallback=self.context.fallback,
            charge=charge,
        )
        self._session = session
        self.context.sessions.add(session)
        session.outcome.add_done_callback(self._on_outcome)
        self._partial_pump = asyncio.create_task(self._pump_partials(), name=f"partials {session_id}")
        self._utterance_started = time.time()
        self._publish(EventKind.UTTERANCE_START, started=self._utterance_started)
        _LOGGER.info(
            "session %s: %s → %s (%s), audio %d Hz/%d-bit/%d ch",
            session_id,
            self.peer,
            adapter.name,
            repr(language) if language else "default",
            fmt.rate,
            fmt.width * 8,
            fmt.channels,
        )

    def _on_outcome(self, outcome: asyncio.Future[SessionTranscript]) -> None:
        # A failure before audio-stop is reported at once (newer Home Assistant reads while it uploads).
        if outcome.cancelled() or self._answered or self._closing:
            return
        error = outcome.exception()
        session = self._session
        if isinstance(error, SessionError) and session is not None and not session.finishing:
            self._early_failure = asyncio.create_task(self._fail_utterance(error))

    async def _fail_utterance(self, error: SessionError) -> None:
        if self._answered:
            # Answered already, perhaps by the early-failure task still writing: let it finish first.
            early = self._early_failure
            if early is not None and early is not asyncio.current_task() and not early.done():
                await early
            return
        self._answered = True
        session = self._session
        sid = session.id if session else "-"
        level = logging.ERROR if error.fatal else logging.WARNING
        _LOGGER.log(level, "session %s: %s failed: %s (%s)", sid, self.peer, error.message, error.code)
        if session is not None and self.context.observe is not None:
            self.context.observe(session, None, error)
        self._publish(
            EventKind.ERROR,
            code=error.code,
            message=redact(error.message),
            started=self._utterance_started,
            ended=self._utterance_ended,
        )
        await self._stop_partials()
        await self._answer_error(error.code, error.message)
        if session is not None:
            session.fail(error)

    async def _end_session(self) -> None:
        self._stop_limits()
        await self._stop_partials()
        self._publish_utterance_end()
        self._utterance_started = None
        session, self._session = self._session, None
        self._in_utterance = False
        if session is not None:
            self.context.sessions.discard(session)
            await session.aclose()

    # -- the utterance's own limits ------------------------------------------------------------------

    def _start_limits(self) -> None:
        """Arm the utterance's limits (idempotent while it runs)."""
        quiet = self._audio_quiet
        if quiet is None:
            quiet = self._audio_quiet = QuietTimer(self.context.idle_timeout, self._on_audio_quiet)
        quiet.mark()
        quiet.start()
        if self._wall_limit is None:
            self._wall_limit = asyncio.get_running_loop().call_later(
                self.context.utterance_wall_seconds, self._on_wall_limit
            )

    def _stop_limits(self) -> None:
        if self._audio_quiet is not None:
            self._audio_quiet.cancel()
        if self._wall_limit is not None:
            self._wall_limit.cancel()
            self._wall_limit = None

    def _on_audio_quiet(self) -> None:
        self._cut_utterance(SessionError("idle", f"no audio for {self.context.idle_timeout:g} s during the utterance"))

    def _on_wall_limit(self) -> None:
        self._wall_limit = None
        self._cut_utterance(
            SessionError(
                "too-long", f"the utterance did not end within {self.context.utterance_wall_seconds:g} s of its start"
            )
        )

    def _cut_utterance(self, error: SessionError) -> None:
        if self._cut is None and not self._closing:
            self._cut = asyncio.create_task(self._cut_connection(error), name=f"cut {self.peer}")

    async def _cut_connection(self, error: SessionError) -> None:
        """End the utterance past its limits: the vendor stream goes at once, the client gets the error, the
        connection is closed (the client would otherwise hold it as long as it likes)."""
        self._stop_limits()
        _LOGGER.info("%s: %s; closing", self.who, error.message)
        session = self._session
        if session is not None:
            session.fail(error)
        await self._fail_utterance(error)
        self._closing = True
        self.events.close()

    # -- partial transcripts --------------------------------------------------------------------------

    def _on_partial(self, text: str) -> None:
        self._partial_text = text
        self._partial_wakeup.set()
        if text != self._published_partial and not self._answered:
            self._published_partial = text
            self._publish(EventKind.PARTIAL, text=text)

    async def _pump_partials(self) -> None:
        """Send partial progress as transcript-chunk deltas.

        The latest hypothesis wins: a client that reads slowly lags behind, its backlog never piles up.
        """
        while True:
            await self._partial_wakeup.wait()
            self._partial_wakeup.clear()
            if self._partial_pump is None:
                return  # told to stop
            text = self._partial_text
            # Chunks only ever append: a revised hypothesis waits until it extends what was sent again.
            if text.startswith(self._emitted) and len(text) > len(self._emitted):
                delta = text[len(self._emitted) :]
                await self._start_stream()
                self._emitted = text
                await self._write(TranscriptChunk(delta).event())

    async def _stop_partials(self) -> None:
        """Stop the partial pump after the chunk it may be writing (a cancellation could be lost mid-write)."""
        pump, self._partial_pump = self._partial_pump, None
        if pump is None:
            return
        self._partial_wakeup.set()
        try:
            async with asyncio.timeout(WRITE_TIMEOUT + 1):
                await asyncio.shield(pump)
        except TimeoutError:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _start_stream(self) -> None:
        if not self._started_stream:
            self._started_stream = True
            await self._write(TranscriptStart(language=self._request.language).event())

    # -- events out ----------------------------------------------------------------------------------

    def _publish(self, kind: EventKind, **fields: Any) -> None:
        if not self.context.events.listened:
            return  # no sink: an event (its id costs a random read) for nobody
        session = self._session
        self.context.events.publish(
            AsrEvent(
                kind,
                self.source,
                session=session.id if session is not None else None,
                vendor=session.adapter.name if session is not None else None,
                language=(session.options.language if session is not None else None) or self._request.language,
                **fields,
            )
        )

    def _publish_utterance_end(self) -> None:
        """utterance-end, once per utterance that had an utterance-start."""
        if self._utterance_started is None or self._utterance_ended is not None:
            return
        self._utterance_ended = time.time()
        session = self._session
        self._publish(
            EventKind.UTTERANCE_END,
            started=self._utterance_started,
            ended=self._utterance_ended,
            audio_seconds=session.audio_seconds if session is not None else None,
        )

    # -- writing -------------------------------------------------------------------------------------

    async def _answer_error(self, code: str, message: str) -> None:
        await self._write(Error(text=redact(message), code=code).event())

    async def _write(self, event: Event) -> None:
        if self._closing:
            return
        try:
            async with self._write_lock, asyncio.timeout(WRITE_TIMEOUT):
                self.writer.write(_framed(event))
                await self.writer.drain()
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            _LOGGER.info("%s: cannot write to the client (%s); closing", self.who, type(exc).__name__)
            self._closing = True
            self.writer.close()
            self.events.close()


def _framed(event: Event) -> bytes:
    """The event as the ``wyoming`` package frames it, in one piece: one socket write per event, not three."""
    out = io.BytesIO()
    write_event(event, out)
    return out.getvalue()


def _format_of(rate: object, width: object, channels: object) -> AudioFormat:
    values = (rate, width, channels)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError("bad audio format")
    return AudioFormat(int(rate), int(width), int(channels))  # type: ignore[call-overload]
