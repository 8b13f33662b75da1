"""Clients that try to hold a paid vendor stream, through the daemon to the AmiVoice emulator, measured.

Used by ``tests/test_utterance_limits.py`` (which asserts the outcomes) and by ``python -m tests.reliability``
(which writes the figures in docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart
from wyoming.event import Event, async_read_event
from wyoming.info import Describe

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions
from tests.support.daemon import running_daemon
from tests.support.speech import speech
from tests.support.wyoming import wire

RATE, WIDTH, CHANNELS = 16000, 2, 1


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
        await until(self.errors, timeout, "an error from the daemon")
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


async def until(condition: Callable[[], object], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout:g} s: {what}") from None


async def start_utterance(client: Client, emulator: AmiVoiceEmulator, language: str = "ja") -> None:
    """Begin an utterance (0.5 s of speech) and wait until its vendor stream is open."""
    await client.send(
        Transcribe(language=language).event(), AudioStart(rate=RATE, width=WIDTH, channels=CHANNELS).event()
    )
    pcm = speech("hello there")[:16000]
    await client.send(*(chunk(pcm[i : i + 3200]) for i in range(0, len(pcm), 3200)))
    await until(lambda: emulator.open_connections == 1, 5, "the vendor stream opened")


@dataclass
class Held:
    """How long a client held a vendor stream."""

    scenario: str
    limit: str
    error: dict[str, Any]
    # Seconds from the moment the client's behaviour began (see each scenario) to the error, and to the vendor
    # connection's close.
    error_after: float
    vendor_closed_after: float
    # The daemon closed the client's connection (it would otherwise wait for audio-stop).
    client_closed: bool
    vendor_connections: int


async def _scenario(
    scenario: str,
    limit: str,
    config: dict[str, Any],
    behave: Callable[[Client], Any],
    timeout: float,
    *,
    close_expected: bool,
) -> Held:
    async with AsyncExitStack() as stack:
        emulator = await stack.enter_async_context(AmiVoiceEmulator(EmulatorOptions(script=["こんにちは"])).running())
        assert isinstance(emulator, AmiVoiceEmulator)
        config = {"vendors": {"amivoice": {"url": emulator.url, "api_key": "test-key"}}, **config}
        daemon = await stack.enter_async_context(running_daemon(config))
        client = await Client.connect(daemon.port)
        stack.push_async_callback(client.close)
        await start_utterance(client, emulator)
        started = time.monotonic()
        misbehaving = asyncio.create_task(behave(client))
        try:
            error = await client.wait_error(timeout)
            error_after = time.monotonic() - started
            await until(lambda: emulator.open_connections == 0, 5, "the vendor stream was let go")
            vendor_closed_after = time.monotonic() - started
            if close_expected:
                await until(client.closed.is_set, 5, "the connection was closed")
        finally:
            misbehaving.cancel()
        return Held(
            scenario,
            limit,
            error,
            error_after,
            vendor_closed_after,
            client.closed.is_set(),
            len(emulator.streams),
        )


async def failed_without_audio_stop() -> Held:
    """1.5 s of audio past a 1 s limit, then nothing (no audio-stop, connection kept open): from the audio past
    the limit."""

    async def overrun(client: Client) -> None:
        await client.send(*(chunk(bytes(3200)) for _ in range(10)))

    return await _scenario(
        "utterance too long, no audio-stop",
        "limits.max_utterance_seconds: 1",
        {"limits": {"max_utterance_seconds": 1}},
        overrun,
        5,
        close_expected=False,
    )


async def describe_instead_of_audio(idle_timeout: float = 1.0) -> Held:
    """A describe every 0.3 s and no more audio: from the last audio."""

    async def keep_describing(client: Client) -> None:
        while not client.closed.is_set():
            await client.send(Describe().event())
            await asyncio.sleep(0.3)

    return await _scenario(
        "describe every 0.3 s, no audio",
        f"wyoming.idle_timeout: {idle_timeout:g}",
        {"wyoming": {"idle_timeout": idle_timeout}},
        keep_describing,
        idle_timeout + 7,
        close_expected=True,
    )


async def trickling_audio(max_utterance_seconds: float = 2.0) -> Held:
    """10 ms of audio every 100 ms, forever: from the utterance's start (the wall-clock limit by default is twice
    max_utterance_seconds)."""

    async def trickle(client: Client) -> None:
        while not client.closed.is_set():
            await client.send(chunk(bytes(320)))
            await asyncio.sleep(0.1)

    return await _scenario(
        "10 ms of audio per 100 ms",
        f"limits.max_utterance_seconds: {max_utterance_seconds:g} (wall clock: {2 * max_utterance_seconds:g} s)",
        {"limits": {"max_utterance_seconds": max_utterance_seconds}},
        trickle,
        2 * max_utterance_seconds + 6,
        close_expected=True,
    )
