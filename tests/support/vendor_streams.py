"""The cloud vendors the stream suite runs against (adapter + codec over the shared transport, against the
vendor's emulator), as a table: tests/test_vendor_streams.py runs the same cases over every row."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import Emulator
from asr_daemon.emulators.iapp import IAppEmulator
from asr_daemon.emulators.sauc import VolcengineEmulator, Zyun360Emulator
from asr_daemon.emulators.tiro import TiroEmulator
from asr_daemon.emulators.yating import YatingEmulator
from asr_daemon.vendors.amivoice.adapter import AmiVoiceAdapter
from asr_daemon.vendors.base import StreamOptions, VendorAdapter, VendorError
from asr_daemon.vendors.iapp.adapter import IAppAdapter
from asr_daemon.vendors.sauc.adapter import VolcengineAdapter, Zyun360Adapter
from asr_daemon.vendors.tiro.adapter import TiroAdapter
from asr_daemon.vendors.yating.adapter import YatingAdapter


def _streams_opened(emu: Any) -> int:
    return len(emu.streams)


def _yating_requests(emu: YatingEmulator) -> int:
    # A stream starts by buying a token: asking the token endpoint is contacting the vendor.
    return len(emu.token_requests) + len(emu.streams)


def _no_check(error: VendorError, emu: Any) -> None:
    return None


def _iapp_refusal(error: VendorError, emu: IAppEmulator) -> None:
    assert error.code == "401"
    assert "Invalid or missing API key" in error.message


def _tiro_refusal(error: VendorError, emu: TiroEmulator) -> None:
    assert "401" in error.message


def _sauc_refusal(error: VendorError, emu: Any) -> None:
    assert error.code == "401"


def _yating_refusal(error: VendorError, emu: YatingEmulator) -> None:
    assert error.message.startswith("Yating rejected the API key (HTTP 401")
    assert emu.streams == []


def tones(count: int) -> bytes:
    """``count`` bursts of 'speech' separated by pauses an emulator cuts sentences at."""
    tone = b"".join(
        int(6000 * math.sin(2 * math.pi * 330 * i / 16000)).to_bytes(2, "little", signed=True) for i in range(8000)
    )
    return bytes(6400) + bytes(22400).join(tone for _ in range(count)) + bytes(9600)


@dataclass(frozen=True)
class VendorStreams:
    name: str  # vendors.<name> in the daemon's configuration, and its registry name
    adapter_class: type[VendorAdapter]
    emulator_class: type[Emulator]
    language: str
    # Settings beyond url and api_key that reaching this emulator takes.
    settings: Callable[[Any], dict[str, Any]] = lambda _: {}
    requests_seen: Callable[[Any], int] = _streams_opened  # how often the vendor was contacted
    # A wrong key refused at the upgrade (or token request), and what the error says; False: the vendor accepts
    # the upgrade and refuses in the stream (a vendor-only case).
    refuses_key_at_upgrade: bool = False
    check_refusal: Callable[[VendorError, Any], None] = _no_check
    # A connection cut mid-stream: after how many bytes of audio, and what the error says (None: not checked).
    drop_after_bytes: int = 6400
    drop_message: str | None = None

    def adapter(self, emu: Emulator, **settings: Any) -> VendorAdapter:
        values = {"url": emu.url, **self.settings(emu), **settings}
        return self.adapter_class(self.adapter_class.settings_model.model_validate(values))

    @property
    def options(self) -> StreamOptions:
        return StreamOptions(language=self.language)


VENDORS = (
    VendorStreams("amivoice", AmiVoiceAdapter, AmiVoiceEmulator, "ja", drop_after_bytes=16000),
    VendorStreams("iapp", IAppAdapter, IAppEmulator, "th", refuses_key_at_upgrade=True, check_refusal=_iapp_refusal),
    VendorStreams(
        "tiro",
        TiroAdapter,
        TiroEmulator,
        "is",
        refuses_key_at_upgrade=True,
        check_refusal=_tiro_refusal,
        drop_after_bytes=9600,
        drop_message="before the end of the audio",
    ),
    VendorStreams(
        "yating",
        YatingAdapter,
        YatingEmulator,
        "zh-TW",
        settings=lambda emu: {"token_url": emu.token_url},
        requests_seen=_yating_requests,
        refuses_key_at_upgrade=True,
        check_refusal=_yating_refusal,
        drop_after_bytes=6000,
        drop_message="closed the connection before completing",
    ),
    VendorStreams(
        "zyun360", Zyun360Adapter, Zyun360Emulator, "zh-CN", refuses_key_at_upgrade=True, check_refusal=_sauc_refusal
    ),
    VendorStreams(
        "volcengine",
        VolcengineAdapter,
        VolcengineEmulator,
        "zh-CN",
        settings=lambda _: {"app_key": "8712345678"},
        refuses_key_at_upgrade=True,
        check_refusal=_sauc_refusal,
    ),
)
