"""Icelandic speech from a Home Assistant-style Wyoming client, through the daemon, to the Tiro emulator and back."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.emulators.tiro import TiroEmulator
from tests.support.daemon import running_daemon
from tests.support.speech import have_speech_tools, utterance
from tests.support.wyoming import transcribe

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")

HELLO = "Halló heimur."
LIGHTS = "Kveiktu ljósin í stofunni."
WEATHER = "Hvernig er veðrið á morgun?"


def icelandic(*sentences: str, tail_ms: int = 1200) -> bytes:
    return utterance(*sentences, voice="is", tail_ms=tail_ms)


@asynccontextmanager
async def daemon_with_emulator(
    script: list[str], key: str = "test-key", **emulator: Any
) -> AsyncIterator[tuple[int, TiroEmulator]]:
    emu = TiroEmulator(EmulatorOptions(script=script), **emulator)
    async with emu.running():
        config: dict[str, Any] = {"vendors": {"tiro": {"url": emu.url, "api_key": key}}}
        async with running_daemon(config) as daemon:
            assert daemon.port is not None
            yield daemon.port, emu


async def test_single_sentence_exact_transcript_and_every_byte() -> None:
    pcm = icelandic(HELLO)
    async with daemon_with_emulator([HELLO]) as (port, emu):
        result = await transcribe(port, pcm, language="is")
    assert result.error is None
    assert result.text == HELLO
    [record] = emu.streams
    assert record.violations == []
    assert record.completed
    assert record.pcm_bytes == len(pcm)
    assert record.pcm_sha256 == hashlib.sha256(pcm).hexdigest()


async def test_several_sentences_joined_with_spaces() -> None:
    pcm = icelandic(HELLO, LIGHTS, WEATHER)
    async with daemon_with_emulator([HELLO, LIGHTS, WEATHER], close_mode="normal") as (port, emu):
        result = await transcribe(port, pcm, language="is-IS")
    assert result.error is None
    assert result.text == f"{HELLO} {LIGHTS} {WEATHER}"
    [record] = emu.streams
    assert record.finals == [HELLO, LIGHTS, WEATHER]
    assert record.violations == []
    assert record.pcm_bytes == len(pcm)
    assert record.pcm_sha256 == hashlib.sha256(pcm).hexdigest()


async def test_partials_arrive_while_speaking_and_add_up_to_the_transcript() -> None:
    # Real-time pacing is the point here: Tiro throttles interim results by wall-clock time (350 ms).
    pcm = icelandic(LIGHTS, tail_ms=600)
    async with daemon_with_emulator([LIGHTS]) as (port, emu):
        result = await transcribe(port, pcm, language="is", realtime=True)
    assert result.error is None
    assert result.text == LIGHTS
    assert result.chunks_before_stop > 0
    assert "".join(result.chunks) == result.text
    assert emu.streams[0].violations == []


async def test_wrong_key_is_reported_to_the_caller_and_not_retried() -> None:
    async with daemon_with_emulator([HELLO], key="wrong-key") as (port, emu):
        result = await transcribe(port, icelandic(HELLO), language="is", timeout=10)
    assert result.text is None
    assert result.error is not None
    assert result.error_code == "vendor-rejected"
    assert "401" in result.error
    assert "wrong-key" not in result.error
    # Refused at the upgrade, never a stream; and a rejected key is not retried.
    assert emu.rejected_upgrades == 1
    assert emu.streams == []


async def test_rejected_configuration_reaches_the_caller_with_the_vendors_reason() -> None:
    async with daemon_with_emulator([HELLO], language_codes=["is-IS-x-exp"]) as (port, emu):
        # Streamed as Home Assistant streams it. (A whole utterance in one burst can still be in flight when the
        # vendor refuses and drops the connection: our failed write then ends the link before its error line is
        # read, and only the retry learns the reason.)
        result = await transcribe(port, icelandic(HELLO), language="is", speed=4.0, timeout=10)
    assert result.text is None
    assert result.error_code == "vendor-rejected"
    assert result.error is not None
    assert "Unsupported value 'is-IS' for field 'language_code'." in result.error
    assert len(emu.streams) == 1
