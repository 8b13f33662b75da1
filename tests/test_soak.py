"""A short soak in every CI run (the 30-minute one: python -m tests.reliability --soak-minutes 30)."""

from __future__ import annotations

import os

import pytest

from tests.support.soak import soak
from tests.support.speech import have_speech_tools

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="espeak-ng and sox are needed")


@pytest.mark.timeout(300)
async def test_short_soak_with_random_vendor_drops() -> None:
    report = await soak(float(os.environ.get("ASR_DAEMON_SOAK_SECONDS", "25")), clients=4, cut_every=4.0)
    assert report.utterances >= 8
    assert report.cuts >= 2
    # Cuts land mid-utterance: each is recovered by reconnecting and replaying.
    assert report.complete == report.utterances, report.errors
    assert report.fds_after <= report.fds_before + 2, "file descriptors leaked"
    assert report.tasks_after <= report.tasks_before, "tasks leaked"
