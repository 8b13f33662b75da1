"""Yating connection recipe: a one-time token per stream (``token.py``), then ``<url>?token=<token>``.

The language of a stream picks the vendor's *pipeline* (its model), which is fixed when the token is bought.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from ...settings import VendorSettings
from ..base import StreamCodec, StreamOptions, VendorError, VendorFailure
from ..transport import ConnectRequest, WebSocketAdapter, with_token
from .codec import YatingCodec
from .token import fetch_token

DEFAULT_TOKEN_URL = "https://asr.api.yating.tw/v1/token"

# Built-in language → pipeline choice. Taiwan's zh-TW gets the Mandarin+Taiwanese (Hokkien) model; other
# Chinese codes get Mandarin with English code-switching.
PIPELINES: dict[str, str] = {
    "zh-tw": "asr-zh-tw-std",
    "zh-hant": "asr-zh-en-std",
    "zh": "asr-zh-en-std",
    "en": "asr-en-std",
    "ja": "asr-jp-std",
}


def _normal(language: str) -> str:
    return language.strip().replace("_", "-").lower()


class YatingSettings(VendorSettings):
    """``vendors.yating``."""

    languages: list[str] = Field(
        # Only what no other vendor here covers: a user who wants Yating for English or Japanese lists them
        # (routing matches exact codes across vendors first, so a default ``ja`` would fight AmiVoice's).
        default_factory=lambda: ["zh-TW", "zh-Hant"],
        description="Wyoming language codes routed to Yating (it also does en and ja: list them to use it)",
    )
    token_url: str = Field(default=DEFAULT_TOKEN_URL, description="Where one-time tokens are bought (HTTP POST)")
    pipelines: dict[str, str] = Field(
        default_factory=dict,
        description="Language code → Yating pipeline, overriding the built-in choice (zh-TW: asr-zh-en-std)",
    )
    custom_model_id: str | None = Field(
        default=None, description="Custom language model ID (sent as options.s3CusModelKey with the token)"
    )

    @field_validator("token_url")
    @classmethod
    def _check_token_url(cls, value: str) -> str:
        parsed = urlsplit(value)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError("expected an http:// or https:// URL")
        return value

    @field_validator("pipelines")
    @classmethod
    def _check_pipelines(cls, value: dict[str, str]) -> dict[str, str]:
        for language, pipeline in value.items():
            if not language.strip() or not pipeline.strip():
                raise ValueError("expected non-empty language codes and pipeline names")
        return value

    def pipeline_for(self, language: str) -> str | None:
        """The pipeline for ``language``: exact code, then shorter prefixes (``zh-Hant-TW`` → ``zh-Hant`` →
        ``zh``); configured ``pipelines`` win over the built-in table at each step. An empty language means
        the first configured one."""
        if not language.strip():
            if not self.languages:
                return None
            language = self.languages[0]
        overrides = {_normal(code): pipeline.strip() for code, pipeline in self.pipelines.items()}
        parts = _normal(language).split("-")
        for size in range(len(parts), 0, -1):
            code = "-".join(parts[:size])
            pipeline = overrides.get(code) or PIPELINES.get(code)
            if pipeline:
                return pipeline
        return None


class YatingAdapter(WebSocketAdapter):
    name: ClassVar[str] = "yating"
    settings_model: ClassVar[type[VendorSettings]] = YatingSettings
    default_url: ClassVar[str] = "wss://asr.api.yating.tw/ws/v1/"
    codec_class: ClassVar[type[StreamCodec]] = YatingCodec
    settings: YatingSettings

    async def prepare(self, options: StreamOptions) -> ConnectRequest:
        key = self.settings.key()
        if not key:
            missing = "no Yating API key configured (set vendors.yating.api_key or api_key_file)"
            raise VendorFailure(VendorError(missing, fatal=True))
        pipeline = self.settings.pipeline_for(options.language)
        if pipeline is None:
            shown = options.language or "(none)"
            message = f"Yating has no pipeline for language {shown!r}; map it in vendors.yating.pipelines"
            raise VendorFailure(VendorError(message, fatal=True))
        # A token is single-use and expires in 60 s: buy one per stream, never keep one.
        token = await fetch_token(
            self.settings.token_url,
            key,
            pipeline,
            self.settings.custom_model_id,
            request_timeout=self.settings.connect_timeout,
        )
        # Pings: the vendor documents no keepalive, and a long microphone stream must notice a dead link.
        return ConnectRequest(url=with_token(self.endpoint, token), ping_interval=20.0)

    def secret_carrying_urls(self) -> dict[str, str]:
        # The API key goes to token_url; the one-time token it buys goes to url.
        return {"url": self.endpoint, "token_url": self.settings.token_url}

    def new_codec(self, options: StreamOptions) -> YatingCodec:
        # Language, model and phrases are all fixed by the token's pipeline; the stream itself takes none.
        return YatingCodec()

    def stream_variant(self, options: StreamOptions) -> object:
        # A pre-warmed connection's token was bought for one pipeline.
        return self.settings.pipeline_for(options.language)
