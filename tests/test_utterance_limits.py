"""What a client can hold, and for how long: a failed utterance lets its vendor stream go, only audio keeps an
utterance alive, a wall-clock limit ends it whatever the client does, client input and language codes are
bounded, and the audio budget refuses clearly once spent. Through the daemon to the AmiVoice emulator."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event, async_read_event
from wyoming.info import Describe

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions
from tests.support.daemon import running_daemon
from tests.support.speech import have_speech_tools, silence, speech
from tests.support.wyoming import transcribe, wire

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="espeak-ng and sox are needed")

RATE, WIDTH, CHANNELS = 16000, 2, 1


def config(emulator: AmiVoiceEmulator, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"vendors": {"amivoice": {"url": emulator.url, "api_key": "test-key"}}}
    for key, value in extra.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return base


@pytest.fixture
async def emulator() -> AsyncIterator[AmiVoiceEmulator]:
    async with AmiVoiceEmulator(EmulatorOptions(script=["こんにちは"])).running() as emu:
        assert isinstance(emu, AmiVoiceEmulator)
        yield emu


def chunk(pcm: bytes) -> Event:
    return AudioChunk(rate=RATE, width=WIDTH, channels=CHANNELS, audio=pcm).event()


class Client:
    """A raw Wyoming connection that records everything the daemon answers, until it closes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.events: list[Event] = []
        self.closed = asyncio.Event()
        self._reading = asyncio.create_task(self._read(reader))

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, *events: Event) -> None:
        self.writer.write(wire(*events))
        await self.writer.drain()

    def errors(self) -> list[dict[str, Any]]:
        return [event.data for event in self.events if event.type == "error"]

    async def wait_error(self, timeout: float) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while not self.errors():
                await asyncio.sleep(0.02)
        return self.errors()[0]

    async def close(self) -> None:
        self.writer.close()
        self._reading.cancel()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while (event := await async_read_event(reader)) is not None:
                self.events.append(event)
        except ConnectionError:
            pass
        finally:
            self.closed.set()


async def until(condition: Any, timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what}") from None


async def start_utterance(client: Client, emulator: AmiVoiceEmulator, language: str = "ja") -> None:
    """Begin an utterance and wait until its vendor stream is open."""
    await client.send(
        Transcribe(language=language).event(), AudioStart(rate=RATE, width=WIDTH, channels=CHANNELS).event()
    )
    pcm = speech("hello there")[:16000]
    await client.send(*(chunk(pcm[i : i + 3200]) for i in range(0, len(pcm), 3200)))
    await until(lambda: emulator.open_connections == 1, 5, "the vendor stream opened")


async def test_a_failed_utterance_lets_its_vendor_stream_go_without_waiting_for_audio_stop(
    emulator: AmiVoiceEmulator,
) -> None:
    async with running_daemon(config(emulator, limits={"max_utterance_seconds": 1})) as daemon:
        client = await Client.connect(daemon.port)
        await start_utterance(client, emulator)
        # Past the limit: the utterance fails at once...
        await client.send(*(chunk(bytes(3200)) for _ in range(10)))
        assert (await client.wait_error(5))["code"] == "too-long"
        # ...and its vendor connection is closed, though the client sends no audio-stop and stays connected.
        await until(lambda: emulator.open_connections == 0, 5, "the vendor stream was let go after the failure")
        assert not client.closed.is_set()
        assert len(emulator.streams) == 1
        await client.close()


async def test_describe_during_an_utterance_does_not_keep_it_alive(emulator: AmiVoiceEmulator) -> None:
    async with running_daemon(config(emulator, wyoming={"idle_timeout": 1.0})) as daemon:
        client = await Client.connect(daemon.port)
        await start_utterance(client, emulator)
        started = time.monotonic()

        async def keep_describing() -> None:
            while not client.closed.is_set():
                await client.send(Describe().event())
                await asyncio.sleep(0.3)

        describing = asyncio.create_task(keep_describing())
        try:
            error = await client.wait_error(8)
            assert error["code"] == "idle"
            await until(client.closed.is_set, 5, "the connection was closed")
            await until(lambda: emulator.open_connections == 0, 5, "the vendor stream was let go")
        finally:
            describing.cancel()
            await client.close()
        # describe was answered all along, until the cut.
        assert sum(event.type == "info" for event in client.events) >= 2
        assert time.monotonic() - started < 8


async def test_a_client_trickling_audio_is_cut_at_the_wall_clock_limit(emulator: AmiVoiceEmulator) -> None:
    # The wall-clock limit by default: twice max_utterance_seconds.
    async with running_daemon(config(emulator, limits={"max_utterance_seconds": 2})) as daemon:
        client = await Client.connect(daemon.port)
        await start_utterance(client, emulator)  # 0.5 s of audio
        started = time.monotonic()

        async def trickle() -> None:
            # 10 ms of audio every 100 ms: 1.5 s of audio more would take 15 s, well past the wall-clock limit.
            while not client.closed.is_set():
                await client.send(chunk(bytes(320)))
                await asyncio.sleep(0.1)

        trickling = asyncio.create_task(trickle())
        try:
            error = await client.wait_error(10)
            assert error["code"] == "too-long" and "within 4 s" in error["text"], error
            await until(client.closed.is_set, 5, "the connection was closed")
            await until(lambda: emulator.open_connections == 0, 5, "the vendor stream was let go")
        finally:
            trickling.cancel()
            await client.close()
        assert time.monotonic() - started < 10


async def test_an_absurd_audio_format_is_refused_at_audio_start(emulator: AmiVoiceEmulator) -> None:
    async with running_daemon(config(emulator)) as daemon:
        client = await Client.connect(daemon.port)
        await client.send(AudioStart(rate=384000, width=4, channels=32).event())
        error = await client.wait_error(5)
        assert error["code"] == "bad-audio" and "384000 Hz" in error["text"], error
        await client.send(AudioStop().event())
        await until(client.closed.is_set, 5, "the connection was closed after audio-stop")
        await client.close()
    assert not emulator.streams, "a vendor stream was opened for audio that is refused"


def wav_header(rate: int, width: int, channels: int) -> bytes:
    byte_rate = rate * width * channels
    fmt = struct.pack("<HHIIHH", 1, channels, rate, byte_rate, width * channels, width * 8)
    return (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", 0xFFFFFFFF)
    )


async def test_client_input_bytes_are_bounded_whatever_format_a_wav_header_claims(
    emulator: AmiVoiceEmulator,
) -> None:
    # The chunks say 16 kHz mono; the WAV header inside says 384 kHz, 32 channels, 32 bit (49 MB per second of
    # audio). 2 MiB of it is 0.04 s once converted, so only a bound on the input bytes refuses it.
    data = wav_header(384000, 4, 32) + bytes(2 << 20)
    async with running_daemon(config(emulator, limits={"max_utterance_seconds": 1})) as daemon:
        client = await Client.connect(daemon.port)
        await client.send(AudioStart(rate=RATE, width=WIDTH, channels=CHANNELS).event())
        for offset in range(0, len(data), 64 * 1024):
            await client.send(chunk(data[offset : offset + 64 * 1024]))
        await client.send(AudioStop().event())
        error = await client.wait_error(10)
        await client.close()
    assert error["code"] == "too-long" and "input larger than" in error["text"], error


async def test_an_overlong_language_is_refused(emulator: AmiVoiceEmulator) -> None:
    async with running_daemon(config(emulator, default_vendor="amivoice")) as daemon:
        client = await Client.connect(daemon.port)
        await client.send(Transcribe(language="x" * 100).event())
        error = await client.wait_error(5)
        await client.close()
    assert error["code"] == "bad-event" and "64 characters" in error["text"], error


async def test_a_language_with_a_newline_cannot_forge_a_log_line(
    emulator: AmiVoiceEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asr_daemon")
    pcm = speech("hello there") + silence(800)
    async with running_daemon(config(emulator, default_vendor="amivoice")) as daemon:
        result = await transcribe(daemon.port, pcm, language="ja\n2026-01-01 ERROR forged")
    assert result.text == "こんにちは"
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("asr_daemon")]
    mentioned = [message for message in messages if "forged" in message]
    assert mentioned, "the language is logged"
    assert all("\n" not in message for message in mentioned), mentioned


async def test_the_daily_budget_refuses_the_next_utterance_with_a_clear_error(emulator: AmiVoiceEmulator) -> None:
    pcm = speech("hello there") + silence(800)
    async with running_daemon(config(emulator, budget={"daily_seconds": 1})) as daemon:
        first = await transcribe(daemon.port, pcm, language="ja")
        # The utterance that crossed the limit was finished...
        assert first.text == "こんにちは"
        assert daemon.budget is not None and daemon.budget.used_today() >= len(pcm) / 32000 - 0.1
        # ...and the next one is refused before any vendor stream is opened.
        second = await transcribe(daemon.port, pcm, language="ja")
    assert second.error_code == "budget-exhausted"
    assert second.error is not None and "daily audio budget" in second.error and "refills in" in second.error
    assert len(emulator.streams) == 1


async def test_the_per_client_budget_applies_to_addresses_not_exempt(emulator: AmiVoiceEmulator) -> None:
    pcm = speech("hello there") + silence(800)
    # Loopback is exempt by default, as Home Assistant's own address would be listed.
    async with running_daemon(config(emulator, budget={"per_client_hourly_seconds": 1})) as daemon:
        for _ in range(2):
            assert (await transcribe(daemon.port, pcm, language="ja")).text == "こんにちは"
    budget = {"per_client_hourly_seconds": 1, "exempt_clients": []}
    async with running_daemon(config(emulator, budget=budget)) as daemon:
        assert (await transcribe(daemon.port, pcm, language="ja")).text == "こんにちは"
        refused = await transcribe(daemon.port, pcm, language="ja")
    assert refused.error_code == "budget-exhausted"
    assert refused.error is not None and "client 127.0.0.1" in refused.error
