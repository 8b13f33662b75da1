"""Mandarin from a Home Assistant-style Wyoming client, through the daemon, to the 360 Zyun and Volcengine
emulators (SAUC binary protocol) and back."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from asr_daemon.emulators.base import EmulatorOptions, Fault
from asr_daemon.emulators.sauc import SaucEmulator, VolcengineEmulator, Zyun360Emulator
from tests.support.daemon import running_daemon
from tests.support.speech import have_speech_tools, utterance
from tests.support.wyoming import transcribe

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")

WEATHER = "今天天气很好。"
PARK = "我们去公园散步吧。"
LIGHTS = "请打开客厅的灯。"


def mandarin(*sentences: str, tail_ms: int = 1200) -> bytes:
    return utterance(*sentences, voice="cmn", tail_ms=tail_ms)


@asynccontextmanager
async def daemon_with(emulator: SaucEmulator, **vendor: Any) -> AsyncIterator[int]:
    async with emulator.running():
        settings = {"url": emulator.url, "api_key": "test-key", **vendor}
        async with running_daemon({"vendors": {emulator.vendor: settings}}) as daemon:
            assert daemon.port is not None
            yield daemon.port


async def test_zyun360_single_sentence_exact_transcript_and_every_byte() -> None:
    pcm = mandarin(WEATHER)
    emulator = Zyun360Emulator(EmulatorOptions(script=[WEATHER]))
    async with daemon_with(emulator) as port:
        result = await transcribe(port, pcm, language="zh-CN")
    assert result.error is None
    assert result.text == WEATHER
    [record] = emulator.streams
    assert record.violations == []
    assert record.completed
    assert record.pcm_bytes == len(pcm)
    assert record.pcm_sha256 == hashlib.sha256(pcm).hexdigest()


async def test_volcengine_several_sentences_joined_as_chinese_is_written() -> None:
    pcm = mandarin(WEATHER, PARK, LIGHTS)
    emulator = VolcengineEmulator(EmulatorOptions(script=[WEATHER, PARK, LIGHTS]))
    # Home Assistant sends its pipeline language in lower case.
    async with daemon_with(emulator, app_key="8712345678") as port:
        result = await transcribe(port, pcm, language="zh-cn")
    assert result.error is None
    assert result.text == WEATHER + PARK + LIGHTS
    [record] = emulator.streams
    assert record.finals == [WEATHER, PARK, LIGHTS]
    assert record.violations == []
    assert record.pcm_bytes == len(pcm)
    assert record.pcm_sha256 == hashlib.sha256(pcm).hexdigest()
    assert record.headers["x-api-app-key"] == "8712345678"


async def test_partials_arrive_while_speaking_and_add_up_to_the_transcript() -> None:
    # Real-time pacing is the point here: partials must reach Home Assistant before the user stops talking.
    pcm = utterance(WEATHER, voice="cmn", speed=220, tail_ms=600)
    emulator = Zyun360Emulator(EmulatorOptions(script=[WEATHER]))
    async with daemon_with(emulator) as port:
        result = await transcribe(port, pcm, language="zh-CN", realtime=True)
    assert result.error is None
    assert result.text == WEATHER
    assert result.chunks_before_stop > 0
    assert "".join(result.chunks) == result.text
    assert emulator.streams[0].violations == []


async def test_wrong_key_is_reported_to_the_caller_and_not_retried() -> None:
    # The variant where the service accepts the upgrade and answers with an error frame (45000010).
    emulator = Zyun360Emulator(EmulatorOptions(script=[WEATHER]), auth_error_frame=True)
    async with daemon_with(emulator, api_key="wrong-key-123") as port:
        result = await transcribe(port, mandarin(WEATHER), language="zh-CN", timeout=10)
    assert result.text is None
    assert result.error is not None
    assert result.error_code == "vendor-rejected"
    assert "Invalid API key" in result.error
    assert "wrong-key-123" not in result.error
    assert len(emulator.streams) == 1


async def test_busy_vendor_is_reported_with_its_message() -> None:
    emulator = Zyun360Emulator(EmulatorOptions(script=[WEATHER], fault=Fault.ERROR_AT_START))
    async with daemon_with(emulator) as port:
        result = await transcribe(port, mandarin(WEATHER), language="zh-CN", timeout=10)
    assert result.text is None
    assert result.error_code == "vendor-error"
    assert result.error is not None and "server busy" in result.error
