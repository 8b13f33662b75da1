"""One utterance, whatever its source: from routing to one transcript or one error.

A source (a Wyoming connection, the microphone) builds an ``Utterance``, opens it, feeds it audio and says when
its audio ended; the rest happens here: routing by language, the audio budget, the vendor session, partial
hypotheses, the events on the bus (utterance-start, partial, utterance-end, then transcript or error), metrics
(``observe``) and the log. Every way an utterance ends (a transcript, a refusal, bad audio, a vendor failure, a
limit, the client leaving) resolves ``answer`` once, through one route; the source sends what it resolves with.

With endpointing (``UtteranceServices.endpointing``) the utterance also ends itself once a local detector has
heard the speech end: it answers at once when the vendor's finals already cover all the speech, else it ends
the vendor stream and answers with its final. Audio after that end is discarded, never sent to the vendor. A
recording (audio that starts with a RIFF/WAVE header) is never cut this way. See docs/endpointing.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .budget import AudioBudget, BudgetExhausted
from .events import AsrEvent, EventBus, EventKind
from .redact import redact
from .routing import Router
from .session import Session, SessionError, SessionLimits, Transcript, open_session
from .vendors.base import AudioFormat, StreamOptions, VendorAdapter

if TYPE_CHECKING:
    from .audio.endpoint import Endpointer, EndpointSettings
    from .vendors.prewarm import StreamPool

_LOGGER = logging.getLogger(__name__)

# A vendor times a final at the end of its last word; the detector's last voiced frame comes later (the word's
# trailing sound, breath). A final ending this close to it, with no hypothesis pending after it, has it all.
FINAL_END_SLACK = 0.3

# Told of every utterance that had a session: its transcript or its error (metrics, vendor health).
Observer = Callable[[Session, Transcript | None, SessionError | None], None]


async def finish_in_time(finishing: set[asyncio.Task[None]], timeout: float) -> None:
    """At shutdown: let utterances waiting for their transcript finish within ``timeout``, then cancel the rest
    (each reports its own error)."""
    pending = set(finishing)
    if not pending:
        return
    _, late = await asyncio.wait(pending, timeout=timeout)
    for straggler in late:
        straggler.cancel()
    for straggler in late:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await straggler


@dataclass
class UtteranceServices:
    """What every utterance of a source uses (shared, read-only)."""

    router: Router
    limits: SessionLimits
    bus: EventBus
    # Pre-warmed connections by vendor name (vendors with ``prewarm``).
    pools: Mapping[str, StreamPool] = field(default_factory=dict)
    observe: Observer | None = None
    # Takes over an utterance the routed vendor cannot transcribe in time (``fallback_vendor``).
    fallback: VendorAdapter | None = None
    budget: AudioBudget | None = None
    # End-of-speech detection (``endpointing:``); None: the source alone says when the audio ends.
    endpointing: EndpointSettings | None = None
    # Sessions streaming now, for status and drain.
    sessions: set[Session] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Answer:
    """How an utterance ended: a transcript or an error (exactly one)."""

    transcript: Transcript | None = None
    error: SessionError | None = None


class Utterance:
    """One utterance of one source; ``open()``, ``feed()`` its audio, ``finish()`` at its end, ``aclose()``."""

    def __init__(
        self,
        services: UtteranceServices,
        source: str,
        *,
        language: str | None = None,
        phrases: tuple[str, ...] = (),
        vendor: str | None = None,
        client_address: str | None = None,
        started: float | None = None,
        on_partial: Callable[[str], None] | None = None,
        on_answer: Callable[[Answer], None] | None = None,
        pool: StreamPool | None = None,
        endpointing: bool = True,
        ends_itself: bool = True,
        publish_empty: bool = True,
        log_refusals: bool = True,
    ) -> None:
        self.services = services
        # The events' source (``wyoming:<peer>``, ``mic:<device>``), also how the log names the client.
        self.source = source
        self.language = language
        self.phrases = phrases
        self.vendor = vendor
        self.client_address = client_address
        # Names the utterance in logs and events; random, not a uuid4 (one system call less per utterance).
        self.id = f"{random.getrandbits(32):08x}"
        self.started = started
        self.ended: float | None = None
        self.session: Session | None = None
        # Resolves once, with the transcript or the error; the source sends it.
        self._loop = asyncio.get_running_loop()
        self.answer: asyncio.Future[Answer] = self._loop.create_future()
        self._on_partial = on_partial
        self._on_answer = on_answer
        self._pool = pool
        self._publish_empty = publish_empty
        self._log_refusals = log_refusals
        self._published_partial = ""
        self._endpoint_settings = services.endpointing if endpointing else None
        # The detector ends the utterance (else it only tells, at the source's end of audio, whether the
        # vendor's finals already cover the speech: a source that cuts utterances itself, like the microphone).
        self._ends_itself = ends_itself
        self._endpointer: Endpointer | None = None
        # No more audio goes to the vendor: the speech or the client's audio ended.
        self._audio_ended = False
        self._speech_ended = False
        self._finishing: asyncio.Task[None] | None = None

    @property
    def answered(self) -> bool:
        return self.answer.done()

    @property
    def speech_ended(self) -> bool:
        """The detector heard the end of speech (or none at all) and ended the utterance."""
        return self._speech_ended

    @property
    def speech_heard(self) -> bool:
        """The end-of-speech detector heard speech (never without endpointing)."""
        return self._endpointer is not None and self._endpointer.speech_heard

    @property
    def taking_audio(self) -> bool:
        """Audio fed now still goes to the vendor (not yet answered, not past the end of speech)."""
        return not self._audio_ended and not self.answer.done()

    # -- the source's side -----------------------------------------------------------------------------

    def open(self, fmt: AudioFormat | None = None) -> bool:
        """Route, admit against the budget and start the vendor session; False when refused (already answered)."""
        services = self.services
        router = services.router
        adapter = router.adapters.get(self.vendor) if self.vendor is not None else router.route(self.language)
        if adapter is None:
            if self.vendor is not None:
                unrouted = f"vendor {self.vendor!r} is not configured"
            else:
                served = ", ".join(router.languages()) or "none: no vendor is configured"
                unrouted = f"no vendor serves language {self.language!r} (served: {served})"
            self.fail(SessionError("unsupported-language", unrouted))
            return False
        charge = None
        if services.budget is not None:
            try:
                charge = services.budget.admit(adapter, self.client_address)
            except BudgetExhausted as spent:
                self.fail(SessionError(spent.code, spent.message))
                return False
        options = StreamOptions(
            language=self.language or (adapter.languages[0] if adapter.languages else ""),
            phrases=self.phrases,
            session_id=self.id,
        )
        session = open_session(
            adapter,
            options,
            services.limits,
            on_partial=self._partial,
            pool=self._pool if self._pool is not None else services.pools.get(adapter.name),
            fallback=services.fallback,
            charge=charge,
        ).start()
        self.session = session
        services.sessions.add(session)
        session.outcome.add_done_callback(self._on_outcome)
        if self.started is None:
            self.started = time.time()
        self._publish(EventKind.UTTERANCE_START, started=self.started)
        if _LOGGER.isEnabledFor(logging.DEBUG):
            # At info an utterance is one line, written when it ends (a Pi's journal keeps months of them).
            audio = f", audio {fmt.rate} Hz/{fmt.width * 8}-bit/{fmt.channels} ch" if fmt is not None else ""
            _LOGGER.debug(
                "session %s: %s → %s (%s)%s",
                self.id,
                self.source,
                adapter.name,
                repr(self.language) if self.language else "default",
                audio,
            )
        return True

    def feed(self, data: bytes, fmt: AudioFormat) -> None:
        """Client audio (any accepted format); discarded once the utterance no longer takes audio."""
        session = self.session
        if session is None or self._audio_ended:
            return
        try:
            pcm = session.feed(data, fmt)
        except SessionError as error:
            self.fail(error)
            return
        endpointer = self._endpointer
        if endpointer is not None:
            endpointer.feed(pcm)
            if (endpointer.ended or endpointer.no_speech) and self._ends_itself:
                self._end_of_speech(session, endpointer)
        elif self._endpoint_settings is not None and pcm:
            self._start_endpointing(session, pcm)

    async def finish(self) -> Answer:
        """The source's audio ended: wait (bounded by the session's limits) for the answer."""
        self._publish_end()
        if not self._audio_ended:
            self._audio_ended = True
            session = self.session
            if session is not None and not self.answer.done():
                endpointer = self._endpointer
                if endpointer is not None and endpointer.speech_heard and self._covered(session, endpointer):
                    self._answer_now(session, None, "the finals cover the speech")
                else:
                    if endpointer is not None:
                        _LOGGER.debug(
                            "session %s: end of audio; speech to %.2f s, finals to %s s: ending the vendor stream",
                            self.id,
                            endpointer.last_voiced_end,
                            session.finals_end,
                        )
                    self._finishing = self._loop.create_task(self._finish_session(session), name=f"final {self.id}")
        if self._finishing is not None:
            await asyncio.shield(self._finishing)
        if not self.answer.done():
            self.fail(SessionError("internal", "the utterance ended without a session"))
        return self.answer.result()

    def fail(self, error: SessionError) -> None:
        """End the utterance with ``error`` (the one failure route; ignored once answered)."""
        if self.answer.done():
            return
        session = self.session
        if session is not None or self._log_refusals:
            level = logging.ERROR if error.fatal else logging.WARNING
            _LOGGER.log(level, "session %s: %s failed: %s (%s)", self.id, self.source, error.message, error.code)
        if session is not None and self.services.observe is not None:
            self.services.observe(session, None, error)
        self._publish(
            EventKind.ERROR,
            code=error.code,
            message=redact(error.message),
            started=self.started,
            ended=self.ended,
            audio_seconds=session.audio_seconds if session is not None else None,
        )
        if session is not None:
            session.fail(error)
        self._resolve(Answer(error=error))

    async def aclose(self) -> None:
        """Let everything go; an utterance not answered yet is answered with an error (the client left)."""
        self._audio_ended = True
        self._publish_end()
        finishing, self._finishing = self._finishing, None
        if finishing is not None and not finishing.done():
            finishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await finishing
        if not self.answer.done():
            self.fail(SessionError("cancelled", "the utterance was abandoned before its end"))
        session = self.session
        if session is not None:
            self.services.sessions.discard(session)
            await session.aclose()

    # -- the end of speech -----------------------------------------------------------------------------

    def _start_endpointing(self, session: Session, pcm: bytes) -> None:
        settings = self._endpoint_settings
        self._endpoint_settings = None
        if settings is None or session.is_recording:
            # A recording's pauses are part of it: its end is the end of the upload.
            _LOGGER.debug("session %s: a recording (WAV header): not cut at pauses", self.id)
            return
        from .audio.endpoint import Endpointer

        self._endpointer = endpointer = Endpointer(settings, session.audio_format)
        endpointer.feed(pcm)
        if (endpointer.ended or endpointer.no_speech) and self._ends_itself:
            self._end_of_speech(session, endpointer)

    def _end_of_speech(self, session: Session, endpointer: Endpointer) -> None:
        self._audio_ended = self._speech_ended = True
        self._publish_end()
        if self.answer.done():
            return
        if endpointer.no_speech and not endpointer.speech_heard:
            self._answer_now(session, "", "no speech")
        elif self._covered(session, endpointer):
            self._answer_now(session, None, "the finals cover the speech")
        else:
            _LOGGER.debug(
                "session %s: end of speech at %.2f s of audio, finals to %s s; ending the vendor stream",
                self.id,
                endpointer.last_voiced_end,
                session.finals_end,
            )
            self._finishing = self._loop.create_task(self._finish_session(session), name=f"final {self.id}")

    @staticmethod
    def _covered(session: Session, endpointer: Endpointer) -> bool:
        """The vendor's finals reach the last voiced audio and it holds no other hypothesis: nothing said is still
        unrecognised."""
        finals_end = session.finals_end
        return (
            finals_end is not None
            and finals_end >= endpointer.last_voiced_end - FINAL_END_SLACK
            and not session.partial_pending
            # A vendor that failed already (held for the fallback engine) covers nothing.
            and not session.done
        )

    def _answer_now(self, session: Session, text: str | None, reason: str) -> None:
        _LOGGER.debug("session %s: end of speech (%s): answering now", self.id, reason)
        try:
            result = session.answer_now(text)
        except SessionError as error:
            self.fail(error)
            return
        self._answer(session, result)

    # -- internals -------------------------------------------------------------------------------------

    async def _finish_session(self, session: Session) -> None:
        try:
            result = await session.finish()
        except SessionError as error:
            self.fail(error)
            return
        self._answer(session, result)

    def _answer(self, session: Session, result: Transcript) -> None:
        if self.answer.done():
            return
        if self.services.observe is not None:
            self.services.observe(session, result, None)
        text = result.text
        _LOGGER.info(
            "session %s: %s → %s %s, %.1f s of audio → %d chars, final %.0f ms after the end of audio%s",
            self.id,
            self.source,
            session.adapter.name,
            repr(session.options.language) if session.options.language else "-",
            result.audio_seconds,
            len(text),
            result.final_latency * 1000,
            "" if text else " (no speech recognised)",
        )
        _LOGGER.debug("session %s: transcript %r", self.id, text)
        if text or self._publish_empty:
            self._publish(
                EventKind.TRANSCRIPT,
                text=text,
                started=self.started,
                ended=self.ended,
                audio_seconds=result.audio_seconds,
                latency=result.final_latency,
                engine=result.engine if result.fallback else None,
            )
        self._resolve(Answer(transcript=result))

    def _resolve(self, answer: Answer) -> None:
        self.answer.set_result(answer)
        if self._on_answer is not None:
            # Told at once, so that the source's reply is under way before anything else happens.
            self._on_answer(answer)

    def _on_outcome(self, outcome: asyncio.Future[Transcript]) -> None:
        # A vendor failure before the end of audio is reported at once (newer Home Assistant reads while it
        # uploads); one after it is finish()'s to report.
        if outcome.cancelled() or self.answer.done():
            return
        error = outcome.exception()
        session = self.session
        if isinstance(error, SessionError) and session is not None and not session.finishing:
            self.fail(error)

    def _partial(self, text: str) -> None:
        if self.answer.done():
            return
        if text != self._published_partial:
            self._published_partial = text
            self._publish(EventKind.PARTIAL, text=text)
        if self._on_partial is not None:
            self._on_partial(text)

    def _publish_end(self) -> None:
        """utterance-end, once, for an utterance that had an utterance-start."""
        if self.session is None or self.ended is not None:
            return
        self.ended = time.time()
        self._publish(
            EventKind.UTTERANCE_END, started=self.started, ended=self.ended, audio_seconds=self.session.audio_seconds
        )

    def _publish(self, kind: EventKind, **fields: Any) -> None:
        bus = self.services.bus
        if not bus.listened:
            return  # no sink: an event (its id costs a random read) for nobody
        session = self.session
        bus.publish(
            AsrEvent(
                kind,
                self.source,
                session=self.id,
                vendor=session.adapter.name if session is not None else None,
                language=(session.options.language if session is not None else None) or self.language,
                **fields,
            )
        )
