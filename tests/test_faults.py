"""Fault injection: every vendor × every way a vendor fails. The user's promise is checked for each:
a complete transcript (after reconnecting and replaying what no final covered), or a clear error for what
no retry can fix, always within the deadline, with every PCM byte reaching a vendor connection."""

from __future__ import annotations

import pytest

from tests.support.faults import FAULTS, FINAL_TIMEOUT, VENDORS, run_scenario
from tests.support.speech import have_speech_tools

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="espeak-ng and sox are needed")

# Refusals that are fatal by the vendor's protocol (a 401 / an invalid token): reported, never retried.
FATAL_AT_START = {"iapp", "yating"}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("vendor", list(VENDORS))
async def test_fault(vendor: str, fault: str) -> None:
    outcome = await run_scenario(vendor, fault)
    assert outcome.latency is not None or outcome.error, "the utterance got no answer"
    if fault == "error at start" and vendor in FATAL_AT_START:
        assert outcome.error_code == "vendor-rejected", outcome
        assert outcome.connections == 1  # not retried
        return
    assert outcome.complete, outcome
    assert outcome.latency is not None and outcome.latency <= FINAL_TIMEOUT
    assert outcome.pcm_complete, "some audio never reached a vendor connection"
    assert outcome.violations == []
    if fault in ("drop mid-utterance", "stall", "error at start", "idle timeout"):
        assert outcome.connections == 2
