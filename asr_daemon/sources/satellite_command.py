"""One spoken command from a satellite: its audio to a vendor session, its end found by endpointing.

``Command`` is what the satellite connection needs of an utterance: take audio, tell when speech began and
ended, and give the outcome once (never raising). ``SessionCommand`` is that on today's parts: the routed
vendor ``Session``, the ``Endpointer`` (``audio/endpoint.py``) and the command's events on the bus (source
``satellite:<name>``), the way the microphone publishes its utterances.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..audio.endpoint import Endpointer, EndpointSettings
from ..audio.format import AudioFormat
from ..budget import AudioBudget, BudgetExhausted
from ..events import AsrEvent, EventBus, EventKind
from ..resilience.prewarm import StreamPool
from ..routing import Router
from ..session import Session, SessionError, SessionLimits, Transcript, open_session
from ..vendors.base import StreamOptions, VendorAdapter

_LOGGER = logging.getLogger(__name__)

NO_SPEECH = "no-speech"


@dataclass(frozen=True, slots=True)
class CommandResult:
    """A command's outcome: ``text`` (possibly empty), or ``error`` as (code, message)."""

    text: str | None = None
    error: tuple[str, str] | None = None


class Command(Protocol):
    """What a satellite connection needs of one utterance."""

    @property
    def speech_heard(self) -> bool: ...

    @property
    def ended(self) -> bool: ...

    def feed(self, pcm: bytes, fmt: AudioFormat) -> None: ...

    async def finish(self, reason: str) -> CommandResult: ...

    async def abort(self, code: str, message: str) -> None: ...


@dataclass(frozen=True)
class CommandContext:
    """What every satellite's commands share (from the daemon)."""

    router: Router
    limits: SessionLimits
    bus: EventBus
    endpoint: EndpointSettings = field(default_factory=EndpointSettings)
    pools: dict[str, StreamPool] | None = None
    observe: Callable[[Session, Transcript | None, SessionError | None], None] | None = None
    fallback: VendorAdapter | None = None
    budget: AudioBudget | None = None


class SessionCommand:
    """A command streamed to the vendor while it is spoken; ends on end of speech or on its ``finish``."""

    def __init__(self, context: CommandContext, source: str, language: str | None, vendor: str | None = None) -> None:
        self.context = context
        self.source = source
        self.language = language
        self.id = uuid.uuid4().hex[:8]
        self.started = time.time()
        self.endpointer: Endpointer | None = None
        self.session: Session | None = None
        self._refused: tuple[str, str] | None = None
        self._partial = ""
        self._finished = False
        router = context.router
        adapter = router.adapters.get(vendor) if vendor else router.route(language)
        if adapter is None:
            self._refused = ("unsupported-language", f"no configured vendor for {source} ({vendor or language!r})")
            return
        charge = None
        if context.budget is not None:
            try:
                charge = context.budget.admit(adapter.name)
            except BudgetExhausted as spent:
                self._refused = (spent.code, spent.message)
                return
        options = StreamOptions(
            language=language or (adapter.languages[0] if adapter.languages else ""), session_id=self.id
        )
        pool = (context.pools or {}).get(adapter.name)
        self.session = open_session(
            adapter,
            options,
            context.limits,
            on_partial=self._on_partial,
            pool=pool,
            fallback=context.fallback,
            charge=charge,
        )
        _LOGGER.info("session %s: %s → %s (%s)", self.id, source, adapter.name, options.language or "-")
        self._publish(EventKind.UTTERANCE_START, started=self.started)

    @property
    def speech_heard(self) -> bool:
        return self.endpointer is not None and self.endpointer.speech_heard

    @property
    def ended(self) -> bool:
        """End of speech, no speech at all, or nothing to stream to: the command can be finished."""
        endpointer = self.endpointer
        if self.session is None:
            return True
        return endpointer is not None and (endpointer.ended or endpointer.no_speech)

    def feed(self, pcm: bytes, fmt: AudioFormat) -> None:
        if self.session is None or self._finished or not pcm:
            return
        endpointer = self.endpointer
        if endpointer is None:
            endpointer = self.endpointer = Endpointer(self.context.endpoint, fmt)
        endpointer.feed(pcm)
        with contextlib.suppress(SessionError):  # the session failed; finish() reports why
            self.session.feed(pcm, fmt)

    async def abort(self, code: str, message: str) -> None:
        if self._finished:
            return
        self._finished = True
        session = self.session
        if session is not None:
            await session.aclose()
        _LOGGER.warning("session %s: %s: %s (%s)", self.id, self.source, message, code)
        self._publish_end()
        self._publish(EventKind.ERROR, code=code, message=message, started=self.started, ended=time.time())

    async def finish(self, reason: str) -> CommandResult:
        if self._finished:
            return CommandResult(error=("cancelled", "the command was already ended"))
        self._finished = True
        ended = time.time()
        session = self.session
        if session is None:
            assert self._refused is not None
            code, message = self._refused
            self._publish(EventKind.ERROR, code=code, message=message, started=self.started, ended=ended)
            return CommandResult(error=self._refused)
        self._publish_end(ended)
        endpointer = self.endpointer
        if endpointer is None or not endpointer.speech_heard:
            await session.aclose()
            message = "no speech was heard after the wake word"
            self._publish(EventKind.ERROR, code=NO_SPEECH, message=message, started=self.started, ended=ended)
            return CommandResult(error=(NO_SPEECH, message))
        try:
            result = await session.finish()
        except SessionError as error:
            if self.context.observe is not None:
                self.context.observe(session, None, error)
            level = logging.ERROR if error.fatal else logging.WARNING
            _LOGGER.log(level, "session %s: %s failed: %s (%s)", self.id, self.source, error.message, error.code)
            self._publish(
                EventKind.ERROR,
                code=error.code,
                message=error.message,
                started=self.started,
                ended=ended,
                audio_seconds=session.audio_seconds,
            )
            return CommandResult(error=(error.code, error.message))
        finally:
            await session.aclose()
        if self.context.observe is not None:
            self.context.observe(session, result, None)
        _LOGGER.info(
            "session %s: %s, %.1f s of audio (%s) → %d chars",
            self.id,
            self.source,
            result.audio_seconds,
            reason,
            len(result.text),
        )
        self._publish(
            EventKind.TRANSCRIPT,
            text=result.text,
            started=self.started,
            ended=ended,
            audio_seconds=result.audio_seconds,
            latency=result.final_latency,
            engine=result.engine if result.fallback else None,
        )
        return CommandResult(text=result.text)

    def _on_partial(self, text: str) -> None:
        if text != self._partial and not self._finished:
            self._partial = text
            self._publish(EventKind.PARTIAL, text=text)

    def _publish_end(self, ended: float | None = None) -> None:
        session = self.session
        if session is not None:
            self._publish(
                EventKind.UTTERANCE_END,
                started=self.started,
                ended=ended or time.time(),
                audio_seconds=session.audio_seconds,
            )

    def _publish(self, kind: EventKind, **fields: Any) -> None:
        session = self.session
        self.context.bus.publish(
            AsrEvent(
                kind,
                self.source,
                session=self.id,
                vendor=session.adapter.name if session is not None else None,
                language=(session.options.language or None) if session is not None else self.language,
                **fields,
            )
        )
