"""AmiVoice end to end, what only AmiVoice does (the shared cases are in tests/test_vendor_e2e.py)."""

from __future__ import annotations

import pytest

from asr_daemon.emulators.base import Fault
from tests.support.speech import have_speech_tools, utterance
from tests.support.vendor_e2e import by_name, daemon_with_emulator
from tests.support.wyoming import transcribe

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")

AMIVOICE = by_name("amivoice")


async def test_vendor_outage_at_start_ends_in_an_error_not_a_hang() -> None:
    async with daemon_with_emulator(AMIVOICE, AMIVOICE.script, options={"fault": Fault.ERROR_AT_START}) as (port, _):
        result = await transcribe(port, utterance("hello"), language="ja", timeout=15)
    assert result.error is not None
    assert "can't connect to recognizer server" in result.error
