"""The ``local`` vendor: settings, start-up checks and the stream factory for the offline engine.

Nothing here connects anywhere: ``open_stream`` returns a ``LocalStream`` that decodes in a worker thread.
``url`` and ``api_key`` exist because every vendor has them; this one ignores them.
"""

from __future__ import annotations

import asyncio
import threading
from typing import ClassVar

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ...resilience.policy import ResiliencePolicy
from ...settings import VendorSettings
from ..base import Stream, StreamCodec, StreamOptions, VendorAdapter, VendorError, VendorFailure
from .codec import LocalCodec
from .engine import EngineConfig, LocalEngine, LocalStream
from .grammar import EngineUnavailable, Grammar, GrammarError, build_grammar, check_phrases, missing_reason


class LocalSettings(VendorSettings):
    """``vendors.local``: pocketsphinx with the en-US model from its wheel; open dictation or a command grammar."""

    url: str | None = Field(default=None, description="Not used: the local engine runs in the daemon")
    languages: list[str] = Field(
        default_factory=lambda: ["en", "en-US"],
        description="Wyoming language codes routed to the local engine (its model is US English)",
    )
    phrases: list[str] = Field(
        default_factory=list,
        description="Command phrases recognised exactly (a grammar is made of them); empty and no grammar: "
        "open dictation",
    )
    grammar_rule: str | None = Field(
        default=None, description="Rule of the grammar file to start from; default: its first public rule"
    )
    grammar: str | None = Field(
        default=None, description="JSGF grammar file of the commands to recognise (with phrases: either)"
    )
    max_streams: int = Field(
        default=2, ge=1, le=16, description="Utterances decoded at once (each holds a decoder in memory)"
    )
    keep_loaded: bool = Field(
        default=True, description="Keep a decoder loaded between utterances (else each utterance loads one)"
    )
    sentence_pause: float = Field(
        default=0.8, ge=0.3, le=10, description="Seconds of silence that end a sentence (one final per sentence)"
    )

    @field_validator("phrases")
    @classmethod
    def _check_phrases(cls, value: list[str]) -> list[str]:
        if value:
            try:
                check_phrases(value)
            except (GrammarError, EngineUnavailable) as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("grammar")
    @classmethod
    def _check_grammar(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        try:
            build_grammar(value, info.data.get("grammar_rule"), info.data.get("phrases") or [])
        except (GrammarError, EngineUnavailable) as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _check_engine(self) -> LocalSettings:
        if self.grammar_rule is not None and self.grammar is None:
            raise ValueError("grammar_rule is set but grammar (the JSGF file) is not")
        reason = missing_reason()
        if reason is not None:
            raise ValueError(reason)
        return self


class LocalAdapter(VendorAdapter):
    """The offline engine. One adapter owns one ``LocalEngine`` (its decoders), shared by all its streams."""

    name: ClassVar[str] = "local"
    settings_model: ClassVar[type[VendorSettings]] = LocalSettings
    default_url: ClassVar[str] = ""
    codec_class: ClassVar[type[StreamCodec]] = LocalCodec
    stream_class: ClassVar[type[Stream]] = LocalStream
    # Decoded on this machine: its audio costs nothing and is never counted against the budget.
    paid: ClassVar[bool] = False
    # Nothing to connect to: ``prewarm`` means the decoder is loaded ahead (it is, with keep_loaded).
    prewarms_connections: ClassVar[bool] = False
    settings: LocalSettings

    def __init__(self, settings: VendorSettings) -> None:
        super().__init__(settings)
        self._engine: LocalEngine | None = None
        self._engine_lock = threading.Lock()
        self._grammar: Grammar | None = None
        self._problem: str | None = None
        try:
            self._grammar = build_grammar(self.settings.grammar, self.settings.grammar_rule, self.settings.phrases)
        except (GrammarError, EngineUnavailable) as exc:
            # Validation normally catches this first; a grammar that broke since is reported per utterance.
            self._problem = f"vendors.local: {exc}"

    def has_credentials(self) -> bool:
        return True

    def secret_carrying_urls(self) -> dict[str, str]:
        return {}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the engine cannot run in this installation (pocketsphinx missing); None when it can."""
        return missing_reason()

    @property
    def grammar(self) -> Grammar | None:
        return self._grammar

    @property
    def mode(self) -> str:
        """What it recognises, for logs: open dictation or the grammar's source."""
        return f"grammar: {self._grammar.description}" if self._grammar else "open dictation"

    @property
    def engine(self) -> LocalEngine:
        with self._engine_lock:
            if self._engine is None:
                settings = self.settings
                self._engine = LocalEngine(
                    EngineConfig(
                        grammar=self._grammar,
                        max_streams=settings.max_streams,
                        keep_loaded=1 if settings.keep_loaded else 0,
                        end_silence_ms=round(settings.sentence_pause * 1000),
                    ),
                    name=self.name,
                )
            return self._engine

    def secrets(self) -> list[str]:
        # api_key is not used, but one configured by mistake is still kept out of the logs.
        return super().secrets()

    def new_codec(self, options: StreamOptions) -> LocalCodec:
        return LocalCodec()

    def open_stream(self, options: StreamOptions, policy: ResiliencePolicy) -> LocalStream:
        stream = LocalStream(self, self.engine, options, policy)
        if self._problem is not None:
            stream.fail_on_connect(VendorError(self._problem, fatal=True))
        return stream

    async def preload(self) -> None:
        """Load a decoder now, so the first utterance does not wait for it (kept only with ``keep_loaded``).

        pocketsphinx holds the GIL while it loads (tens of ms with a grammar, about 0.4 s on x86 for open
        dictation), so call this at start-up, before serving.
        """
        if self._problem is not None:
            raise VendorFailure(VendorError(self._problem, fatal=True))
        try:
            await asyncio.to_thread(self.engine.preload)
        except EngineUnavailable as exc:
            raise VendorFailure(VendorError(str(exc), fatal=True)) from None

    def unload(self) -> None:
        """Drop the idle decoders (decoders in use are dropped when their streams end)."""
        if self._engine is not None:
            self._engine.unload()
