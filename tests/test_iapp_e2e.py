"""Thai speech from a Home Assistant-style Wyoming client, through the daemon, to the iApp emulator and back."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.emulators.iapp import IAppEmulator
from tests.support.daemon import running_daemon
from tests.support.speech import have_speech_tools, utterance
from tests.support.wyoming import transcribe

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")

HELLO = "สวัสดีครับ"
WEATHER = "วันนี้อากาศดี"
LIGHTS = "เปิดไฟห้องนั่งเล่น"


def thai(*sentences: str) -> bytes:
    return utterance(*sentences, voice="th")


@asynccontextmanager
async def daemon_with_emulator(script: list[str], key: str = "test-key") -> AsyncIterator[tuple[int, IAppEmulator]]:
    emu = IAppEmulator(EmulatorOptions(script=script))
    async with emu.running():
        config: dict[str, Any] = {"vendors": {"iapp": {"url": emu.url, "api_key": key, "languages": ["th", "th-TH"]}}}
        async with running_daemon(config) as daemon:
            assert daemon.port is not None
            yield daemon.port, emu


async def test_single_sentence_exact_transcript_and_every_byte() -> None:
    pcm = thai(HELLO)
    async with daemon_with_emulator([HELLO]) as (port, emu):
        result = await transcribe(port, pcm, language="th")
    assert result.error is None
    assert result.text == HELLO
    [record] = emu.streams
    assert record.violations == []
    assert record.completed
    assert record.pcm_bytes == len(pcm)
    assert record.pcm_sha256 == hashlib.sha256(pcm).hexdigest()


async def test_several_sentences_are_joined_as_thai_is_written() -> None:
    pcm = thai(HELLO, WEATHER, LIGHTS)
    async with daemon_with_emulator([HELLO, WEATHER, LIGHTS]) as (port, emu):
        result = await transcribe(port, pcm, language="th-TH")
    assert result.error is None
    # Thai separates sentences (not words) with a space.
    assert result.text == f"{HELLO} {WEATHER} {LIGHTS}"
    [record] = emu.streams
    assert record.finals == [HELLO, WEATHER, LIGHTS]
    assert record.violations == []
    assert record.pcm_bytes == len(pcm)


async def test_partials_arrive_while_speaking_and_add_up_to_the_transcript() -> None:
    # Real-time pacing is the point here: partials must reach Home Assistant before the user stops talking.
    pcm = utterance(HELLO, voice="th", tail_ms=600)
    async with daemon_with_emulator([HELLO]) as (port, emu):
        result = await transcribe(port, pcm, language="th", realtime=True)
    assert result.error is None
    assert result.text == HELLO
    assert result.chunks_before_stop > 0
    assert "".join(result.chunks) == result.text
    assert emu.streams[0].violations == []


async def test_wrong_key_is_reported_to_the_caller_and_not_retried() -> None:
    async with daemon_with_emulator([HELLO], key="wrong-key") as (port, emu):
        result = await transcribe(port, thai(HELLO), language="th", timeout=10)
    assert result.text is None
    assert result.error is not None
    assert result.error_code == "vendor-rejected"
    assert "401" in result.error
    assert "wrong-key" not in result.error
    # A rejected key is not retried: exactly one upgrade reached the vendor.
    assert len(emu.streams) == 1
