"""Tiro end to end, what only Tiro does (the shared cases are in tests/test_vendor_e2e.py)."""

from __future__ import annotations

import pytest

from tests.support.speech import have_speech_tools, utterance
from tests.support.vendor_e2e import ICELANDIC, by_name, daemon_with_emulator
from tests.support.wyoming import transcribe

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")

TIRO = by_name("tiro")


async def test_rejected_configuration_reaches_the_caller_with_the_vendors_reason() -> None:
    experimental = {"language_codes": ["is-IS-x-exp"]}
    async with daemon_with_emulator(TIRO, ICELANDIC[:1], emulator=experimental) as (port, emu):
        # Streamed as Home Assistant streams it. (A whole utterance in one burst can still be in flight when the
        # vendor refuses and drops the connection: our failed write then ends the link before its error line is
        # read, and only the retry learns the reason.)
        result = await transcribe(port, utterance(ICELANDIC[0], voice="is"), language="is", speed=4.0, timeout=10)
    assert result.text is None
    assert result.error_code == "vendor-rejected"
    assert result.error is not None
    assert "Unsupported value 'is-IS' for field 'language_code'." in result.error
    assert len(emu.streams) == 1
