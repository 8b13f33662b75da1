"""The fallback engine: when the routed cloud vendor cannot produce a final in time, the offline engine
transcribes the buffered utterance, and the transcript says so — within the deadline."""

from __future__ import annotations

import time
from typing import Any

import pytest
from wyoming.asr import Transcript

from asr_daemon.config import local_engine_installed
from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions, Fault
from tests.support.daemon import running_daemon
from tests.support.speech import have_speech_tools, utterance
from tests.support.wyoming import WyomingResult, transcribe

pytestmark = [
    pytest.mark.skipif(not have_speech_tools(), reason="espeak-ng and sox are needed"),
    pytest.mark.skipif(not local_engine_installed(), reason="the local engine (pocketsphinx) is not installed"),
]

COMMANDS = ["turn on the kitchen light", "set a timer for ten minutes", "stop the music"]
DEADLINE = 10.0


def config(emulator: AmiVoiceEmulator, fallback: bool = True) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        # The cloud vendor is routed English here, so that the English fallback can stand in for it.
        "vendors": {
            "amivoice": {"url": emulator.url, "api_key": "test-key", "languages": ["en", "en-US"]},
            "local": {"phrases": COMMANDS, "languages": ["en-GB"]},
        },
        "limits": {"final_timeout": DEADLINE, "fallback_after": 3.0},
    }
    if fallback:
        cfg["fallback_vendor"] = "local"
    return cfg


def transcript_context(result: WyomingResult) -> dict[str, Any] | None:
    for event in result.events:
        if Transcript.is_type(event.type):
            return Transcript.from_event(event).context
    return None


@pytest.mark.parametrize("fault", [Fault.STALL, Fault.DROP])
async def test_fallback_transcribes_when_the_vendor_fails(fault: Fault) -> None:
    pcm = utterance("set a timer for ten minutes", speed=150)
    options = EmulatorOptions(script=["wrong"], fault=fault, fault_after_bytes=8000)
    async with AmiVoiceEmulator(options).running() as emulator, running_daemon(config(emulator)) as daemon:
        started = time.monotonic()
        result = await transcribe(daemon.port, pcm, language="en", realtime=True)
    assert result.error is None, result.error
    assert result.text == "set a timer for ten minutes"
    assert transcript_context(result) == {"engine": "local", "fallback": True}
    assert result.latency is not None and result.latency <= DEADLINE
    assert time.monotonic() - started < len(pcm) / 32000 + DEADLINE
    assert emulator.streams, "the cloud vendor was tried first"


async def test_without_a_fallback_the_same_failure_is_an_error() -> None:
    options = EmulatorOptions(script=["wrong"], fault=Fault.STALL, fault_after_bytes=8000)
    async with (
        AmiVoiceEmulator(options).running() as emulator,
        running_daemon(config(emulator, fallback=False)) as daemon,
    ):
        result = await transcribe(daemon.port, utterance("stop the music", speed=150), language="en")
    assert result.text is None and result.error_code == "timeout"


async def test_a_healthy_vendor_is_not_second_guessed() -> None:
    async with (
        AmiVoiceEmulator(EmulatorOptions(script=["cloud says hi"])).running() as emulator,
        running_daemon(config(emulator)) as daemon,
    ):
        result = await transcribe(daemon.port, utterance("stop the music", speed=150), language="en")
    assert result.text == "cloud says hi"
    assert transcript_context(result) is None
