"""AmiVoice Cloud Platform: settings, connection recipe and codec factory.

Authentication is the ``authorization=`` parameter of the ``s`` command, so the WebSocket upgrade carries no
secret and the endpoint URL holds none. The ``logging`` setting picks the endpoint: AmiVoice keeps the audio
and results of ``/v1/`` sessions (to improve its service) and none of ``/v1/nolog/`` sessions.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...settings import VendorSettings
from ..base import StreamCodec, StreamOptions, VendorError, VendorFailure
from ..transport import ConnectRequest, WebSocketAdapter
from .codec import AmiVoiceCodec

LOGGING_URL = "wss://acp-api.amivoice.com/v1/"
NOLOG_URL = "wss://acp-api.amivoice.com/v1/nolog/"


def _has_space(value: str) -> bool:
    return any(c.isspace() for c in value)


class ProfileWord(BaseModel):
    """One user-dictionary word: how it is written in transcripts and how it is spoken (kana for Japanese)."""

    model_config = ConfigDict(extra="forbid")

    written: str = Field(description="The notation that appears in the transcript")
    spoken: str = Field(description="The reading (hiragana or katakana for Japanese engines)")

    @field_validator("written", "spoken")
    @classmethod
    def _check_part(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        if _has_space(value) or "|" in value:
            raise ValueError("must not contain spaces or '|'")
        return value

    def entry(self) -> str:
        return f"{self.written} {self.spoken}"


class AmiVoiceSettings(VendorSettings):
    """``vendors.amivoice``."""

    languages: list[str] = Field(
        default_factory=lambda: ["ja", "ja-JP"], description="Wyoming language codes routed to AmiVoice"
    )
    engine: str = Field(
        default="-a-general",
        description="Connection engine (grammar file name), e.g. -a-general, -a-medgeneral",
    )
    logging: bool = Field(
        default=False,
        description="Let AmiVoice keep audio and results (the /v1/ endpoint) instead of /v1/nolog/",
    )
    profile_words: list[ProfileWord | str] = Field(
        default_factory=list,
        description="Words to add to the dictionary: 'written spoken' or {written, spoken}",
    )
    profile_id: str | None = Field(default=None, description="Registered user dictionary (profile) to use")
    result_updated_interval: int = Field(
        default=500, ge=0, le=60000, description="Milliseconds between interim results (U events)"
    )
    keep_filler_token: bool = Field(default=False, description="Keep fillers such as 'あのー' in transcripts")

    @field_validator("engine")
    @classmethod
    def _check_engine(cls, value: str) -> str:
        if not value or _has_space(value) or '"' in value:
            raise ValueError("expected an engine name such as -a-general (not empty, no spaces or quotes)")
        return value

    @field_validator("profile_words")
    @classmethod
    def _check_profile_words(cls, words: list[ProfileWord | str]) -> list[ProfileWord | str]:
        for word in words:
            if isinstance(word, str):
                parts = word.split()
                if len(parts) < 2 or "|" in word:
                    raise ValueError(f"{word!r}: expected 'written spoken' (two words, no '|')")
        return words

    @field_validator("profile_id")
    @classmethod
    def _check_profile_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value or value == ":":
            raise ValueError("expected a profile name")
        # AmiVoice's profile ids are written with a leading ':'; accept the name without it too.
        return value if value.startswith(":") else f":{value}"

    def profile_words_value(self) -> str:
        """The ``profileWords`` parameter: entries joined with ``|``."""
        entries = [w.entry() if isinstance(w, ProfileWord) else " ".join(w.split()) for w in self.profile_words]
        return "|".join(entries)


class AmiVoiceAdapter(WebSocketAdapter):
    name: ClassVar[str] = "amivoice"
    settings_model: ClassVar[type[VendorSettings]] = AmiVoiceSettings
    default_url: ClassVar[str] = NOLOG_URL
    codec_class: ClassVar[type[StreamCodec]] = AmiVoiceCodec
    settings: AmiVoiceSettings

    @property
    def endpoint(self) -> str:
        if self.settings.url:
            return self.settings.url
        return LOGGING_URL if self.settings.logging else NOLOG_URL

    async def prepare(self, options: StreamOptions) -> ConnectRequest:
        if not self.settings.key():
            # AmiVoice would answer "s received illegal service authorization"; naming the setting helps more.
            missing = "no AmiVoice API key configured (set vendors.amivoice.api_key or api_key_file)"
            raise VendorFailure(VendorError(missing, fatal=True))
        # Nothing to fetch: the key travels in the s command. Pings stay on: nothing reports AmiVoice
        # mishandling them (unlike iApp and SAUC), and they notice a dead network path.
        return ConnectRequest(url=self.endpoint, ping_interval=20.0)

    def new_codec(self, options: StreamOptions) -> AmiVoiceCodec:
        return AmiVoiceCodec(self.settings.engine, self.settings.key(), self.s_parameters(options))

    def s_parameters(self, options: StreamOptions) -> list[tuple[str, str]]:
        """Everything after ``authorization=`` in the s command.

        ``options.phrases`` are not sent: an AmiVoice dictionary word needs its reading (kana), which a
        Wyoming phrase does not carry, and a word without one is not a valid ``profileWords`` entry.
        """
        settings = self.settings
        parameters: list[tuple[str, str]] = []
        if settings.profile_id:
            parameters.append(("profileId", settings.profile_id))
        if settings.profile_words:
            parameters.append(("profileWords", settings.profile_words_value()))
        if settings.keep_filler_token:
            parameters.append(("keepFillerToken", "1"))
        parameters.append(("resultUpdatedInterval", str(settings.result_updated_interval)))
        return parameters
