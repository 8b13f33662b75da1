"""The fault-injection matrix: every vendor × every way a vendor fails, through the daemon, measured.

Used by ``tests/test_faults.py`` (which asserts the outcomes) and by ``python -m tests.reliability``
(which writes the table in docs/reliability.md).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import Emulator, EmulatorOptions, Fault
from asr_daemon.emulators.iapp import IAppEmulator
from asr_daemon.emulators.sauc import Zyun360Emulator
from asr_daemon.emulators.tiro import TiroEmulator
from asr_daemon.emulators.yating import YatingEmulator
from asr_daemon.text import join_segments
from tests.support.daemon import running_daemon
from tests.support.fault_proxy import FaultProxy
from tests.support.speech import silence, speech
from tests.support.wyoming import WyomingResult, transcribe


@dataclass(frozen=True)
class VendorCase:
    name: str
    emulator: type[Emulator]
    language: str
    voice: str
    sentences: tuple[str, str]


VENDORS: dict[str, VendorCase] = {
    case.name: case
    for case in (
        VendorCase("amivoice", AmiVoiceEmulator, "ja", "ja", ("こんにちは", "今日は良い天気です")),
        VendorCase("iapp", IAppEmulator, "th", "th", ("สวัสดีครับ", "วันนี้อากาศดี")),
        VendorCase("tiro", TiroEmulator, "is", "is", ("Góðan daginn.", "Hvað segirðu?")),
        VendorCase("yating", YatingEmulator, "zh-TW", "cmn", ("今天天氣很好", "我們去散步")),
        VendorCase("zyun360", Zyun360Emulator, "zh-CN", "cmn", ("今天天气很好", "我们去散步")),
    )
}

FAULTS = ("drop mid-utterance", "drop during final", "stall", "error at start", "idle timeout", "slow final")

FINAL_TIMEOUT = 10.0


@dataclass
class Outcome:
    vendor: str
    fault: str
    expected: str
    text: str | None
    error: str | None
    error_code: str | None
    # seconds from audio-stop to the transcript or error
    latency: float | None
    connections: int
    # every PCM byte of the utterance reached some vendor connection, in order, without gaps
    pcm_complete: bool
    replayed_seconds: float
    violations: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.text == self.expected

    @property
    def summary(self) -> str:
        if self.complete:
            return "complete transcript" + (
                f" after {self.connections - 1} reconnect(s)" if self.connections > 1 else ""
            )
        if self.error:
            return f"error `{self.error_code}`"
        return f"wrong transcript: {self.text!r}"


def utterance_for(case: VendorCase) -> tuple[bytes, int]:
    """Two sentences with a pause; returns the PCM and the byte offset in the middle of the pause."""
    first = silence(300) + speech(case.sentences[0].rstrip(".?"), case.voice)
    pcm = first + silence(900) + speech(case.sentences[1].rstrip(".?"), case.voice) + silence(1000)
    return pcm, len(first) + 9000


def coverage_complete(utterance: bytes, received: list[bytes]) -> bool:
    """Each connection got a contiguous slice of the utterance; together, in order, they cover it without a gap."""
    covered_to = 0
    for pcm in received:
        if not pcm:
            continue
        # A slice can match several places (silence): take the latest start that leaves no gap.
        candidates = [start for start in _starts(utterance, pcm) if start <= covered_to]
        if not candidates:
            return False
        covered_to = max(covered_to, max(candidates) + len(pcm))
    return covered_to == len(utterance)


def _starts(utterance: bytes, pcm: bytes) -> list[int]:
    found = []
    index = utterance.find(pcm)
    while index >= 0:
        found.append(index)
        index = utterance.find(pcm, index + 1)
    return found


def emulator_options(fault: str, case: VendorCase, pcm_bytes: int) -> EmulatorOptions:
    options: dict[str, Any] = {
        "script": list(case.sentences),
        "keep_pcm": True,
        "fault_streams": 1,
        "recognise_by_audio": True,
    }
    middle = int(pcm_bytes * 0.6)
    if fault == "drop mid-utterance":
        options.update(fault=Fault.DROP, fault_after_bytes=middle)
    elif fault == "drop during final":
        options.update(fault=Fault.DROP_AT_END)
    elif fault == "stall":
        options.update(fault=Fault.STALL, fault_after_bytes=middle)
    elif fault == "error at start":
        options.update(fault=Fault.ERROR_AT_START)
    elif fault == "idle timeout":
        options.update(fault=Fault.IDLE_TIMEOUT, idle_timeout=1.0)
    elif fault == "slow final":
        options.update(fault=Fault.SLOW_FINAL, slow_final_seconds=3.0)
    return EmulatorOptions(**options)


async def run_scenario(vendor: str, fault: str) -> Outcome:
    case = VENDORS[vendor]
    pcm, pause_at = utterance_for(case)
    expected = join_segments(case.language, list(case.sentences))
    async with AsyncExitStack() as stack:
        emulator = await stack.enter_async_context(case.emulator(emulator_options(fault, case, len(pcm))).running())
        vendor_config: dict[str, Any] = {"url": emulator.url, "api_key": "test-key"}
        if isinstance(emulator, YatingEmulator):
            vendor_config["token_url"] = emulator.token_url
        config = {"vendors": {vendor: vendor_config}, "limits": {"final_timeout": FINAL_TIMEOUT}}
        daemon = await stack.enter_async_context(running_daemon(config))
        # The idle case: the client goes quiet for longer than the vendor's idle limit, between the sentences.
        pause = 1.6 if fault == "idle timeout" else 0.0
        result = await transcribe(
            daemon.port,
            pcm,
            language=case.language,
            speed=4.0,
            pause_at=pause_at if pause else None,
            pause_seconds=pause,
            timeout=FINAL_TIMEOUT + 20,
        )
        streams = [s for s in emulator.streams if s.pcm is not None]
        received = [bytes(s.pcm or b"") for s in streams]
        replayed = max(sum(len(r) for r in received) - len(pcm), 0) / 32000
        violations = [v for s in emulator.streams for v in s.violations]
    return Outcome(
        vendor=vendor,
        fault=fault,
        expected=expected,
        text=result.text,
        error=result.error,
        error_code=result.error_code,
        latency=result.latency,
        connections=len(emulator.streams),
        pcm_complete=coverage_complete(pcm, received),
        replayed_seconds=replayed,
        violations=violations,
    )


async def blackhole_scenario(
    emulator_cls: type[Emulator], vendor: str, script: list[str], language: str
) -> tuple[WyomingResult, FaultProxy]:
    """A real-time utterance whose path to the vendor goes dark 1.5 s in (the proxy stops forwarding)."""
    pcm = silence(300) + speech("hello there") + silence(700) + speech("how are you today") + silence(1000)
    async with emulator_cls(EmulatorOptions(script=script, recognise_by_audio=True)).running() as emulator:
        proxy = FaultProxy("127.0.0.1", emulator.port)
        async with proxy.running():
            config = {
                "vendors": {vendor: {"url": proxy.url_for(emulator.url), "api_key": "test-key"}},
                "limits": {"final_timeout": FINAL_TIMEOUT},
            }
            async with running_daemon(config) as daemon:
                task = asyncio.create_task(transcribe(daemon.port, pcm, language=language, realtime=True))
                await asyncio.sleep(1.5)
                proxy.blackhole()
                result = await task
    return result, proxy
