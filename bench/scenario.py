"""What the benchmark runs: one utterance per vendor, the emulators, and the configurations of both paths."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import Emulator, EmulatorOptions
from asr_daemon.emulators.iapp import IAppEmulator
from asr_daemon.emulators.sauc import Zyun360Emulator
from asr_daemon.emulators.tiro import TiroEmulator
from asr_daemon.emulators.yating import YatingEmulator
from asr_daemon.vendors import registry
from asr_daemon.vendors.transport import WebSocketAdapter
from tests.support.speech import utterance

API_KEY = "bench-key"
RATE, WIDTH, CHANNELS = 16000, 2, 1
BYTES_PER_SECOND = RATE * WIDTH * CHANNELS
# A 10 ms frame is voiced when its RMS reaches this (about −40 dBFS, the emulators' own speech threshold).
VOICED_RMS = 300.0
FRAME_BYTES = BYTES_PER_SECOND // 100


@dataclass(frozen=True)
class VendorCase:
    """One vendor protocol: the language Home Assistant asks for, and what the user says."""

    vendor: str
    language: str
    voice: str
    text: str
    emulator: type[Emulator]


# One short command per vendor, spoken by espeak-ng in the vendor's language. The five wire protocols;
# Volcengine speaks the same one as 360 Zyun (same codec and emulator), so it is not run twice.
CASES: tuple[VendorCase, ...] = (
    VendorCase("amivoice", "ja", "ja", "明かりをつけて。", AmiVoiceEmulator),
    VendorCase("iapp", "th", "th", "เปิดไฟ", IAppEmulator),
    VendorCase("tiro", "is", "is", "Kveiktu ljósið.", TiroEmulator),
    VendorCase("yating", "zh-TW", "cmn", "請開燈。", YatingEmulator),
    VendorCase("zyun360", "zh-CN", "cmn", "请开灯。", Zyun360Emulator),
)


def speech_for(case: VendorCase, *, lead_ms: int = 300, tail_ms: int = 800) -> bytes:
    """16 kHz s16le mono: silence, the spoken command, silence (what Home Assistant's VAD leaves around it)."""
    return utterance(case.text, voice=case.voice, speed=175, lead_ms=lead_ms, tail_ms=tail_ms)


def felt_speech_for(case: VendorCase, tail_seconds: float) -> bytes:
    """The command followed by seconds of silence: what a microphone hears until someone ends the request."""
    return speech_for(case, tail_ms=round(tail_seconds * 1000))


def voiced_end(pcm: bytes) -> int:
    """Byte offset just after the last voiced 10 ms frame (0 for silence)."""
    frames = len(pcm) // FRAME_BYTES
    samples = np.frombuffer(pcm[: frames * FRAME_BYTES], dtype="<i2").astype(np.float64).reshape(frames, -1)
    voiced = np.flatnonzero(np.sqrt((samples**2).mean(axis=1)) >= VOICED_RMS)
    return 0 if voiced.size == 0 else int(voiced[-1] + 1) * FRAME_BYTES


# Home Assistant's voice pipeline (assist_pipeline's segmenter, default sensitivity) ends a command after this
# much silence, counted by pymicro-vad in 10 ms frames once at least this much speech started the command.
HA_SILENCE_SECONDS = 0.7
HA_SPEECH_SECONDS = 0.3
HA_COMMAND_SECONDS = 1.0
# Silence heard inside a command is forgotten only after this much speech with no silent frame in it.
HA_RESET_SECONDS = 1.0
HA_SPEECH_BEFORE, HA_SPEECH_IN = 0.2, 0.5  # speech probability thresholds before and inside a command


def home_assistant_vad_end(pcm: bytes) -> int | None:
    """Byte offset at which Home Assistant's own VAD would end the command and send audio-stop (None: never).

    The same detector (pymicro-vad) and the same counting rule as Home Assistant's pipeline, so the client
    stops where Home Assistant would: its detector hears the end of speech a few hundred ms late, and only
    then does the 0.7 s of silence start counting.
    """
    from pymicro_vad import MicroVad

    detector = MicroVad()
    frame_seconds = FRAME_BYTES / BYTES_PER_SECOND
    speech_left, reset_left = HA_SPEECH_SECONDS, HA_RESET_SECONDS
    silence_left, command_left = HA_SILENCE_SECONDS, HA_COMMAND_SECONDS - HA_SPEECH_SECONDS
    in_command = False
    for offset in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
        probability = detector.process_10ms(pcm[offset : offset + FRAME_BYTES])
        if probability < 0:  # still warming up
            continue
        if not in_command:
            if probability > HA_SPEECH_BEFORE:
                reset_left = HA_RESET_SECONDS
                speech_left -= frame_seconds
                if speech_left <= 0:
                    in_command = True
                    silence_left, command_left = HA_SILENCE_SECONDS, HA_COMMAND_SECONDS - HA_SPEECH_SECONDS
            else:
                reset_left -= frame_seconds
                if reset_left <= 0:
                    speech_left, reset_left = HA_SPEECH_SECONDS, HA_RESET_SECONDS
            continue
        command_left -= frame_seconds
        if probability > HA_SPEECH_IN:
            reset_left -= frame_seconds
            if reset_left <= 0:
                silence_left, reset_left = HA_SILENCE_SECONDS, HA_RESET_SECONDS
            continue
        reset_left = HA_RESET_SECONDS
        silence_left -= frame_seconds
        if silence_left <= 0 and command_left <= 0:
            return offset + FRAME_BYTES
    return None


def cases_for(vendors: tuple[str, ...]) -> tuple[VendorCase, ...]:
    return tuple(case for case in CASES if case.vendor in vendors)


def vendor_adapter(vendor: str, settings: dict[str, Any]) -> WebSocketAdapter:
    """The vendor's adapter, built exactly as the daemon builds it, for the direct path (every benchmarked
    vendor streams over a WebSocket)."""
    cls = registry.adapter_class(vendor)
    adapter = cls(cls.settings_model.model_validate(settings))
    assert isinstance(adapter, WebSocketAdapter), vendor
    return adapter


def daemon_config(
    port: int, vendors: dict[str, dict[str, Any]], max_sessions: int, *, endpointing: bool | None = None
) -> dict[str, Any]:
    """The daemon's config: 127.0.0.1 only, every vendor on its emulator, logging as shipped (info, human).

    ``endpointing`` None keeps the daemon's default (start-up and idle figures are for the daemon as shipped).
    The load daemon has it off: its added latency is timed from ``audio-stop``, which a transcript sent at the end
    of speech would precede."""
    config: dict[str, Any] = {
        "wyoming": {"uri": f"tcp://127.0.0.1:{port}", "zeroconf": False, "max_sessions": max_sessions},
        "limits": {"final_timeout": 10.0, "drain_timeout": 5.0},
        "log": {"level": "info", "format": "human"},
        "vendors": vendors,
    }
    if endpointing is not None:
        config["endpointing"] = {"enabled": endpointing}
    return config


@dataclass
class Emulators:
    """The running emulators, one per vendor, shared by the daemon path and the direct path."""

    by_vendor: dict[str, Emulator] = field(default_factory=dict)

    def vendor_settings(self, vendor: str) -> dict[str, Any]:
        """``vendors.<vendor>`` for both paths: the same URL, key and options."""
        emulator = self.by_vendor[vendor]
        settings: dict[str, Any] = {"url": emulator.url, "api_key": API_KEY}
        token_url = getattr(emulator, "token_url", None)
        if token_url:
            settings["token_url"] = token_url
        return settings


@contextlib.asynccontextmanager
async def running_emulators(cases: tuple[VendorCase, ...]) -> AsyncIterator[Emulators]:
    """Every case's emulator on 127.0.0.1, scripted with the case's text, no fault (the vendor's own timing)."""
    emulators = Emulators()
    async with contextlib.AsyncExitStack() as stack:
        for case in cases:
            options = EmulatorOptions(script=[case.text], api_keys=[API_KEY])
            emulator = case.emulator(options)
            await stack.enter_async_context(emulator.running("127.0.0.1", 0))
            emulators.by_vendor[case.vendor] = emulator
        yield emulators
