"""The Wyoming side as Home Assistant and satellites use it, end to end through the daemon to the AmiVoice emulator.

Vendor-specific end-to-end cases live in each vendor's test file; these cover what every request relies on:
describe, RIFF uploads, concurrency without cross-talk, deadlines, clean errors for bad input and bounded
resources.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import async_read_event

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions, Fault
from tests.support.daemon import running_daemon
from tests.support.speech import have_speech_tools, silence, speech, utterance, wav
from tests.support.wyoming import describe, transcribe

pytestmark = pytest.mark.skipif(
    not have_speech_tools(), reason="espeak-ng and sox are needed (scripts/setup installs them)"
)

JA_SCRIPT = ["こんにちは", "今日は良い天気です"]


def config(emulator: AmiVoiceEmulator, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"vendors": {"amivoice": {"url": emulator.url, "api_key": "test-key"}}}
    for key, value in extra.items():
        base.setdefault(key, {}).update(value)
    return base


async def emulator_with(**options: Any) -> AsyncIterator[AmiVoiceEmulator]:
    async with AmiVoiceEmulator(EmulatorOptions(script=JA_SCRIPT, **options)).running() as emulator:
        assert isinstance(emulator, AmiVoiceEmulator)
        yield emulator


@pytest.fixture
async def emulator() -> AsyncIterator[AmiVoiceEmulator]:
    async for emu in emulator_with():
        yield emu


async def test_describe_advertises_short_and_region_languages(emulator: AmiVoiceEmulator) -> None:
    async with running_daemon(config(emulator)) as daemon:
        info = await describe(daemon.port)
    program = info.asr[0]
    assert program.name == "asr-daemon"
    assert program.supports_transcript_streaming is True
    assert program.version
    languages = {lang for model in program.models for lang in model.languages}
    assert {"ja", "ja-JP"} <= languages


async def test_wav_upload_with_riff_header_split_like_ha_rest(emulator: AmiVoiceEmulator) -> None:
    pcm = utterance("hello there")
    data = wav(pcm)
    async with running_daemon(config(emulator)) as daemon:
        # Home Assistant's REST STT path splits the upload at every 0x0A byte.
        pieces = data.split(b"\n")
        chunks = [p + b"\n" for p in pieces[:-1]] + [pieces[-1]]
        result = await transcribe_pieces(daemon.port, chunks, language="ja")
    assert result == "こんにちは"
    # The vendor got the PCM without the 44-byte header, every byte of it.
    assert emulator.streams[-1].pcm_bytes == len(pcm)
    assert emulator.streams[-1].pcm_sha256 == hashlib.sha256(pcm).hexdigest()


async def transcribe_pieces(port: int, pieces: list[bytes], language: str) -> str | None:
    from wyoming.asr import Transcribe, Transcript

    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language=language).event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        for piece in pieces:
            if piece:
                await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=piece).event())
        await client.write_event(AudioStop().event())
        async with asyncio.timeout(10):
            while True:
                event = await client.read_event()
                assert event is not None, "closed without a transcript"
                if Transcript.is_type(event.type):
                    return Transcript.from_event(event).text
                assert not Error.is_type(event.type), event.data


async def test_three_concurrent_clients_get_their_own_transcripts() -> None:
    scripts = [["一番目です"], ["二番目です"], ["三番目です"]]
    texts = ["one two three", "the second speaker is here", "and finally number three"]
    pcms = [utterance(text) for text in texts]
    async for emulator in emulator_with(stream_scripts=scripts):
        async with running_daemon(config(emulator)) as daemon:
            results = await asyncio.gather(
                *(transcribe(daemon.port, pcm, language="ja", realtime=True, chunk_bytes=320) for pcm in pcms)
            )
        by_hash = {record.pcm_sha256: record for record in emulator.streams}
        assert len(by_hash) == 3
        for pcm, result in zip(pcms, results, strict=True):
            record = by_hash[hashlib.sha256(pcm).hexdigest()]  # this client's audio reached exactly one stream...
            assert record.pcm_bytes == len(pcm)
            assert result.text == scripts[record.index][0]  # ...and that stream's text came back to this client
            assert not record.violations


async def test_partials_arrive_while_audio_streams(emulator: AmiVoiceEmulator) -> None:
    pcm = utterance("hello there my friend", "the weather is nice today")
    async with running_daemon(config(emulator)) as daemon:
        result = await transcribe(daemon.port, pcm, language="ja-JP", realtime=True)
    assert result.text == "".join(JA_SCRIPT)
    assert result.chunks_before_stop > 0
    assert "".join(result.chunks) == result.text
    assert result.started and result.stopped


async def test_chunks_without_audio_start_and_without_transcribe(emulator: AmiVoiceEmulator) -> None:
    pcm = utterance("hello there")
    async with running_daemon(config(emulator)) as daemon:
        result = await transcribe(daemon.port, pcm, language=None, send_transcribe=False, send_audio_start=False)
    assert result.text == "こんにちは"


async def test_48k_stereo_client_audio_is_normalised(emulator: AmiVoiceEmulator) -> None:
    import numpy as np

    mono = np.frombuffer(utterance("hello there"), dtype=np.int16)
    upsampled = np.repeat(mono, 3)  # crude 48 kHz: the resampler must still give the vendor 16 kHz
    stereo = np.column_stack([upsampled, upsampled]).reshape(-1).astype(np.int16).tobytes()
    async with running_daemon(config(emulator)) as daemon:
        result = await transcribe(daemon.port, stereo, language="ja", rate=48000, channels=2, chunk_bytes=1920)
    assert result.text == "こんにちは"
    assert abs(emulator.streams[-1].pcm_bytes - len(mono) * 2) <= 64


async def test_wrong_key_is_a_clear_error_before_audio_stop() -> None:
    async for emulator in emulator_with(api_keys=["the-real-key"]):
        async with running_daemon(config(emulator)) as daemon:
            result = await transcribe(daemon.port, utterance("hello"), language="ja", realtime=True)
    assert result.text is None
    assert result.error_code == "vendor-rejected"
    assert "authorization" in (result.error or "")
    assert "test-key" not in (result.error or "")
    # Reported as soon as the vendor refused, not only after the whole utterance was uploaded.
    assert result.latency is None
    assert len(emulator.streams) == 1  # a rejected key is not retried


async def test_stalled_vendor_gives_an_error_within_the_deadline() -> None:
    async for emulator in emulator_with(fault=Fault.STALL, fault_after_bytes=3200):
        async with running_daemon(config(emulator, limits={"final_timeout": 1.5})) as daemon:
            started = time.monotonic()
            result = await transcribe(daemon.port, utterance("hello there"), language="ja")
    assert result.error_code == "timeout"
    assert result.latency is not None and 1.4 <= result.latency < 3.0
    assert time.monotonic() - started < 10


async def test_vendor_drop_gives_an_error_not_a_hang() -> None:
    async for emulator in emulator_with(fault=Fault.DROP, fault_after_bytes=3200):
        async with running_daemon(config(emulator)) as daemon:
            result = await transcribe(daemon.port, utterance("hello there"), language="ja")
    assert result.text is None
    assert result.error_code == "vendor-error"


async def test_unreachable_vendor_is_an_error() -> None:
    cfg = {"vendors": {"amivoice": {"url": "ws://127.0.0.1:9/v1/", "api_key": "k", "connect_timeout": 1}}}
    async with running_daemon(cfg) as daemon:
        result = await transcribe(daemon.port, silence(500), language="ja")
    assert result.error_code == "vendor-error"
    assert "connect" in (result.error or "")


async def test_language_nobody_serves_is_an_error_naming_what_is_served(emulator: AmiVoiceEmulator) -> None:
    two = config(emulator)
    two["vendors"]["iapp"] = {"url": "ws://127.0.0.1:9/asr", "api_key": "k"}
    async with running_daemon(two) as daemon:
        result = await transcribe(daemon.port, silence(300), language="de")
    assert result.error_code == "unsupported-language"
    assert "'de'" in (result.error or "") and "ja" in (result.error or "")
    assert emulator.streams == []


async def test_client_disconnect_mid_utterance_frees_the_session(emulator: AmiVoiceEmulator) -> None:
    async with running_daemon(config(emulator)) as daemon:
        client = AsyncTcpClient("127.0.0.1", daemon.port)
        await client.connect()
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        pcm = speech("hello there")
        for offset in range(0, len(pcm), 3200):
            await client.write_event(
                AudioChunk(rate=16000, width=2, channels=1, audio=pcm[offset : offset + 3200]).event()
            )
        await asyncio.sleep(0.3)
        assert len(daemon.context.sessions) == 1
        await client.disconnect()
        async with asyncio.timeout(3):
            while daemon.context.sessions or daemon.server.active:
                await asyncio.sleep(0.05)
        # The vendor connection was closed too.
        async with asyncio.timeout(3):
            while emulator.open_connections:
                await asyncio.sleep(0.05)


async def raw_exchange(port: int, data: bytes, read_timeout: float = 5.0) -> list[dict[str, Any]]:
    """Send raw bytes and return the events the server answers with until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    events = []
    try:
        async with asyncio.timeout(read_timeout):
            while True:
                event = await async_read_event(reader)
                if event is None:
                    break
                events.append({"type": event.type, **event.data})
    finally:
        writer.close()
    return events


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"this is not json\n", None),
        (b"[1, 2, 3]\n", "bad-event"),
        (b'{"data": {}}\n', "bad-event"),
        (json.dumps({"type": "audio-chunk", "payload_length": 1 << 40}).encode() + b"\n", "too-large"),
        (json.dumps({"type": "audio-chunk", "data_length": 50_000_000}).encode() + b"\n", "too-large"),
        (b"{" + b" " * 70_000 + b"\n", "too-large"),
        (
            json.dumps({"type": "audio-start", "data": {"rate": "fast"}}).encode()
            + b"\n"
            + json.dumps({"type": "audio-stop"}).encode()
            + b"\n",
            "bad-event",
        ),
        (json.dumps({"type": "audio-stop"}).encode() + b"\n", "bad-event"),
    ],
)
async def test_malformed_input_gets_an_error_or_a_close_and_the_server_carries_on(
    emulator: AmiVoiceEmulator, data: bytes, code: str | None
) -> None:
    async with running_daemon(config(emulator)) as daemon:
        events = await raw_exchange(daemon.port, data)
        if code is not None:
            assert events and events[-1]["type"] == "error" and events[-1]["code"] == code, events
        # Whatever a client sends, the next one is served.
        assert (await describe(daemon.port)).asr


async def test_connections_past_max_sessions_are_refused_clearly(emulator: AmiVoiceEmulator) -> None:
    async with running_daemon(config(emulator, wyoming={"max_sessions": 2})) as daemon:
        held = [await asyncio.open_connection("127.0.0.1", daemon.port) for _ in range(2)]
        await asyncio.sleep(0.1)
        events = await raw_exchange(daemon.port, b"")
        assert events == [{"type": "error", "text": "server busy: 2 sessions are running", "code": "busy"}]
        for _, writer in held:
            writer.close()
        async with asyncio.timeout(3):
            while daemon.server.active:
                await asyncio.sleep(0.05)
        assert (await describe(daemon.port)).asr


async def test_silent_connection_is_closed_after_idle_timeout(emulator: AmiVoiceEmulator) -> None:
    async with running_daemon(config(emulator, wyoming={"idle_timeout": 0.5})) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        async with asyncio.timeout(3):
            event = await async_read_event(reader)
            assert event is not None and event.type == "error" and event.data["code"] == "idle"
            assert await async_read_event(reader) is None
        writer.close()


async def test_utterance_over_the_limit_is_refused_and_reported(emulator: AmiVoiceEmulator) -> None:
    async with running_daemon(config(emulator, limits={"max_utterance_seconds": 1})) as daemon:
        result = await transcribe(daemon.port, silence(3000), language="ja")
    assert result.error_code == "too-long"
