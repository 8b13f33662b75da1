"""The vendors the end-to-end suite runs against (Wyoming client → daemon → vendor emulator), as a table.

Each row names what differs between vendors: the emulator, the speech and script, the pipeline language, how
sentences are joined, how a wrong key is refused; tests/test_vendor_e2e.py runs the same cases over every row."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import Emulator, EmulatorOptions
from asr_daemon.emulators.iapp import IAppEmulator
from asr_daemon.emulators.sauc import VolcengineEmulator, Zyun360Emulator
from asr_daemon.emulators.tiro import TiroEmulator
from asr_daemon.emulators.yating import YatingEmulator
from tests.support.daemon import running_daemon
from tests.support.speech import utterance

# The shared cases; a row runs those in its ``cases``.
SINGLE, SEVERAL, PARTIALS, WRONG_KEY = "single", "several", "partials", "wrong_key"
ALL_CASES = frozenset({SINGLE, SEVERAL, PARTIALS, WRONG_KEY})


def _none(_: Any) -> None:
    return None


@dataclass(frozen=True)
class VendorE2E:
    name: str  # vendors.<name> in the daemon's configuration
    emulator_class: Callable[..., Emulator]  # (EmulatorOptions, **emulator settings)
    language: str  # the pipeline language Home Assistant sends
    script: tuple[str, ...]  # what the emulator recognises, sentence by sentence
    single_pcm: Callable[[], bytes]  # speech of one sentence
    several_pcm: Callable[[], bytes]  # speech of every sentence of ``script``
    several_language: str  # the language sent with several sentences (a regional or lower-case spelling)
    joined: str  # the transcript of every sentence of ``script``, joined as the language is written
    partials_pcm: Callable[[], bytes]  # speech of ``partials_script[0]``
    partials_script: tuple[str, ...]
    wrong_key_message: str  # what the error shown to the user says
    one_sentence_script: tuple[str, ...] | None = None  # the script for one sentence (default: ``script[:1]``)
    wrong_key: str = "wrong-key"
    wrong_key_pcm: Callable[[], bytes] | None = None  # speech sent with a wrong key (default: ``single_pcm``)
    check_not_retried: Callable[[Any], None] = _none  # a rejected key reached the vendor once, never again
    check_single: Callable[[Any], None] = _none  # vendor-specific checks after one sentence
    check_several: Callable[[Any], None] = _none
    settings: Callable[[Any], dict[str, Any]] = lambda _: {}  # vendor settings beyond url and api_key
    several_emulator: Mapping[str, Any] = field(default_factory=dict)
    wrong_key_emulator: Mapping[str, Any] = field(default_factory=dict)
    cases: frozenset[str] = ALL_CASES


@asynccontextmanager
async def daemon_with_emulator(
    vendor: VendorE2E,
    script: list[str] | tuple[str, ...],
    key: str = "test-key",
    emulator: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[int, Any]]:
    """A daemon whose only vendor is ``vendor``'s emulator, scripted with ``script``: yields (port, emulator)."""
    emu = vendor.emulator_class(EmulatorOptions(script=list(script), **(options or {})), **(emulator or {}))
    async with emu.running():
        config = {"url": emu.url, "api_key": key, **vendor.settings(emu), **settings}
        async with running_daemon({"vendors": {vendor.name: config}}) as daemon:
            assert daemon.port is not None
            yield daemon.port, emu


# -- the rows -------------------------------------------------------------------------------------------------

AMIVOICE_SCRIPT = ("今日はいい天気ですね。", "リビングの電気をつけてください。")
THAI = ("สวัสดีครับ", "วันนี้อากาศดี", "เปิดไฟห้องนั่งเล่น")
ICELANDIC = ("Halló heimur.", "Kveiktu ljósin í stofunni.", "Hvernig er veðrið á morgun?")
TRADITIONAL = ("今天天氣很好。", "我們去公園散步吧。", "請打開客廳的燈。")
SIMPLIFIED = ("今天天气很好。", "我们去公园散步吧。", "请打开客厅的灯。")


def _speak(voice: str, *sentences: str, tail_ms: int = 1200) -> bytes:
    return utterance(*sentences, voice=voice, tail_ms=tail_ms)


def _iapp_not_retried(emu: IAppEmulator) -> None:
    assert len(emu.streams) == 1


def _tiro_not_retried(emu: TiroEmulator) -> None:
    # Refused at the upgrade, never a stream; and a rejected key is not retried.
    assert emu.rejected_upgrades == 1
    assert emu.streams == []


def _yating_not_retried(emu: YatingEmulator) -> None:
    # Refused at the token endpoint, once; no WebSocket was opened.
    assert [request.status for request in emu.token_requests] == [401]
    assert emu.streams == []


def _yating_single(emu: YatingEmulator) -> None:
    assert emu.token_violations == []
    assert emu.stream_grants[0].pipeline == "asr-zh-tw-std"


def _zyun360_not_retried(emu: Zyun360Emulator) -> None:
    assert len(emu.streams) == 1


def _volcengine_several(emu: VolcengineEmulator) -> None:
    assert emu.streams[0].headers["x-api-app-key"] == "8712345678"


VENDORS = (
    VendorE2E(
        name="amivoice",
        emulator_class=AmiVoiceEmulator,
        language="ja",
        script=AMIVOICE_SCRIPT,
        single_pcm=lambda: utterance("please turn on the light"),
        several_pcm=lambda: utterance("what a lovely day", "please turn on the living room light", gap_ms=1200),
        several_language="ja-JP",
        joined="".join(AMIVOICE_SCRIPT),  # Japanese is written without spaces between sentences.
        partials_pcm=lambda: utterance("please turn on the living room light", lead_ms=100, tail_ms=300),
        partials_script=AMIVOICE_SCRIPT,
        one_sentence_script=AMIVOICE_SCRIPT,
        wrong_key="not-the-key",
        wrong_key_pcm=lambda: utterance("hello"),
        wrong_key_message="received illegal service authorization",
    ),
    VendorE2E(
        name="iapp",
        emulator_class=IAppEmulator,
        language="th",
        script=THAI,
        single_pcm=lambda: _speak("th", THAI[0]),
        several_pcm=lambda: _speak("th", *THAI),
        several_language="th-TH",
        joined=" ".join(THAI),  # Thai separates sentences (not words) with a space.
        partials_pcm=lambda: _speak("th", THAI[0], tail_ms=600),
        partials_script=THAI[:1],
        wrong_key_message="401",
        check_not_retried=_iapp_not_retried,
        settings=lambda _: {"languages": ["th", "th-TH"]},
    ),
    VendorE2E(
        name="tiro",
        emulator_class=TiroEmulator,
        language="is",
        script=ICELANDIC,
        single_pcm=lambda: _speak("is", ICELANDIC[0]),
        several_pcm=lambda: _speak("is", *ICELANDIC),
        several_language="is-IS",
        joined=" ".join(ICELANDIC),
        # Tiro throttles interim results by wall-clock time (350 ms).
        partials_pcm=lambda: _speak("is", ICELANDIC[1], tail_ms=600),
        partials_script=ICELANDIC[1:2],
        wrong_key_message="401",
        check_not_retried=_tiro_not_retried,
        several_emulator={"close_mode": "normal"},
    ),
    VendorE2E(
        name="yating",
        emulator_class=YatingEmulator,
        language="zh-TW",
        script=TRADITIONAL,
        single_pcm=lambda: _speak("cmn", TRADITIONAL[0]),
        several_pcm=lambda: _speak("cmn", *TRADITIONAL),
        several_language="zh-tw",  # Home Assistant sends its pipeline language in lower case.
        joined="".join(TRADITIONAL),
        partials_pcm=lambda: utterance(TRADITIONAL[0], voice="cmn", speed=220, tail_ms=600),
        partials_script=TRADITIONAL[:1],
        wrong_key_message="Yating rejected the API key",
        check_not_retried=_yating_not_retried,
        check_single=_yating_single,
        settings=lambda emu: {"token_url": emu.token_url},
    ),
    VendorE2E(
        name="zyun360",
        emulator_class=Zyun360Emulator,
        language="zh-CN",
        script=SIMPLIFIED,
        single_pcm=lambda: _speak("cmn", SIMPLIFIED[0]),
        several_pcm=lambda: _speak("cmn", *SIMPLIFIED),
        several_language="zh-cn",
        joined="".join(SIMPLIFIED),
        partials_pcm=lambda: utterance(SIMPLIFIED[0], voice="cmn", speed=220, tail_ms=600),
        partials_script=SIMPLIFIED[:1],
        # The variant where the service accepts the upgrade and answers with an error frame (45000010).
        wrong_key="wrong-key-123",
        wrong_key_message="Invalid API key",
        wrong_key_emulator={"auth_error_frame": True},
        check_not_retried=_zyun360_not_retried,
        cases=ALL_CASES - {SEVERAL},
    ),
    VendorE2E(
        name="volcengine",
        emulator_class=VolcengineEmulator,
        language="zh-CN",
        script=SIMPLIFIED,
        single_pcm=lambda: _speak("cmn", SIMPLIFIED[0]),
        several_pcm=lambda: _speak("cmn", *SIMPLIFIED),
        several_language="zh-cn",  # Home Assistant sends its pipeline language in lower case.
        joined="".join(SIMPLIFIED),
        partials_pcm=lambda: utterance(SIMPLIFIED[0], voice="cmn", speed=220, tail_ms=600),
        partials_script=SIMPLIFIED[:1],
        wrong_key_message="Invalid API key",
        settings=lambda _: {"app_key": "8712345678"},
        check_several=_volcengine_several,
        cases=frozenset({SEVERAL}),
    ),
)


def one_sentence(vendor: VendorE2E) -> tuple[str, ...]:
    return vendor.one_sentence_script or vendor.script[:1]


def vendors_with(case: str) -> list[VendorE2E]:
    return [vendor for vendor in VENDORS if case in vendor.cases]


def by_name(name: str) -> VendorE2E:
    return next(vendor for vendor in VENDORS if vendor.name == name)
