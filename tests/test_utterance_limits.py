"""What a client can hold, and for how long: a failed utterance lets its vendor stream go, only audio keeps an
utterance alive, a wall-clock limit ends it whatever the client does, client input and language codes are
bounded, and the audio budget refuses clearly once spent. Through the daemon to the AmiVoice emulator."""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from wyoming.asr import Transcribe
from wyoming.audio import AudioStart, AudioStop

from asr_daemon.config import load_settings
from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.settings import ConfigError
from tests.support.daemon import running_daemon
from tests.support.held_streams import (
    CHANNELS,
    RATE,
    WIDTH,
    Client,
    chunk,
    describe_instead_of_audio,
    failed_without_audio_stop,
    trickling_audio,
    until,
)
from tests.support.speech import have_speech_tools, silence, speech
from tests.support.wyoming import transcribe

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="espeak-ng and sox are needed")


def config(emulator: AmiVoiceEmulator, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"vendors": {"amivoice": {"url": emulator.url, "api_key": "test-key"}}}
    for key, value in extra.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return base


@pytest.fixture
async def emulator() -> AsyncIterator[AmiVoiceEmulator]:
    async with AmiVoiceEmulator(EmulatorOptions(script=["こんにちは"])).running() as emu:
        assert isinstance(emu, AmiVoiceEmulator)
        yield emu


async def test_a_failed_utterance_lets_its_vendor_stream_go_without_waiting_for_audio_stop() -> None:
    held = await failed_without_audio_stop()
    assert held.error["code"] == "too-long"
    # The vendor connection was closed though the client sent no audio-stop and stayed connected.
    assert not held.client_closed
    assert held.vendor_connections == 1


async def test_describe_during_an_utterance_does_not_keep_it_alive() -> None:
    held = await describe_instead_of_audio(idle_timeout=1.0)
    assert held.error["code"] == "idle", held.error
    assert held.client_closed


async def test_a_client_trickling_audio_is_cut_at_the_wall_clock_limit() -> None:
    # 10 ms of audio per 100 ms would reach the 2 s utterance limit after 15 s more: the wall-clock limit
    # (twice that by default: 4 s) cuts it first.
    held = await trickling_audio(max_utterance_seconds=2)
    assert held.error["code"] == "too-long" and "within 4 s" in held.error["text"], held.error
    assert held.client_closed
    assert held.error_after < 10


async def test_an_absurd_audio_format_is_refused_at_audio_start(emulator: AmiVoiceEmulator) -> None:
    async with running_daemon(config(emulator)) as daemon:
        client = await Client.connect(daemon.port)
        await client.send(AudioStart(rate=384000, width=4, channels=32).event())
        error = await client.wait_error(5)
        assert error["code"] == "bad-audio" and "384000 Hz" in error["text"], error
        await client.send(AudioStop().event())
        await until(client.closed.is_set, 5, "the connection was closed after audio-stop")
        await client.close()
    assert not emulator.streams, "a vendor stream was opened for audio that is refused"


def wav_header(rate: int, width: int, channels: int) -> bytes:
    byte_rate = rate * width * channels
    fmt = struct.pack("<HHIIHH", 1, channels, rate, byte_rate, width * channels, width * 8)
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )


async def test_client_input_bytes_are_bounded_whatever_format_a_wav_header_claims(
    emulator: AmiVoiceEmulator,
) -> None:
    # The chunks say 16 kHz mono; the WAV header inside says 384 kHz, 32 channels, 32 bit (49 MB per second of
    # audio). 2 MiB of it is 0.04 s once converted, so only a bound on the input bytes refuses it.
    data = wav_header(384000, 4, 32) + bytes(2 << 20)
    async with running_daemon(config(emulator, limits={"max_utterance_seconds": 1})) as daemon:
        client = await Client.connect(daemon.port)
        await client.send(AudioStart(rate=RATE, width=WIDTH, channels=CHANNELS).event())
        for offset in range(0, len(data), 64 * 1024):
            await client.send(chunk(data[offset : offset + 64 * 1024]))
        await client.send(AudioStop().event())
        error = await client.wait_error(10)
        await client.close()
    assert error["code"] == "too-long" and "input larger than" in error["text"], error


async def test_an_overlong_language_is_refused(emulator: AmiVoiceEmulator) -> None:
    async with running_daemon(config(emulator, default_vendor="amivoice")) as daemon:
        client = await Client.connect(daemon.port)
        await client.send(Transcribe(language="x" * 100).event())
        error = await client.wait_error(5)
        await client.close()
    assert error["code"] == "bad-event" and "64 characters" in error["text"], error


async def test_a_language_with_a_newline_cannot_forge_a_log_line(
    emulator: AmiVoiceEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asr_daemon")
    pcm = speech("hello there") + silence(800)
    async with running_daemon(config(emulator, default_vendor="amivoice")) as daemon:
        result = await transcribe(daemon.port, pcm, language="ja\n2026-01-01 ERROR forged")
    assert result.text == "こんにちは"
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("asr_daemon")]
    mentioned = [message for message in messages if "forged" in message]
    assert mentioned, "the language is logged"
    assert all("\n" not in message for message in mentioned), mentioned


async def test_the_daily_budget_refuses_the_next_utterance_with_a_clear_error(emulator: AmiVoiceEmulator) -> None:
    pcm = speech("hello there") + silence(800)
    async with running_daemon(config(emulator, budget={"daily_seconds": 1})) as daemon:
        first = await transcribe(daemon.port, pcm, language="ja")
        # The utterance that crossed the limit was finished...
        assert first.text == "こんにちは"
        assert daemon.budget is not None and daemon.budget.used_today() >= len(pcm) / 32000 - 0.1
        # ...and the next one is refused before any vendor stream is opened.
        second = await transcribe(daemon.port, pcm, language="ja")
    assert second.error_code == "budget-exhausted"
    assert second.error is not None and "daily audio budget" in second.error and "refills in" in second.error
    assert len(emulator.streams) == 1


async def test_the_per_client_budget_applies_to_addresses_not_exempt(emulator: AmiVoiceEmulator) -> None:
    pcm = speech("hello there") + silence(800)
    # Loopback is exempt by default, as Home Assistant's own address would be listed.
    async with running_daemon(config(emulator, budget={"per_client_hourly_seconds": 1})) as daemon:
        for _ in range(2):
            assert (await transcribe(daemon.port, pcm, language="ja")).text == "こんにちは"
    budget = {"per_client_hourly_seconds": 1, "exempt_clients": []}
    async with running_daemon(config(emulator, budget=budget)) as daemon:
        assert (await transcribe(daemon.port, pcm, language="ja")).text == "こんにちは"
        refused = await transcribe(daemon.port, pcm, language="ja")
    assert refused.error_code == "budget-exhausted"
    assert refused.error is not None and "client 127.0.0.1" in refused.error


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"limits": {"max_utterance_seconds": 60, "max_utterance_wall_seconds": 30}}, "limits"),
        ({"budget": {"exempt_clients": ["192.168.1.300/32"]}}, "budget.exempt_clients"),
        ({"budget": {"daily_seconds": -5}}, "budget.daily_seconds"),
    ],
)
def test_limit_and_budget_settings_that_cannot_work_are_refused_naming_the_key(
    config: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(None, config)
    assert key in str(refused.value)


def test_the_wall_clock_limit_defaults_to_twice_the_utterance_limit() -> None:
    assert load_settings(None, {"limits": {"max_utterance_seconds": 45}}).limits.utterance_wall_seconds() == 90
