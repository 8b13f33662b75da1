"""Tiro connection recipe: the key travels as a ``token`` query parameter of the WebSocket URL.

That URL is therefore a secret in itself: it is built here, handed to the transport, and never logged
(``redact()`` masks ``token=`` values wherever a URL does end up in a message).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ...settings import VendorSettings
from ..base import StreamCodec, StreamOptions, VendorError, VendorFailure
from ..transport import ConnectRequest, WebSocketAdapter, token_in, with_token
from .codec import TiroCodec


class TiroSettings(VendorSettings):
    """``vendors.tiro``: Icelandic recognition on Tiro's Talgreinir service."""

    languages: list[str] = Field(
        default_factory=lambda: ["is", "is-IS"],
        description="Wyoming language codes routed to Tiro (Icelandic)",
    )
    language_code: str = Field(
        default="is-IS",
        min_length=1,
        description="Tiro model language code sent in every stream (e.g. is-IS)",
    )
    punctuation: bool = Field(default=True, description="Ask Tiro for punctuation and capitalisation")
    interim_results: bool = Field(default=True, description="Ask for partial transcripts while audio arrives")
    word_time_offsets: bool = Field(default=True, description="Ask for word times (gives each segment's span)")


class TiroAdapter(WebSocketAdapter):
    name: ClassVar[str] = "tiro"
    settings_model: ClassVar[type[VendorSettings]] = TiroSettings
    default_url: ClassVar[str] = "wss://speech.talgreinir.is/v2beta1/speech:streamingrecognize"
    codec_class: ClassVar[type[StreamCodec]] = TiroCodec
    settings: TiroSettings

    async def prepare(self, options: StreamOptions) -> ConnectRequest:
        key = self.settings.key()
        url = self.endpoint
        if key:
            url = with_token(url, key)
        elif not token_in(url):
            # The vendor would refuse the stream anyway; naming the missing setting helps more.
            missing = "no Tiro API key configured (set vendors.tiro.api_key or api_key_file)"
            raise VendorFailure(VendorError(missing, fatal=True))
        # The vendor's proxy reads continuously, so it answers pings; they find a dead link in long streams.
        return ConnectRequest(url=url, ping_interval=20.0)

    def new_codec(self, options: StreamOptions) -> TiroCodec:
        # Tiro recognises the model named by ``language_code``; every language routed here uses it.
        settings = self.settings
        return TiroCodec(
            settings.language_code,
            interim_results=settings.interim_results,
            punctuation=settings.punctuation,
            word_time_offsets=settings.word_time_offsets,
        )

    def has_credentials(self) -> bool:
        # A token written into ``url`` by hand works as well as ``api_key``.
        return bool(self.settings.key() or token_in(self.endpoint))

    def secrets(self) -> list[str]:
        # A token written into ``url`` by hand is as secret as ``api_key``.
        found = [*super().secrets(), token_in(self.settings.url or "")]
        return [secret for secret in found if secret]
