"""Connection recipes for the two SAUC services: 360 Zyun (a bearer key) and Volcengine (X-Api-* headers)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr, field_validator, model_validator

from ...credentials import read_secret_file, resolve_secret
from ...settings import VendorSettings
from ..base import StreamCodec, StreamOptions, VendorError, VendorFailure
from ..transport import ConnectRequest, WebSocketAdapter
from .codec import RecognitionRequest, SaucCodec

_LOGGER = logging.getLogger(__name__)

LOGID_HEADER = "X-Tt-Logid"
CONNECT_ID_HEADER = "X-Api-Connect-Id"


class SaucSettings(VendorSettings):
    """Recognition options both SAUC services take (the ``request`` object of the full client request)."""

    languages: list[str] = Field(
        default_factory=lambda: ["zh", "zh-CN", "zh-Hans"],
        description="Wyoming language codes routed to this vendor (Mandarin, Simplified Chinese)",
    )
    enable_itn: bool = Field(default=True, description="Inverse text normalisation: numbers as digits")
    enable_punc: bool = Field(default=True, description="Add punctuation")
    enable_ddc: bool = Field(default=False, description="Remove disfluencies (filler words, repetitions)")
    enable_nonstream: bool = Field(
        default=False,
        description="Second, more accurate pass over each finished sentence (async endpoint only)",
    )
    end_window_size: int | None = Field(
        default=None,
        ge=200,
        le=10000,
        description="Silence in ms that ends a sentence; unset: the vendor's default",
    )
    hotwords: list[str] = Field(
        default_factory=list, description="Words recognition should favour, added to the caller's phrases"
    )
    uid: str = Field(default="asr-daemon", min_length=1, description="user.uid sent to the vendor")

    def recognition_request(self, options: StreamOptions) -> RecognitionRequest:
        words = (word.strip() for word in (*self.hotwords, *options.phrases))
        hotwords = tuple(dict.fromkeys(word for word in words if word))
        return RecognitionRequest(
            uid=self.uid,
            enable_itn=self.enable_itn,
            enable_punc=self.enable_punc,
            enable_ddc=self.enable_ddc,
            enable_nonstream=self.enable_nonstream,
            end_window_size=self.end_window_size,
            hotwords=hotwords,
        )


class Zyun360Settings(SaucSettings):
    """``vendors.zyun360``: ``api_key`` is the API key from 360 Zyun's API marketplace."""


class VolcengineSettings(SaucSettings):
    """``vendors.volcengine``: ``api_key`` is the access token; ``app_key`` the APP ID."""

    app_key: SecretStr | None = Field(
        default=None, description="APP ID (X-Api-App-Key); unset: api_key is a new-console X-Api-Key"
    )
    app_key_file: str | None = Field(default=None, description="File holding the APP ID")
    resource_id: str = Field(
        default="volc.bigasr.sauc.duration",
        min_length=1,
        description="X-Api-Resource-Id: model and billing plan",
    )

    @field_validator("app_key_file")
    @classmethod
    def _readable(cls, value: str | None) -> str | None:
        if value is not None:
            read_secret_file(Path(value))
        return value

    @model_validator(mode="after")
    def _load_app_key(self) -> VolcengineSettings:
        self.app_key = resolve_secret(self.app_key, self.app_key_file, "volcengine_app_key")
        return self

    def app_key_value(self) -> str:
        return self.app_key.get_secret_value() if self.app_key is not None else ""


class _SaucAdapter(WebSocketAdapter):
    codec_class: ClassVar[type[StreamCodec]] = SaucCodec
    settings: SaucSettings

    def new_codec(self, options: StreamOptions) -> SaucCodec:
        return SaucCodec(self.settings.recognition_request(options))

    def _required_key(self, what: str) -> str:
        """The API key; without one the stream fails here, naming the setting, before any connection."""
        key = self.settings.key()
        if not key:
            message = f"no {what} configured (set vendors.{self.name}.api_key or api_key_file)"
            raise VendorFailure(VendorError(message, fatal=True))
        return key

    def _request(self, headers: dict[str, str], log_headers: tuple[str, ...]) -> ConnectRequest:
        # The service does not answer pings reliably while it ingests audio: pings would end good streams.
        return ConnectRequest(url=self.endpoint, headers=headers, ping_interval=None, log_headers=log_headers)


class Zyun360Adapter(_SaucAdapter):
    """360 Zyun (智汇云) large-model streaming ASR."""

    name: ClassVar[str] = "zyun360"
    settings_model: ClassVar[type[VendorSettings]] = Zyun360Settings
    default_url: ClassVar[str] = "ws://audio-asr.api.zyuncs.com/sauc"

    async def prepare(self, options: StreamOptions) -> ConnectRequest:
        key = self._required_key("360 Zyun API key")
        return self._request({"Authorization": f"Bearer {key}"}, (LOGID_HEADER,))


class VolcengineAdapter(_SaucAdapter):
    """ByteDance Volcengine (火山引擎) large-model streaming ASR."""

    name: ClassVar[str] = "volcengine"
    settings_model: ClassVar[type[VendorSettings]] = VolcengineSettings
    default_url: ClassVar[str] = "wss://openspeech.bytedance.com/api/v3/sauc/bigmodel_async"
    settings: VolcengineSettings

    def secrets(self) -> list[str]:
        app_key = self.settings.app_key_value()
        return [*super().secrets(), *([app_key] if app_key else [])]

    async def prepare(self, options: StreamOptions) -> ConnectRequest:
        key = self._required_key("Volcengine access token")
        connect_id = str(uuid.uuid4())
        if options.session_id:
            _LOGGER.debug("volcengine: session %s uses connect id %s", options.session_id, connect_id)
        headers = {"X-Api-Resource-Id": self.settings.resource_id, CONNECT_ID_HEADER: connect_id}
        app_key = self.settings.app_key_value()
        if app_key:
            headers["X-Api-App-Key"] = app_key
            headers["X-Api-Access-Key"] = key
        else:
            headers["X-Api-Key"] = key
        return self._request(headers, (LOGID_HEADER, CONNECT_ID_HEADER))
