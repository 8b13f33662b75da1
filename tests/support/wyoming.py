"""A Wyoming client that behaves like Home Assistant's STT integration (wyoming's AsyncTcpClient)."""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass, field

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, write_event
from wyoming.info import Describe, Info

RATE, WIDTH, CHANNELS = 16000, 2, 1


def wire(*events: Event) -> bytes:
    """Events as the ``wyoming`` package's own writer frames them, back to back."""
    out = io.BytesIO()
    for event in events:
        write_event(event, out)  # type: ignore[arg-type]
    return out.getvalue()


@dataclass
class WyomingResult:
    text: str | None = None
    error: str | None = None
    error_code: str | None = None
    chunks: list[str] = field(default_factory=list)
    # transcript-chunk events that arrived before audio-stop was sent
    chunks_before_stop: int = 0
    started: bool = False
    stopped: bool = False
    events: list[Event] = field(default_factory=list)
    # seconds from audio-stop to transcript/error
    latency: float | None = None
    closed_by_server: bool = False


async def describe(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> Info:
    async with AsyncTcpClient(host, port) as client:
        await client.write_event(Describe().event())
        async with asyncio.timeout(timeout):
            while True:
                event = await client.read_event()
                assert event is not None, "connection closed before info"
                if Info.is_type(event.type):
                    return Info.from_event(event)


async def transcribe(
    port: int,
    pcm: bytes,
    *,
    language: str | None,
    chunk_bytes: int = 320,
    realtime: bool = False,
    speed: float = 0.0,
    pause_at: int | None = None,
    pause_seconds: float = 0.0,
    rate: int = RATE,
    width: int = WIDTH,
    channels: int = CHANNELS,
    send_transcribe: bool = True,
    send_audio_start: bool = True,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
) -> WyomingResult:
    """Send one utterance the way HA does and collect everything the server answers.

    ``realtime`` paces the audio at real time (``speed`` sets another multiple; 0 sends as fast as possible);
    ``pause_at``/``pause_seconds`` make the client go quiet once, at that byte offset, as a stalled upload would.
    """
    if realtime and not speed:
        speed = 1.0
    result = WyomingResult()
    stop_sent = asyncio.Event()
    async with AsyncTcpClient(host, port) as client:

        async def read() -> None:
            while True:
                event = await client.read_event()
                if event is None:
                    result.closed_by_server = True
                    return
                result.events.append(event)
                if TranscriptStart.is_type(event.type):
                    result.started = True
                elif TranscriptChunk.is_type(event.type):
                    result.chunks.append(TranscriptChunk.from_event(event).text)
                    if not stop_sent.is_set():
                        result.chunks_before_stop += 1
                elif TranscriptStop.is_type(event.type):
                    result.stopped = True
                    return
                elif Transcript.is_type(event.type):
                    result.text = Transcript.from_event(event).text
                    if result.latency is None and stop_at is not None:
                        result.latency = time.monotonic() - stop_at
                    if not result.started:
                        return
                elif Error.is_type(event.type):
                    error = Error.from_event(event)
                    result.error, result.error_code = error.text, error.code
                    if result.latency is None and stop_at is not None:
                        result.latency = time.monotonic() - stop_at
                    if stop_sent.is_set():
                        return

        stop_at: float | None = None
        reader = asyncio.create_task(read())
        try:
            async with asyncio.timeout(timeout):
                if send_transcribe:
                    await client.write_event(Transcribe(language=language).event())
                if send_audio_start:
                    await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
                bytes_per_second = rate * width * channels
                started = time.monotonic()
                for offset in range(0, len(pcm), chunk_bytes):
                    piece = pcm[offset : offset + chunk_bytes]
                    if pause_at is not None and offset <= pause_at < offset + chunk_bytes:
                        await asyncio.sleep(pause_seconds)
                        started += pause_seconds
                    await client.write_event(AudioChunk(rate=rate, width=width, channels=channels, audio=piece).event())
                    if speed:
                        due = started + (offset + len(piece)) / bytes_per_second / speed
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                    elif offset // chunk_bytes % 16 == 0:
                        await asyncio.sleep(0)
                stop_at = time.monotonic()
                stop_sent.set()
                await client.write_event(AudioStop().event())
                await reader
        finally:
            reader.cancel()
    return result
