"""Home Assistant's Wyoming client → the daemon → the AmiVoice adapter → the AmiVoice emulator, and back."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions, Fault
from tests.support.daemon import running_daemon
from tests.support.speech import have_speech_tools, utterance
from tests.support.wyoming import transcribe

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")

SCRIPT = ["今日はいい天気ですね。", "リビングの電気をつけてください。"]


@asynccontextmanager
async def daemon_with_emulator(
    api_key: str = "test-key", **options: Any
) -> AsyncIterator[tuple[int, AmiVoiceEmulator]]:
    emu = AmiVoiceEmulator(EmulatorOptions(script=SCRIPT, **options))
    async with emu.running():
        config = {"vendors": {"amivoice": {"url": emu.url, "api_key": api_key}}}
        async with running_daemon(config) as daemon:
            assert daemon.port is not None
            yield daemon.port, emu


async def test_single_sentence_exact_transcript() -> None:
    pcm = utterance("please turn on the light")
    async with daemon_with_emulator() as (port, emu):
        result = await transcribe(port, pcm, language="ja")
    assert result.error is None
    assert result.text == SCRIPT[0]
    [record] = emu.streams
    assert record.violations == []
    assert (record.pcm_bytes, record.pcm_sha256) == (len(pcm), hashlib.sha256(pcm).hexdigest())


async def test_multi_sentence_transcript_is_joined_without_spaces() -> None:
    pcm = utterance("what a lovely day", "please turn on the living room light", gap_ms=1200)
    async with daemon_with_emulator() as (port, emu):
        result = await transcribe(port, pcm, language="ja-JP")
    assert result.error is None
    # Japanese is written without spaces between sentences.
    assert result.text == "".join(SCRIPT)
    assert emu.streams[0].violations == []
    assert emu.streams[0].pcm_bytes == len(pcm)


async def test_partials_arrive_while_the_user_is_still_speaking() -> None:
    # Real-time pacing is the point here: partials must reach Home Assistant before audio-stop.
    pcm = utterance("please turn on the living room light", lead_ms=100, tail_ms=300)
    async with daemon_with_emulator() as (port, emu):
        result = await transcribe(port, pcm, language="ja", realtime=True)
    assert result.text == SCRIPT[0]
    assert result.chunks_before_stop >= 1
    assert emu.streams[0].violations == []


async def test_wrong_key_is_reported_to_home_assistant() -> None:
    async with daemon_with_emulator(api_key="not-the-key") as (port, _):
        result = await transcribe(port, utterance("hello"), language="ja", timeout=10)
    assert result.text is None
    assert result.error is not None
    assert "received illegal service authorization" in result.error
    assert "not-the-key" not in result.error


async def test_vendor_outage_at_start_ends_in_an_error_not_a_hang() -> None:
    async with daemon_with_emulator(fault=Fault.ERROR_AT_START) as (port, _):
        result = await transcribe(port, utterance("hello"), language="ja", timeout=15)
    assert result.error is not None
    assert "can't connect to recognizer server" in result.error
