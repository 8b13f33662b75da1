"""End of speech, end to end, against every vendor's emulator, with the two ways Home Assistant reads answers.

Home Assistant 2026.11 uploads audio at real-time pace and reads the server's events at the same time: the first
``transcript`` ends the request (the upload stops, no ``audio-stop`` is sent). Home Assistant 2025.x reads only
after its own ``audio-stop``. With endpointing on, the daemon answers once the speaker stopped, and then: the
vendor got every byte up to that end and nothing after it, the client gets one transcript and nothing else, the
bus carries one utterance-end and one transcript.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event

from asr_daemon.config import local_engine_installed
from asr_daemon.daemon import Daemon
from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions, Fault
from asr_daemon.events import AsrEvent, EventKind, Subscription
from tests.support.daemon import running_daemon
from tests.support.speech import have_speech_tools, silence, utterance, wav
from tests.support.vendor_e2e import VENDORS, VendorE2E
from tests.support.wyoming import describe

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")

BYTES_PER_SECOND = 32000
SILENCE_SECONDS = 0.5
# What may reach the vendor past the last voiced audio: the silence that ends the speech, plus the detector's
# frames and the vendor's message size (generous: the point is that the seconds of silence after it do not).
ALLOWED_TAIL = int((SILENCE_SECONDS + 0.6) * BYTES_PER_SECOND)
ENDPOINTING = {"endpointing": {"enabled": True, "silence_seconds": SILENCE_SECONDS, "no_speech_seconds": 3.0}}
IDS = [vendor.name for vendor in VENDORS]


@dataclass
class Reply:
    events: list[Event] = field(default_factory=list)
    # Audio bytes the client had sent when the transcript (or error) arrived.
    sent_at_answer: int | None = None
    audio_stop_sent: bool = False

    @property
    def transcripts(self) -> list[str]:
        return [Transcript.from_event(e).text for e in self.events if Transcript.is_type(e.type)]

    @property
    def errors(self) -> list[str]:
        return [Error.from_event(e).text for e in self.events if Error.is_type(e.type)]


def chunks(audio: bytes, size: int = 320, first: int | None = None) -> list[bytes]:
    pieces = [audio[:first]] if first else []
    start = first or 0
    return pieces + [audio[offset : offset + size] for offset in range(start, len(audio), size)]


async def client_2026(port: int, language: str, pieces: list[bytes], speed: float = 1.0) -> Reply:
    """Home Assistant 2026.11: uploads at ``speed`` × real time while reading; the first transcript or error ends
    the upload (no audio-stop). Reads on for a moment after it, to see anything else the server would send."""
    reply = Reply()
    sent = 0
    answered = asyncio.Event()
    async with AsyncTcpClient("127.0.0.1", port) as client:

        async def upload() -> None:
            nonlocal sent
            started = time.monotonic()
            for piece in pieces:
                await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=piece).event())
                sent += len(piece)
                await asyncio.sleep(max(0.0, started + sent / BYTES_PER_SECOND / speed - time.monotonic()))
            reply.audio_stop_sent = True
            await client.write_event(AudioStop().event())

        async def read() -> None:
            while (event := await client.read_event()) is not None:
                reply.events.append(event)
                if (Transcript.is_type(event.type) or Error.is_type(event.type)) and not answered.is_set():
                    reply.sent_at_answer = sent
                    answered.set()

        await client.write_event(Transcribe(language=language).event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        uploading = asyncio.create_task(upload())
        reading = asyncio.create_task(read())
        try:
            async with asyncio.timeout(30):
                await answered.wait()
            uploading.cancel()
            # Anything more (a second transcript) would arrive now, or the server closes (after audio-stop).
            await asyncio.wait([reading], timeout=0.5)
        finally:
            uploading.cancel()
            reading.cancel()
    return reply


async def client_2025(port: int, language: str, pieces: list[bytes]) -> Reply:
    """Home Assistant 2025.x: the whole upload and audio-stop first, then it reads until the server closes."""
    reply = Reply()
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language=language).event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        for index, piece in enumerate(pieces):
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=piece).event())
            if index % 16 == 0:
                await asyncio.sleep(0)
        await client.write_event(AudioStop().event())
        reply.audio_stop_sent = True
        async with asyncio.timeout(30):
            while (event := await client.read_event()) is not None:
                reply.events.append(event)
    return reply


@asynccontextmanager
async def daemon_and_emulator(
    vendor: VendorE2E, script: tuple[str, ...], emulator: dict[str, Any] | None = None, **daemon: Any
) -> AsyncIterator[tuple[Daemon, Any, Subscription]]:
    emu = vendor.emulator_class(EmulatorOptions(script=list(script), keep_pcm=True, **(emulator or {})))
    async with emu.running():
        settings = {"url": emu.url, "api_key": "test-key", **vendor.settings(emu)}
        async with running_daemon({**ENDPOINTING, **daemon, "vendors": {vendor.name: settings}}) as running:
            subscription = running.events.subscribe("test")
            yield running, emu, subscription


async def settled(subscription: Subscription, seconds: float = 0.3) -> list[AsrEvent]:
    """What the bus carried, once the utterance had time to publish anything late."""
    await asyncio.sleep(seconds)
    events = []
    while len(subscription):
        events.append(await subscription.get())
        subscription.done()
    return events


def speech_end(pcm: bytes) -> int:
    """Where the last sound ends: the test speech is followed by digital silence."""
    return len(pcm.rstrip(b"\x00")) // 2 * 2


def only_vendor_stream(emu: Any) -> bytes:
    [record] = emu.streams
    assert record.violations == []
    return bytes(record.pcm)


def assert_cut_at_the_end_of_speech(vendor_audio: bytes, pcm: bytes) -> None:
    end = speech_end(pcm)
    # No audio lost before the end: the vendor heard the client's audio, in order, up to the end of speech.
    assert vendor_audio == pcm[: len(vendor_audio)]
    assert len(vendor_audio) >= end
    # Nothing after it: the seconds of silence that followed never reached the vendor.
    assert len(vendor_audio) <= end + ALLOWED_TAIL


def assert_one_utterance_on_the_bus(events: list[AsrEvent], text: str) -> None:
    kinds = [e.kind for e in events]
    assert kinds.count(EventKind.UTTERANCE_START) == 1
    assert kinds.count(EventKind.UTTERANCE_END) == 1
    assert kinds.count(EventKind.ERROR) == 0
    [transcript] = [e for e in events if e.kind is EventKind.TRANSCRIPT]
    assert transcript.text == text


@pytest.mark.parametrize("vendor", VENDORS, ids=IDS)
async def test_2026_client_gets_the_transcript_while_uploading_and_stops(vendor: VendorE2E) -> None:
    pcm = vendor.single_pcm() + silence(3000)
    async with daemon_and_emulator(vendor, vendor.script[:1]) as (daemon, emu, subscription):
        reply = await client_2026(daemon_port(daemon), vendor.language, chunks(pcm))
        vendor_audio = only_vendor_stream(emu)
        events = await settled(subscription)
    assert reply.transcripts == [vendor.script[0]]
    assert reply.errors == []
    # Answered while the client still had seconds of silence to upload, without its audio-stop.
    assert not reply.audio_stop_sent
    assert reply.sent_at_answer is not None and reply.sent_at_answer < len(pcm) - BYTES_PER_SECOND
    assert_cut_at_the_end_of_speech(vendor_audio, pcm)
    assert len(only_vendor_stream(emu)) == len(vendor_audio)
    assert_one_utterance_on_the_bus(events, vendor.script[0])


@pytest.mark.parametrize("vendor", VENDORS, ids=IDS)
async def test_2025_client_reads_the_early_transcript_after_its_audio_stop(vendor: VendorE2E) -> None:
    pcm = vendor.single_pcm() + silence(3000)
    async with daemon_and_emulator(vendor, vendor.script[:1]) as (daemon, emu, subscription):
        reply = await client_2025(daemon_port(daemon), vendor.language, chunks(pcm))
        vendor_audio = only_vendor_stream(emu)
        events = await settled(subscription)
    # One transcript, then the close: the audio after the end of speech was read and dropped, not answered.
    assert [e.type for e in reply.events if e.type in ("transcript", "error")] == ["transcript"]
    assert reply.transcripts == [vendor.script[0]]
    assert_cut_at_the_end_of_speech(vendor_audio, pcm)
    assert_one_utterance_on_the_bus(events, vendor.script[0])


@pytest.mark.parametrize("vendor", VENDORS, ids=IDS)
@pytest.mark.parametrize("client", ["2026", "2025"])
async def test_speech_without_trailing_silence_ends_at_audio_stop_with_every_byte(
    vendor: VendorE2E, client: str
) -> None:
    pcm = vendor.single_pcm()
    pcm = pcm[: speech_end(pcm)]
    async with daemon_and_emulator(vendor, vendor.script[:1]) as (daemon, emu, subscription):
        if client == "2026":
            # Real-time pace matters to the concurrent reading only; twice that keeps the suite short.
            reply = await client_2026(daemon_port(daemon), vendor.language, chunks(pcm), speed=2.0)
        else:
            reply = await client_2025(daemon_port(daemon), vendor.language, chunks(pcm))
        vendor_audio = only_vendor_stream(emu)
        events = await settled(subscription)
    assert reply.transcripts == [vendor.script[0]]
    assert reply.audio_stop_sent
    assert vendor_audio == pcm
    assert_one_utterance_on_the_bus(events, vendor.script[0])


AMIVOICE = VENDORS[0]
FIRST, SECOND = "please turn on the light", "and close the blinds in the kitchen"


async def test_a_pause_shorter_than_the_silence_setting_keeps_one_utterance() -> None:
    # The vendor finalises at short pauses (200 ms); the daemon waits for its own 0.5 s of silence.
    pcm = utterance(FIRST, SECOND, gap_ms=250, tail_ms=3000)
    async with daemon_and_emulator(AMIVOICE, AMIVOICE.script, {"silence_ms": 200}) as (daemon, emu, _):
        reply = await client_2026(daemon_port(daemon), "ja", chunks(pcm), speed=2.0)
        vendor_audio = only_vendor_stream(emu)
    assert reply.transcripts == ["".join(AMIVOICE.script)]
    assert_cut_at_the_end_of_speech(vendor_audio, pcm)


async def test_a_live_stream_ends_at_a_long_pause() -> None:
    pcm = utterance(FIRST, SECOND, gap_ms=1500, tail_ms=1000)
    async with daemon_and_emulator(AMIVOICE, AMIVOICE.script) as (daemon, emu, _):
        reply = await client_2026(daemon_port(daemon), "ja", chunks(pcm), speed=2.0)
        vendor_audio = only_vendor_stream(emu)
    assert reply.transcripts == [AMIVOICE.script[0]]
    assert len(vendor_audio) < len(pcm) // 2 + BYTES_PER_SECOND


async def test_a_recording_with_a_wav_header_is_never_cut_at_its_pauses() -> None:
    # Home Assistant's REST STT path forwards the uploaded file, header and all, in pieces (the first may be tiny).
    pcm = utterance(FIRST, SECOND, gap_ms=1500, tail_ms=1000)
    recording = wav(pcm)
    async with daemon_and_emulator(AMIVOICE, AMIVOICE.script) as (daemon, emu, _):
        reply = await client_2026(daemon_port(daemon), "ja", chunks(recording, first=5), speed=4.0)
        vendor_audio = only_vendor_stream(emu)
    assert reply.transcripts == ["".join(AMIVOICE.script)]
    assert reply.audio_stop_sent
    assert vendor_audio == pcm


@pytest.mark.parametrize("client", ["2026", "2025"])
async def test_an_utterance_without_speech_ends_empty_within_no_speech_seconds(client: str) -> None:
    pcm = silence(6000)
    async with daemon_and_emulator(AMIVOICE, AMIVOICE.script) as (daemon, emu, subscription):
        if client == "2026":
            reply = await client_2026(daemon_port(daemon), "ja", chunks(pcm), speed=2.0)
        else:
            reply = await client_2025(daemon_port(daemon), "ja", chunks(pcm))
        vendor_audio = only_vendor_stream(emu)
        events = await settled(subscription)
    assert reply.transcripts == [""]
    if client == "2026":
        assert not reply.audio_stop_sent
    # no_speech_seconds is 3 s: the vendor heard no more than that.
    assert len(vendor_audio) <= 3 * BYTES_PER_SECOND + ALLOWED_TAIL
    assert_one_utterance_on_the_bus(events, "")


async def test_with_endpointing_off_the_utterance_ends_at_audio_stop() -> None:
    pcm = AMIVOICE.single_pcm() + silence(2000)
    off = {"endpointing": {"enabled": False}}
    async with daemon_and_emulator(AMIVOICE, AMIVOICE.script[:1], **off) as (daemon, emu, _):
        reply = await client_2026(daemon_port(daemon), "ja", chunks(pcm), speed=4.0)
        vendor_audio = only_vendor_stream(emu)
    assert reply.transcripts == [AMIVOICE.script[0]]
    assert reply.audio_stop_sent
    assert vendor_audio == pcm


def daemon_port(daemon: Daemon) -> int:
    assert daemon.port is not None
    return daemon.port


async def test_a_final_that_covers_the_speech_is_the_answer_without_ending_the_vendor_stream() -> None:
    # The vendor finalises after 200 ms of silence, before the daemon's 0.5 s: its final already has it all.
    pcm = AMIVOICE.single_pcm() + silence(3000)
    async with daemon_and_emulator(AMIVOICE, AMIVOICE.script[:1], {"silence_ms": 200}) as (daemon, emu, _):
        reply = await client_2026(daemon_port(daemon), "ja", chunks(pcm))
        [record] = emu.streams
    assert reply.transcripts == [AMIVOICE.script[0]]
    assert not record.completed  # no end-of-audio was sent: nothing was waited for


async def test_speech_the_finals_do_not_cover_yet_ends_the_vendor_stream_for_its_final() -> None:
    # The vendor would wait for 2 s of silence: the daemon ends its stream, and it answers with the final.
    pcm = AMIVOICE.single_pcm() + silence(3000)
    async with daemon_and_emulator(AMIVOICE, AMIVOICE.script[:1], {"silence_ms": 2000}) as (daemon, emu, _):
        reply = await client_2026(daemon_port(daemon), "ja", chunks(pcm))
        [record] = emu.streams
    assert reply.transcripts == [AMIVOICE.script[0]]
    assert record.completed
    assert not reply.audio_stop_sent


@pytest.mark.parametrize("enabled", [True, False])
async def test_describe_tells_home_assistant_whether_it_needs_its_own_vad(enabled: bool) -> None:
    async with running_daemon(
        {"endpointing": {"enabled": enabled}, "vendors": {"amivoice": {"api_key": "test-key"}}}
    ) as daemon:
        [program] = (await describe(daemon_port(daemon))).asr
    # On: the daemon ends utterances itself and wants the audio as the microphone gave it (cloud recognisers do
    # their own noise handling); off: what it always said (the package's defaults).
    assert program.requires_external_vad is not enabled
    assert program.prefers_auto_gain_enabled is not enabled
    assert program.prefers_noise_reduction_enabled is not enabled


@pytest.mark.skipif(not local_engine_installed(), reason="the local engine (pocketsphinx) is not installed")
async def test_at_the_end_of_speech_a_failed_vendor_still_hands_over_to_the_fallback() -> None:
    command = "set a timer for ten minutes"
    pcm = utterance(command, tail_ms=3000)
    options = EmulatorOptions(script=["wrong"], fault=Fault.DROP, fault_after_bytes=8000)
    async with AmiVoiceEmulator(options).running() as emu:
        config = {
            **ENDPOINTING,
            "vendors": {
                "amivoice": {"url": emu.url, "api_key": "test-key", "languages": ["en", "en-US"]},
                "local": {"phrases": [command, "stop the music"], "languages": ["en-GB"]},
            },
            "fallback_vendor": "local",
            "limits": {"final_timeout": 10.0, "fallback_after": 3.0},
        }
        async with running_daemon(config) as daemon:
            reply = await client_2026(daemon_port(daemon), "en", chunks(pcm), speed=2.0)
    assert reply.transcripts == [command]
    assert not reply.audio_stop_sent
    [context] = [Transcript.from_event(e).context for e in reply.events if Transcript.is_type(e.type)]
    assert context == {"engine": "local", "fallback": True}
