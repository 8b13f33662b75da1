"""AmiVoice adapter + codec over the shared transport, against the emulator: what a session relies on."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions, Fault
from asr_daemon.vendors.amivoice.adapter import LOGGING_URL, NOLOG_URL, AmiVoiceAdapter, AmiVoiceSettings
from asr_daemon.vendors.base import (
    FinalResult,
    PartialResult,
    StreamCompleted,
    StreamOptions,
    VendorError,
    VendorEvent,
    VendorFailure,
)
from asr_daemon.vendors.transport import VendorStream
from tests.support.speech import have_speech_tools, utterance

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")

SCRIPT = ["今日はいい天気ですね。", "リビングの電気をつけてください。"]
OPTIONS = StreamOptions(language="ja")


@asynccontextmanager
async def emulator(**options: Any) -> AsyncIterator[AmiVoiceEmulator]:
    emu = AmiVoiceEmulator(EmulatorOptions(script=SCRIPT, **options))
    async with emu.running():
        yield emu


def adapter(url: str, **settings: Any) -> AmiVoiceAdapter:
    return AmiVoiceAdapter(AmiVoiceSettings.model_validate({"url": url, "api_key": "test-key", **settings}))


async def run_stream(stream: VendorStream, pcm: bytes, timeout: float = 10.0) -> list[VendorEvent]:
    """Like a session: send ``pcm`` in the codec's chunks once ready, then end; meanwhile collect the events
    until completion or an error."""

    async def send() -> None:
        await stream.wait_ready()
        size = stream.codec.chunk_bytes
        for offset in range(0, len(pcm), size):
            await stream.send_audio(pcm[offset : offset + size])
        await stream.end()

    events: list[VendorEvent] = []
    async with asyncio.timeout(timeout):
        await stream.connect()
        sender = asyncio.create_task(send())
        try:
            while True:
                event = await stream.events.get()
                events.append(event)
                if isinstance(event, StreamCompleted | VendorError):
                    return events
        finally:
            sender.cancel()
            await stream.aclose()


def finals(events: list[VendorEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, FinalResult)]


async def test_single_sentence_exact_text_every_byte_no_violations() -> None:
    pcm = utterance("please turn on the light")
    async with emulator() as emu:
        events = await run_stream(VendorStream(adapter(emu.url), OPTIONS), pcm)
    assert isinstance(events[-1], StreamCompleted)
    assert finals(events) == [SCRIPT[0]]
    assert any(isinstance(e, PartialResult) for e in events)
    [final] = [e for e in events if isinstance(e, FinalResult)]
    assert final.start_ms is not None and final.end_ms is not None and 0 < final.start_ms < final.end_ms
    [record] = emu.streams
    assert record.violations == []
    assert record.pcm_bytes == len(pcm)
    assert record.pcm_sha256 == hashlib.sha256(pcm).hexdigest()


async def test_multi_sentence_gives_one_final_per_sentence_in_order() -> None:
    pcm = utterance("what a lovely day", "please turn on the living room light", gap_ms=1200)
    async with emulator() as emu:
        events = await run_stream(VendorStream(adapter(emu.url), OPTIONS), pcm)
    assert isinstance(events[-1], StreamCompleted)
    assert finals(events) == SCRIPT
    [record] = emu.streams
    assert record.violations == []
    assert (record.pcm_bytes, record.pcm_sha256) == (len(pcm), hashlib.sha256(pcm).hexdigest())


async def test_every_setting_reaches_the_s_command_without_violations() -> None:
    pcm = utterance("hello")
    settings: dict[str, Any] = {
        "engine": "-a-general-input",
        "profile_words": ["AMI あみ", {"written": "AmiVoice", "spoken": "あみぼいす"}],
        "profile_id": "my-profile",
        "keep_filler_token": True,
        "result_updated_interval": 300,
    }
    async with emulator() as emu:
        events = await run_stream(VendorStream(adapter(emu.url, **settings), OPTIONS), pcm)
    assert finals(events) == [SCRIPT[0]]
    assert emu.streams[0].violations == []


async def test_wrong_key_is_fatal_at_once() -> None:
    async with emulator() as emu:
        stream = VendorStream(AmiVoiceAdapter(AmiVoiceSettings(url=emu.url, api_key=SecretStr("wrong"))), OPTIONS)
        events = await run_stream(stream, utterance("hello"), timeout=3)
    [error] = events
    assert isinstance(error, VendorError) and error.fatal
    assert "received illegal service authorization" in error.message
    assert "wrong" not in error.message
    assert emu.streams[0].pcm_bytes == 0


async def test_server_error_at_start_is_transient_with_the_vendors_message() -> None:
    async with emulator(fault=Fault.ERROR_AT_START) as emu:
        events = await run_stream(VendorStream(adapter(emu.url), OPTIONS), utterance("hello"), timeout=3)
    [error] = events
    assert isinstance(error, VendorError) and not error.fatal
    assert "can't connect to recognizer server" in error.message


async def test_vendor_error_mid_stream_carries_the_vendors_message() -> None:
    # The vendor stops accepting audio after too long without speech (600 s on the service, 300 ms here).
    async with emulator() as emu:
        emu.no_speech_limit_ms = 300
        pcm = b"\x00\x00" * 16000
        events = await run_stream(VendorStream(adapter(emu.url), OPTIONS), pcm, timeout=3)
    error = events[-1]
    assert isinstance(error, VendorError) and not error.fatal
    assert "can't feed audio data to recognizer server" in error.message


async def test_idle_cut_mid_stream_is_an_error_not_a_completion() -> None:
    async with emulator(idle_timeout=0.3) as emu:
        stream = VendorStream(adapter(emu.url), OPTIONS)
        events: list[VendorEvent] = []
        async with asyncio.timeout(3):
            await stream.connect()
            await stream.wait_ready()
            await stream.send_audio(utterance("hello")[:6400])
            while not isinstance(event := await stream.events.get(), VendorError):
                events.append(event)
            await stream.aclose()
    assert "timeout occurred while recognizing audio data from client" in event.message
    assert not any(isinstance(e, StreamCompleted) for e in events)


async def test_unreachable_vendor_fails_to_connect() -> None:
    async with emulator() as emu:
        url = emu.url
    stream = VendorStream(adapter(url, connect_timeout=1), OPTIONS)
    with pytest.raises(VendorFailure) as failure:
        await stream.connect()
    assert not failure.value.error.fatal


# -- settings and connection recipe --------------------------------------------------------------------


async def test_endpoint_follows_the_logging_setting_unless_a_url_is_set() -> None:
    assert AmiVoiceAdapter(AmiVoiceSettings()).endpoint == NOLOG_URL == "wss://acp-api.amivoice.com/v1/nolog/"
    assert AmiVoiceAdapter(AmiVoiceSettings(logging=True)).endpoint == LOGGING_URL
    assert (await adapter("ws://127.0.0.1:1/v1/", logging=True).prepare(OPTIONS)).url == "ws://127.0.0.1:1/v1/"
    request = await AmiVoiceAdapter(AmiVoiceSettings(api_key=SecretStr("secret-key-42"))).prepare(OPTIONS)
    # The key travels in the s command, never in the URL or headers.
    assert "secret-key-42" not in request.url and dict(request.headers) == {}


def test_settings_defaults_and_s_parameters() -> None:
    settings = AmiVoiceSettings(api_key=SecretStr("secret-key"))
    assert settings.languages == ["ja", "ja-JP"]
    assert settings.engine == "-a-general"
    codec = AmiVoiceAdapter(settings).new_codec(StreamOptions(language="ja", phrases=("Home Assistant",)))
    # Wyoming phrases have no reading, so they are not dictionary words: not sent.
    assert codec.start() == ["s LSB16K -a-general authorization=secret-key resultUpdatedInterval=500"]


def test_profile_settings_are_normalised() -> None:
    settings = AmiVoiceSettings.model_validate(
        {"profile_words": ["AMI  あみ", {"written": "AmiVoice", "spoken": "あみぼいす"}], "profile_id": "kitchen"}
    )
    assert settings.profile_words_value() == "AMI あみ|AmiVoice あみぼいす"
    assert settings.profile_id == ":kitchen"
    parameters = AmiVoiceAdapter(settings).s_parameters(OPTIONS)
    assert parameters == [
        ("profileId", ":kitchen"),
        ("profileWords", "AMI あみ|AmiVoice あみぼいす"),
        ("resultUpdatedInterval", "500"),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        {"engine": ""},
        {"engine": "-a-general extra"},
        {"profile_words": ["AMI"]},
        {"profile_words": ["AMI あみ|x y"]},
        {"profile_words": [{"written": "A I", "spoken": "あい"}]},
        {"result_updated_interval": -1},
        {"profile_id": ""},
        {"unknown": 1},
    ],
)
def test_bad_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AmiVoiceSettings.model_validate(bad)


def test_the_key_is_a_secret() -> None:
    assert AmiVoiceAdapter(AmiVoiceSettings(api_key=SecretStr("secret-key"))).secrets() == ["secret-key"]
