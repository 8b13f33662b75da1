"""360 Zyun / Volcengine (SAUC binary protocol) end to end, what only they do (the shared cases are in
tests/test_vendor_e2e.py)."""

from __future__ import annotations

import pytest

from asr_daemon.emulators.base import Fault
from tests.support.speech import have_speech_tools, utterance
from tests.support.vendor_e2e import SIMPLIFIED, by_name, daemon_with_emulator
from tests.support.wyoming import transcribe

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")

ZYUN360 = by_name("zyun360")


async def test_busy_vendor_is_reported_with_its_message() -> None:
    fault = {"fault": Fault.ERROR_AT_START}
    async with daemon_with_emulator(ZYUN360, SIMPLIFIED[:1], options=fault) as (port, _):
        result = await transcribe(port, utterance(SIMPLIFIED[0], voice="cmn"), language="zh-CN", timeout=10)
    assert result.text is None
    assert result.error_code == "vendor-error"
    assert result.error is not None and "server busy" in result.error
