"""Taiwanese Mandarin (and English) from a Home Assistant-style Wyoming client, through the daemon, to the Yating
emulator (token endpoint + WebSocket) and back."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.emulators.yating import YatingEmulator
from tests.support.daemon import running_daemon
from tests.support.speech import have_speech_tools, utterance
from tests.support.wyoming import transcribe

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")

WEATHER = "今天天氣很好。"
PARK = "我們去公園散步吧。"
LIGHTS = "請打開客廳的燈。"


def mandarin(*sentences: str, tail_ms: int = 1200) -> bytes:
    return utterance(*sentences, voice="cmn", tail_ms=tail_ms)


@asynccontextmanager
async def daemon_with_emulator(
    script: list[str], key: str = "test-key", **yating: Any
) -> AsyncIterator[tuple[int, YatingEmulator]]:
    emu = YatingEmulator(EmulatorOptions(script=script))
    async with emu.running():
        settings = {"url": emu.url, "token_url": emu.token_url, "api_key": key, **yating}
        async with running_daemon({"vendors": {"yating": settings}}) as daemon:
            assert daemon.port is not None
            yield daemon.port, emu


async def test_single_sentence_exact_transcript_and_every_byte() -> None:
    pcm = mandarin(WEATHER)
    async with daemon_with_emulator([WEATHER]) as (port, emu):
        result = await transcribe(port, pcm, language="zh-TW")
    assert result.error is None
    assert result.text == WEATHER
    [record] = emu.streams
    assert record.violations == []
    assert emu.token_violations == []
    assert record.completed
    assert record.pcm_bytes == len(pcm)
    assert record.pcm_sha256 == hashlib.sha256(pcm).hexdigest()
    assert emu.stream_grants[0].pipeline == "asr-zh-tw-std"


async def test_several_sentences_are_joined_as_chinese_is_written() -> None:
    pcm = mandarin(WEATHER, PARK, LIGHTS)
    # Home Assistant sends its pipeline language in lower case.
    async with daemon_with_emulator([WEATHER, PARK, LIGHTS]) as (port, emu):
        result = await transcribe(port, pcm, language="zh-tw")
    assert result.error is None
    assert result.text == WEATHER + PARK + LIGHTS
    [record] = emu.streams
    assert record.finals == [WEATHER, PARK, LIGHTS]
    assert record.violations == []
    assert record.pcm_bytes == len(pcm)
    assert record.pcm_sha256 == hashlib.sha256(pcm).hexdigest()


async def test_english_when_listed_uses_the_english_pipeline_and_spaces() -> None:
    script = ["turn on the kitchen light", "thank you"]
    pcm = utterance(*script)
    async with daemon_with_emulator(script, languages=["zh-TW", "en"]) as (port, emu):
        result = await transcribe(port, pcm, language="en-US")
    assert result.error is None
    assert result.text == "turn on the kitchen light thank you"
    assert emu.stream_grants[0].pipeline == "asr-en-std"
    assert emu.streams[0].violations == []


async def test_partials_arrive_while_speaking_and_add_up_to_the_transcript() -> None:
    # Real-time pacing is the point here: partials must reach Home Assistant before the user stops talking.
    pcm = utterance(WEATHER, voice="cmn", speed=220, tail_ms=600)
    async with daemon_with_emulator([WEATHER]) as (port, emu):
        result = await transcribe(port, pcm, language="zh-TW", realtime=True)
    assert result.error is None
    assert result.text == WEATHER
    assert result.chunks_before_stop > 0
    assert "".join(result.chunks) == result.text
    assert emu.streams[0].violations == []


async def test_wrong_key_is_reported_to_the_caller_and_not_retried() -> None:
    async with daemon_with_emulator([WEATHER], key="wrong-key") as (port, emu):
        result = await transcribe(port, mandarin(WEATHER), language="zh-TW", timeout=10)
    assert result.text is None
    assert result.error is not None
    assert result.error_code == "vendor-rejected"
    assert "Yating rejected the API key" in result.error
    assert "wrong-key" not in result.error
    # Refused at the token endpoint, once; no WebSocket was opened.
    assert [request.status for request in emu.token_requests] == [401]
    assert emu.streams == []
