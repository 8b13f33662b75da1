"""Yating end to end, what only Yating does (the shared cases are in tests/test_vendor_e2e.py)."""

from __future__ import annotations

import pytest

from tests.support.speech import have_speech_tools, utterance
from tests.support.vendor_e2e import by_name, daemon_with_emulator
from tests.support.wyoming import transcribe

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")

YATING = by_name("yating")


async def test_english_when_listed_uses_the_english_pipeline_and_spaces() -> None:
    script = ["turn on the kitchen light", "thank you"]
    pcm = utterance(*script)
    async with daemon_with_emulator(YATING, script, languages=["zh-TW", "en"]) as (port, emu):
        result = await transcribe(port, pcm, language="en-US")
    assert result.error is None
    assert result.text == "turn on the kitchen light thank you"
    assert emu.stream_grants[0].pipeline == "asr-en-std"
    assert emu.streams[0].violations == []
