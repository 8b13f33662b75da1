"""iApp connection recipe: the key in an ``apikey`` upgrade header, no query, no pings (the vendor's own
sample turns ping timeouts off, so its server is not trusted to answer them)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ...settings import VendorSettings
from ..base import StreamCodec, StreamOptions, VendorError, VendorFailure
from ..transport import ConnectRequest, WebSocketAdapter
from .codec import IAppCodec


class IAppSettings(VendorSettings):
    """``vendors.iapp``: the endpoint speaks Thai only."""

    languages: list[str] = Field(
        default_factory=lambda: ["th", "th-TH"], description="Wyoming language codes routed to iApp (Thai)"
    )


class IAppAdapter(WebSocketAdapter):
    name: ClassVar[str] = "iapp"
    settings_model: ClassVar[type[VendorSettings]] = IAppSettings
    default_url: ClassVar[str] = "wss://api-iflytek.iapp.co.th/asr"
    codec_class: ClassVar[type[StreamCodec]] = IAppCodec

    async def prepare(self, options: StreamOptions) -> ConnectRequest:
        key = self.settings.key()
        if not key:
            # The vendor would refuse the upgrade anyway; saying which setting is missing helps more.
            missing = "no iApp API key configured (set vendors.iapp.api_key or api_key_file)"
            raise VendorFailure(VendorError(missing, fatal=True))
        return ConnectRequest(url=self.endpoint, headers={"apikey": key}, ping_interval=None)

    def new_codec(self, options: StreamOptions) -> IAppCodec:
        # Thai is the endpoint's only language and it takes no options, so nothing in ``options`` applies.
        return IAppCodec()
