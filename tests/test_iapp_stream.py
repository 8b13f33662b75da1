"""The iApp adapter and codec over the shared transport, against the emulator (and one hand-made server)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from pydantic import SecretStr, ValidationError
from websockets.asyncio.server import ServerConnection, serve

from asr_daemon.emulators.base import EmulatorOptions, Fault
from asr_daemon.emulators.iapp import IAppEmulator
from asr_daemon.vendors.base import (
    FinalResult,
    PartialResult,
    StreamCompleted,
    StreamOptions,
    VendorError,
    VendorEvent,
    VendorFailure,
)
from asr_daemon.vendors.iapp.adapter import IAppAdapter, IAppSettings
from asr_daemon.vendors.transport import VendorStream

KEY = "test-key"
THAI = StreamOptions(language="th")


def tone(ms: int, amplitude: int = 6000) -> bytes:
    samples = (int(amplitude * math.sin(2 * math.pi * 330 * i / 16000)) for i in range(16 * ms))
    return b"".join(s.to_bytes(2, "little", signed=True) for s in samples)


def silence(ms: int) -> bytes:
    return bytes(32 * ms)


def sentences(count: int) -> bytes:
    """``count`` bursts of 'speech' separated by pauses the emulator cuts sentences at."""
    return silence(200) + silence(700).join(tone(500) for _ in range(count)) + silence(300)


def adapter_for(url: str, key: str | None = KEY) -> IAppAdapter:
    return IAppAdapter(IAppSettings(url=url, api_key=SecretStr(key) if key is not None else None))


@asynccontextmanager
async def emulator(script: list[str], **kwargs: object) -> AsyncIterator[IAppEmulator]:
    emu = IAppEmulator(EmulatorOptions(script=script, **kwargs))  # type: ignore[arg-type]
    async with emu.running():
        yield emu


async def run_stream(adapter: IAppAdapter, pcm: bytes) -> list[VendorEvent]:
    """Connect, send ``pcm`` in the codec's chunks, end, and collect events up to completion or an error."""
    stream = VendorStream(adapter, THAI)
    await stream.connect()
    events: list[VendorEvent] = []
    try:
        await stream.wait_ready()
        size = stream.codec.chunk_bytes
        for offset in range(0, len(pcm), size):
            await stream.send_audio(pcm[offset : offset + size])
        await stream.end()
        async with asyncio.timeout(10):
            while True:
                event = await stream.events.get()
                events.append(event)
                if isinstance(event, StreamCompleted | VendorError):
                    break
        # Whatever the codec says about the close that follows must not be an error.
        await asyncio.sleep(0.05)
        while not stream.events.empty():
            events.append(stream.events.get_nowait())
    finally:
        await stream.aclose()
    return events


def finals(events: list[VendorEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, FinalResult)]


# ---------------------------------------------------------------------------------------------------------
# The adapter on its own


def test_settings_defaults_and_strictness() -> None:
    settings = IAppSettings()
    assert settings.languages == ["th", "th-TH"]
    assert settings.url is None
    with pytest.raises(ValidationError):
        IAppSettings.model_validate({"api_key": "k", "close_timeout": 5})


async def test_connect_request_sends_the_key_header_and_no_pings() -> None:
    adapter = IAppAdapter(IAppSettings(api_key=SecretStr("abc-123")))
    request = await adapter.prepare(THAI)
    assert request.url == "wss://api-iflytek.iapp.co.th/asr"
    assert dict(request.headers) == {"apikey": "abc-123"}
    assert request.ping_interval is None
    assert adapter.secrets() == ["abc-123"]
    assert adapter.languages == ["th", "th-TH"]


# ---------------------------------------------------------------------------------------------------------
# Against the emulator


async def test_single_sentence_exact_text_and_every_byte() -> None:
    pcm = sentences(1)
    async with emulator(["สวัสดีครับ"]) as emu:
        events = await run_stream(adapter_for(emu.url), pcm)
    assert finals(events) == ["สวัสดีครับ"]
    assert isinstance(events[-1], StreamCompleted)
    assert not [e for e in events if isinstance(e, VendorError)]
    partials = [e.text for e in events if isinstance(e, PartialResult)]
    assert partials
    assert all("สวัสดีครับ".startswith(p) for p in partials)
    [record] = emu.streams
    assert record.violations == []
    assert record.completed
    assert record.pcm_bytes == len(pcm)
    assert record.pcm_sha256 == hashlib.sha256(pcm).hexdigest()


async def test_multi_sentence_finals_in_order() -> None:
    script = ["สวัสดีครับ", "วันนี้อากาศดี", "เปิดไฟห้องนั่งเล่น"]
    pcm = sentences(3)
    async with emulator(script) as emu:
        events = await run_stream(adapter_for(emu.url), pcm)
    assert finals(events) == script
    assert isinstance(events[-1], StreamCompleted)
    [record] = emu.streams
    assert record.violations == []
    assert record.pcm_bytes == len(pcm)
    assert record.pcm_sha256 == hashlib.sha256(pcm).hexdigest()


async def test_outage_at_start_is_retryable() -> None:
    emu = IAppEmulator(EmulatorOptions(fault=Fault.ERROR_AT_START), start_error_status=503)
    async with emu.running():
        with pytest.raises(VendorFailure) as failed:
            await VendorStream(adapter_for(emu.url), THAI).connect()
    assert not failed.value.error.fatal
    assert failed.value.error.code == "503"


async def test_idle_cut_before_the_end_is_an_error_naming_it() -> None:
    async with emulator(["สวัสดีครับ"], fault=Fault.IDLE_TIMEOUT, idle_timeout=0.2) as emu:
        stream = VendorStream(adapter_for(emu.url), THAI)
        await stream.connect()
        try:
            await stream.send_audio(tone(100))
            async with asyncio.timeout(5):
                event = await stream.events.get()
                while not isinstance(event, VendorError):
                    event = await stream.events.get()
        finally:
            await stream.aclose()
    assert "idle timeout" in event.message
    assert not event.fatal


async def test_vendor_error_frame_mid_stream_carries_the_vendors_message() -> None:
    # iApp documents no error frame; whatever JSON it sends instead of a result must reach the user.
    received = 0

    async def vendor(connection: ServerConnection) -> None:
        nonlocal received
        async for message in connection:
            received += len(message)
            if received >= 3200:
                await connection.send('{"type":"realtime","state":"Sentence","text":"สวัส"}')
                error = {"code": 10800, "message": "engine overloaded, retry later"}
                await connection.send(json.dumps(error))
                await connection.close(1011, "internal error")
                return

    # Unbounded queue: this server stops reading, yet must still see the client's close frame at once.
    async with serve(vendor, "127.0.0.1", 0, max_queue=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        events = await run_stream(adapter_for(f"ws://127.0.0.1:{port}/asr"), sentences(1))
    assert PartialResult("สวัส") in events
    error = next(e for e in events if isinstance(e, VendorError))
    assert error.message == "iApp error: engine overloaded, retry later"
    assert error.code == "10800"
    assert not error.fatal
    assert finals(events) == []
