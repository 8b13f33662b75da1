"""One Wyoming connection: Home Assistant (or a satellite through it) asking for one transcript.

``transcribe`` picks the vendor by language, ``audio-start`` opens the vendor stream, each ``audio-chunk`` is
forwarded as it arrives, and ``audio-stop`` waits (bounded) for the final. Partials go out as
``transcript-start``/``transcript-chunk``; the answer is ``transcript`` + ``transcript-stop`` or an ``error``,
after which the connection is closed (Home Assistant opens a new one per utterance). An answer known before
``audio-stop`` (a failure, or with endpointing the end of speech) is sent at once, and the connection keeps
reading, and dropping, audio until ``audio-stop`` or the client's close: closing earlier would make Home
Assistant 2025.x's next audio write fail, and 2026.x stops uploading when it reads the transcript.

Only audio keeps an utterance alive: one that gets no audio for ``idle_timeout`` (other events do not count),
or has no ``audio-stop`` within ``utterance_wall_seconds`` of its start, is answered with an error and the
connection closed, whatever the client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioStart
from wyoming.error import Error
from wyoming.event import Event, write_event
from wyoming.server import AsyncEventHandler

from ..budget import AudioBudget
from ..events import EventBus
from ..quiet_timer import QuietTimer
from ..redact import redact
from ..routing import Router
from ..session import Session, SessionError, SessionLimits, input_format_error
from ..session import Transcript as SessionTranscript
from ..utterance import Answer, Utterance, UtteranceServices
from ..vendors.base import AudioFormat, VendorAdapter
from ..vendors.prewarm import StreamPool
from .transcribe_request import BadTranscribe, parse_transcribe
from .wyoming_reader import EventStreamReader

if TYPE_CHECKING:
    from ..audio.endpoint import EndpointSettings
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
    # End-of-speech detection (``endpointing:``); None: utterances end at audio-stop.
    endpointing: EndpointSettings | None = None

    @cached_property
    def services(self) -> UtteranceServices:
        """What this listener's utterances share (built once, from the fields above)."""
        return UtteranceServices(
            router=self.router,
            limits=self.limits,
            bus=self.events,
            pools=self.pools,
            observe=self.observe,
            fallback=self.fallback,
            budget=self.budget,
            endpointing=self.endpointing,
            sessions=self.sessions,
        )


class WyomingAsrHandler(AsyncEventHandler):
    """Handles one client connection (built with ``functools.partial(WyomingAsrHandler, context)``).

    Connection work only: reading events, writing answers, ``describe``, the utterance's limits on the
    connection. The utterance itself (routing, session, events, metrics, endpointing) is an ``Utterance``.
    """

    # False: every partial goes through the pump task and the answer through a task of its own (the plain paths;
    # see _write_partial_now and _write_answer_now).
    direct_writes = True

    def __init__(self, context: HandlerContext, reader: EventStreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.event_reader = reader
        self.context = context
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "local"
        # The client's IP address, for its audio budget (None: a Unix socket).
        self.client_address: str | None = str(peer[0]) if isinstance(peer, tuple) and peer else None
        self._write_lock = asyncio.Lock()
        self._request = Transcribe()
        self._utterance: Utterance | None = None
        # Writing the current utterance's answer (transcript or error) to the client.
        self._answering: asyncio.Task[None] | None = None
        # Streaming transcripts: the latest hypothesis, the text transcript-chunks already carried, and whether
        # transcript-start went out.
        self._latest_partial = ""
        self._chunked_text = ""
        self._stream_started = False
        self._partial_wakeup = asyncio.Event()
        # Partials go to the client (from the utterance's open to its answer); the pump is started only when one
        # cannot be written at once (see _write_partial_now).
        self._partials_open = False
        self._partial_pump: asyncio.Task[None] | None = None
        self._closing = False
        self.source = f"wyoming:{self.peer}"
        # The last audio-chunk format, reused while chunks repeat it (they all do).
        self._chunk_format: AudioFormat | None = None
        # The utterance's limits: time without client audio, and time since its start.
        self._audio_quiet: QuietTimer | None = None
        self._wall_limit: asyncio.TimerHandle | None = None
        self._cut: asyncio.Task[None] | None = None

    @property
    def log_prefix(self) -> str:
        """How log lines name this connection: its session id while an utterance runs, and the peer."""
        utterance = self._utterance
        return f"session {utterance.id}: {self.peer}" if utterance is not None else self.peer

    @property
    def in_utterance(self) -> bool:
        return self._utterance is not None

    # -- reading -----------------------------------------------------------------------------------------

    async def run(self) -> None:
        reader = self.event_reader
        reader.idle_timeout = self.context.idle_timeout
        reader.take_now = self._take_chunk
        try:
            while not self._closing:
                try:
                    event = await reader.read_event()
                except TimeoutError:
                    _LOGGER.info("%s: no event for %g s; closing", self.log_prefix, self.context.idle_timeout)
                    await self._answer_error("idle", f"no event for {self.context.idle_timeout:g} s")
                    break
                except (AttributeError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
                    _LOGGER.warning("%s: malformed event (%s); closing", self.log_prefix, type(exc).__name__)
                    await self._answer_error("bad-event", "malformed event: expected a JSON object with a 'type'")
                    break
                if event is None:
                    if reader.violation:
                        _LOGGER.warning("%s: %s; closing", self.log_prefix, reader.violation)
                        await self._answer_error("too-large", reader.violation)
                    elif reader.malformed and not self._closing:
                        _LOGGER.warning("%s: malformed event (not JSON); closing", self.log_prefix)
                        await self._answer_error("bad-event", "malformed event: the header or data is not JSON")
                    elif self._utterance is not None and not self._closing:
                        _LOGGER.info("%s: disconnected mid-utterance (no audio-stop)", self.log_prefix)
                    break
                try:
                    keep_going = await self.handle_event(event)
                except Exception as exc:
                    # A bug of ours: the client gets an answer saying so (not silence), the log the traceback.
                    _LOGGER.exception("%s: failed to handle a %s event; closing", self.log_prefix, event.type)
                    await self._answer_error("internal", f"internal error handling {event.type}: {exc}")
                    break
                if not keep_going:
                    break
        finally:
            reader.close()
            await self.disconnect()
            self.writer.close()

    async def stop(self) -> None:
        """Stop reading (the daemon is shutting down); an event being handled is finished first."""
        self._closing = True
        self.event_reader.close()

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
        await self._end_utterance()

    # -- events ------------------------------------------------------------------------------------------

    async def _on_transcribe(self, event: Event) -> bool:
        if self._utterance is not None:
            _LOGGER.warning("%s: transcribe during an utterance ignored", self.log_prefix)
            return True
        try:
            request = parse_transcribe(event)
        except BadTranscribe as exc:
            await self._answer_error("bad-event", str(exc))
            return True
        if request.language is not None and len(request.language) > MAX_LANGUAGE_CHARS:
            _LOGGER.warning(
                "%s: transcribe with a %d-character language refused", self.log_prefix, len(request.language)
            )
            await self._answer_error("bad-event", f"transcribe: 'language' longer than {MAX_LANGUAGE_CHARS} characters")
            return True
        self._request = request
        return True

    async def _on_audio_start(self, event: Event) -> bool:
        try:
            start = AudioStart.from_event(event)
            fmt = _format_of(start.rate, start.width, start.channels)
        except (KeyError, TypeError, ValueError, AttributeError):
            await self._end_utterance()
            self._new_utterance().fail(SessionError("bad-event", "audio-start needs integer rate, width and channels"))
            return True
        if self._utterance is not None:
            _LOGGER.warning("%s: audio-start during an utterance; the previous one is abandoned", self.log_prefix)
            await self._end_utterance()
        refused = input_format_error(fmt)
        if refused is not None:
            # Refused before a byte of it is read: no vendor stream is opened for it.
            self._new_utterance().fail(refused)
            return True
        self._begin_utterance(fmt)
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
        """Feed a streaming utterance's audio chunk as it arrives, without a task switch.

        Called by the reader while this handler waits for its next event; anything else (another event type,
        no utterance, a bad format) is left to ``handle_event`` in order. Audio of an utterance that no longer
        takes any (answered, or past its end of speech) is discarded here.
        """
        if event.type != AUDIO_CHUNK:
            return False
        quiet = self._audio_quiet
        if quiet is not None:
            quiet.mark()  # only audio keeps an utterance alive
        utterance = self._utterance
        if utterance is None:
            return False
        if not utterance.taking_audio:
            return True
        try:
            fmt = self._format_of_chunk(event.data)
        except (KeyError, TypeError, ValueError, AttributeError):
            return False
        audio = event.payload
        if audio:
            if self.context.metrics is not None:
                self.context.metrics.audio_in_bytes.inc(len(audio))
            utterance.feed(audio, fmt)
        return True

    async def _on_chunk(self, event: Event) -> bool:
        utterance = self._utterance
        if utterance is not None and not utterance.taking_audio:
            return True
        try:
            fmt = self._format_of_chunk(event.data)
        except (KeyError, TypeError, ValueError, AttributeError):
            error = SessionError("bad-event", "audio-chunk needs integer rate, width and channels")
            (utterance or self._new_utterance()).fail(error)
            return True
        if utterance is None:
            # Chunks without audio-start: the chunk's own format starts the utterance.
            self._begin_utterance(fmt)
        self._take_chunk(event)
        return True

    async def _on_audio_stop(self) -> bool:
        utterance = self._utterance
        if utterance is None:
            await self._answer_error("bad-event", "audio-stop without audio")
            return False
        self._stop_limits()  # from here final_timeout bounds the wait
        await utterance.finish()
        # The answer is on its way (or already out): it goes out before we close.
        answering = self._answering
        if answering is not None:
            await answering
        await self._end_utterance()
        return False

    # -- utterance lifecycle -------------------------------------------------------------------------

    def _new_utterance(self) -> Utterance:
        self._latest_partial = self._chunked_text = ""
        self._stream_started = False
        request = self._request
        phrases = (request.transcript_names or []) + (request.transcript_terms or [])
        utterance = Utterance(
            self.context.services,
            self.source,
            language=request.language,
            phrases=tuple(p for p in phrases if isinstance(p, str)),
            client_address=self.client_address,
            on_partial=self._on_partial,
            on_answer=self._on_answer,
        )
        self._utterance = utterance
        self._start_limits()
        return utterance

    def _begin_utterance(self, fmt: AudioFormat) -> None:
        utterance = self._new_utterance()
        if utterance.open(fmt):
            self._partials_open = True

    def _on_answer(self, answer: Answer) -> None:
        if self._utterance is None:
            return  # an abandoned utterance: the client started another or left
        if self.direct_writes and self._write_answer_now(answer):
            return
        self._answering = asyncio.create_task(self._send_answer(answer), name=f"answer {self.peer}")

    async def _send_answer(self, answer: Answer) -> None:
        await self._stop_partials()
        await self._write_data(self._answer_frames(answer))

    def _write_answer_now(self, answer: Answer) -> bool:
        """Hot path of ``_send_answer``: the answer written at once, without a task, where nothing is to wait for.

        That is: no partial pump runs (the partials went out already, in order) and ``_write`` would not wait.
        False: ``_send_answer`` writes it (the plain path).
        """
        if self._partial_pump is not None or not self._can_write_now():
            return False
        self._partials_open = False
        data = self._answer_frames(answer)
        if not self._closing:
            self.writer.transport.write(data)
        return True

    def _answer_frames(self, answer: Answer) -> bytes:
        """The answer's events, framed, in one piece: an error, or the rest of the text and the transcript."""
        if answer.error is not None:
            return _framed(Error(text=redact(answer.error.message), code=answer.error.code).event())
        result = answer.transcript
        assert result is not None
        text = result.text
        events: list[Event] = []
        if text.startswith(self._chunked_text) and len(text) > len(self._chunked_text):
            if not self._stream_started:
                self._stream_started = True
                events.append(TranscriptStart(language=self._request.language).event())
            events.append(TranscriptChunk(text[len(self._chunked_text) :]).event())
        # The transcript says which engine made it when the fallback took over.
        context = {"engine": result.engine, "fallback": True} if result.fallback else None
        events.append(Transcript(text=text, language=self._request.language, context=context).event())
        if self._stream_started:
            events.append(TranscriptStop().event())
        return b"".join(_framed(event) for event in events)

    async def _end_utterance(self) -> None:
        self._stop_limits()
        await self._stop_partials()
        utterance, self._utterance = self._utterance, None
        answering, self._answering = self._answering, None
        if utterance is not None:
            await utterance.aclose()
        if answering is not None and not answering.done():
            await answering

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
            self._audio_quiet = None  # it calls back into this handler: no reference cycle outlives the utterance
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
        """End the utterance past its limits: the vendor stream goes at once, the client gets the error (unless
        it was answered already), the connection is closed (the client would otherwise hold it as long as it
        likes)."""
        self._stop_limits()
        _LOGGER.info("%s: %s; closing", self.log_prefix, error.message)
        utterance = self._utterance
        if utterance is not None:
            utterance.fail(error)
            answering = self._answering
            if answering is not None:
                await asyncio.shield(answering)
        self._closing = True
        self.event_reader.close()

    # -- partial transcripts --------------------------------------------------------------------------

    def _on_partial(self, text: str) -> None:
        self._latest_partial = text
        if not self._partials_open:
            return
        if self._partial_pump is None:
            if self.direct_writes and self._write_partial_now(text):
                return
            self._partial_pump = asyncio.create_task(self._pump_partials(), name=f"partials {self.peer}")
        self._partial_wakeup.set()

    def _write_partial_now(self, text: str) -> bool:
        """Hot path of ``_pump_partials``: the partial written from the vendor's result callback, without the pump.

        The pump's way costs an event, a task and a task step per partial. This runs only where ``_write`` would
        not wait either (the socket took everything before, no write is under way) and while no pump runs, so the
        order is the pump's; otherwise (False) the pump takes over. ``direct_writes = False`` is the plain path
        (tests/test_wyoming_partials.py compares what the client gets).
        """
        if not self._can_write_now():
            return False
        chunked = self._chunked_text
        # Chunks only ever append: a revised hypothesis waits until it extends what was sent again.
        if text.startswith(chunked) and len(text) > len(chunked):
            data = _framed(TranscriptChunk(text[len(chunked) :]).event())
            if not self._stream_started:
                self._stream_started = True
                data = _framed(TranscriptStart(language=self._request.language).event()) + data
            self._chunked_text = text
            if not self._closing:
                self.writer.transport.write(data)
        return True

    async def _pump_partials(self) -> None:
        """Send partial progress as transcript-chunk deltas.

        The latest hypothesis wins: a client that reads slowly lags behind, its backlog never piles up.
        """
        while True:
            await self._partial_wakeup.wait()
            self._partial_wakeup.clear()
            if self._partial_pump is None:
                return  # told to stop
            text = self._latest_partial
            # Chunks only ever append: a revised hypothesis waits until it extends what was sent again.
            if text.startswith(self._chunked_text) and len(text) > len(self._chunked_text):
                delta = text[len(self._chunked_text) :]
                await self._start_stream()
                self._chunked_text = text
                await self._write(TranscriptChunk(delta).event())

    async def _stop_partials(self) -> None:
        """Stop the partial pump after the chunk it may be writing (a cancellation could be lost mid-write)."""
        self._partials_open = False
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
        if not self._stream_started:
            self._stream_started = True
            await self._write(TranscriptStart(language=self._request.language).event())

    # -- writing -------------------------------------------------------------------------------------

    async def _answer_error(self, code: str, message: str) -> None:
        await self._write(Error(text=redact(message), code=code).event())

    async def _write(self, event: Event) -> None:
        await self._write_data(_framed(event))

    def _can_write_now(self) -> bool:
        """A write now cannot have to wait: the socket took everything before and no write is under way."""
        transport = self.writer.transport
        return not self._write_lock.locked() and not transport.is_closing() and not transport.get_write_buffer_size()

    async def _write_data(self, data: bytes) -> None:
        if self._closing:
            return
        transport = self.writer.transport
        if not self._write_lock.locked() and not transport.is_closing() and not transport.get_write_buffer_size():
            # Hot path (partials, the transcript): the socket took everything before, so this cannot have to
            # wait; the lock, the timeout and the drain below are for a client that stopped reading.
            transport.write(data)
            return
        try:
            async with self._write_lock, asyncio.timeout(WRITE_TIMEOUT):
                self.writer.write(data)
                await self.writer.drain()
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            _LOGGER.info("%s: cannot write to the client (%s); closing", self.log_prefix, type(exc).__name__)
            self._closing = True
            self.writer.close()
            self.event_reader.close()


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
