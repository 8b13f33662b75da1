"""The iApp emulator driven by a raw ``websockets`` client: what it speaks, what it refuses, its faults."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from asr_daemon.emulators.base import EmulatorOptions, Fault
from asr_daemon.emulators.iapp import IAppEmulator

KEY = "test-key"
END = '{"data":{"status":"CloseConnection"}}'
CONFIRMATION = {"type": "realtime", "state": "Sentence", "text": "Confirm Close Connection"}


def tone(ms: int, amplitude: int = 6000) -> bytes:
    """A 440 Hz tone: loud enough to count as speech for the scripted recognizer."""
    count = 16 * ms
    samples = (int(amplitude * math.sin(2 * math.pi * 440 * i / 16000)) for i in range(count))
    return b"".join(s.to_bytes(2, "little", signed=True) for s in samples)


def silence(ms: int) -> bytes:
    return bytes(32 * ms)


TWO_SENTENCES = tone(600) + silence(700) + tone(600) + silence(300)


@asynccontextmanager
async def emulator(**kwargs: object) -> AsyncIterator[IAppEmulator]:
    options = EmulatorOptions(script=["สวัสดีครับ", "วันนี้อากาศดี"], **kwargs)  # type: ignore[arg-type]
    emu = IAppEmulator(options)
    await emu.start("127.0.0.1", 0)
    try:
        yield emu
    finally:
        await emu.stop()


def opened(emu: IAppEmulator, key: str | None = KEY) -> connect:
    headers = {"apikey": key} if key is not None else {}
    return connect(emu.url, additional_headers=headers, ping_interval=None, open_timeout=5)


async def send_in_chunks(ws: ClientConnection, pcm: bytes, size: int) -> None:
    for offset in range(0, len(pcm), size):
        await ws.send(pcm[offset : offset + size])


async def read_until_closed(ws: ClientConnection) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    async with asyncio.timeout(10):
        try:
            async for message in ws:
                assert isinstance(message, str)
                messages.append(json.loads(message))
        except ConnectionClosed:
            pass
    return messages


async def test_full_stream_speaks_the_documented_protocol() -> None:
    async with emulator() as emu, opened(emu) as ws:
        # Odd chunk sizes: the vendor takes PCM in frames of any size.
        await send_in_chunks(ws, TWO_SENTENCES, 777)
        await ws.send(END)
        messages = await read_until_closed(ws)
        assert ws.close_code == 1000

    assert messages[-1] == CONFIRMATION
    results = messages[:-1]
    assert all(m["type"] == "realtime" for m in results)
    states = [m["state"] for m in results]
    texts = [m["text"] for m in results]
    # One NewSentence opens the second sentence; everything else updates the open one.
    assert states[0] == "Sentence"
    assert states.count("NewSentence") == 1
    boundary = states.index("NewSentence")
    first, second = texts[:boundary], texts[boundary:]
    # Each update is the cumulative text of its sentence, ending with the whole sentence.
    assert first[-1] == "สวัสดีครับ"
    assert second[-1] == "วันนี้อากาศดี"
    assert all("สวัสดีครับ".startswith(t) for t in first)
    assert all("วันนี้อากาศดี".startswith(t) for t in second)
    assert len(first) > 1
    assert len(second) > 1

    [record] = emu.streams
    assert record.violations == []
    assert record.completed
    assert record.pcm_bytes == len(TWO_SENTENCES)
    assert record.pcm_sha256 == hashlib.sha256(TWO_SENTENCES).hexdigest()
    assert record.finals == ["สวัสดีครับ", "วันนี้อากาศดี"]
    assert record.headers["apikey"] == "***"


async def test_end_marker_with_the_samples_spacing_is_accepted() -> None:
    async with emulator() as emu, opened(emu) as ws:
        await ws.send(tone(300))
        await ws.send(json.dumps({"data": {"status": "CloseConnection"}}))
        messages = await read_until_closed(ws)
    assert messages[-1] == CONFIRMATION
    assert messages[-2]["text"] == "สวัสดีครับ"
    assert emu.streams[0].violations == []


async def test_silence_only_gets_just_the_confirmation() -> None:
    async with emulator() as emu, opened(emu) as ws:
        await ws.send(silence(500))
        await ws.send(END)
        assert await read_until_closed(ws) == [CONFIRMATION]
        assert ws.close_code == 1000


async def test_missing_apikey_header_is_refused_with_401_and_recorded() -> None:
    async with emulator() as emu:
        with pytest.raises(InvalidStatus) as refused:
            async with opened(emu, key=None):
                pass
        assert refused.value.response.status_code == 401
        assert b"API key" in (refused.value.response.body or b"")
        [record] = emu.streams
        assert any("apikey" in v for v in record.violations)


async def test_wrong_key_is_refused_with_401() -> None:
    async with emulator() as emu:
        with pytest.raises(InvalidStatus) as refused:
            async with opened(emu, key="wrong-key"):
                pass
        assert refused.value.response.status_code == 401
        # Bad credentials are not a protocol violation.
        assert emu.streams[0].violations == []


@pytest.mark.parametrize(
    "message",
    [
        "CloseConnection",
        '{"data":{"status":"closeconnection"}}',
        '{"status":"CloseConnection"}',
        '{"data":{"status":"CloseConnection"},"extra":1}',
        '{"action":"start","lang":"th"}',
        "",
    ],
)
async def test_any_other_text_frame_is_a_violation_and_closes_1008(message: str) -> None:
    async with emulator() as emu, opened(emu) as ws:
        await ws.send(tone(100))
        await ws.send(message)
        # Audio still in flight must not hold up the close.
        with contextlib.suppress(ConnectionClosed):
            for _ in range(40):
                await ws.send(tone(100))
        async with asyncio.timeout(3):
            messages = await read_until_closed(ws)
        assert ws.close_code == 1008
    assert CONFIRMATION not in messages
    [record] = emu.streams
    assert len(record.violations) == 1
    assert not record.completed


async def test_empty_binary_frame_is_a_violation_but_the_stream_goes_on() -> None:
    async with emulator() as emu, opened(emu) as ws:
        await ws.send(b"")
        await ws.send(tone(300))
        await ws.send(END)
        messages = await read_until_closed(ws)
    assert messages[-1] == CONFIRMATION
    [record] = emu.streams
    assert record.violations == ["empty binary frame"]
    assert record.pcm_bytes == len(tone(300))


async def test_audio_after_the_end_marker_is_a_violation_and_not_counted() -> None:
    async with emulator() as emu, opened(emu) as ws:
        await ws.send(tone(300))
        await ws.send(END)
        await ws.send(tone(100))
        messages = await read_until_closed(ws)
    assert messages[-1] == CONFIRMATION
    [record] = emu.streams
    assert record.pcm_bytes == len(tone(300))
    assert len(record.violations) == 1
    assert "after the end marker" in record.violations[0]


async def test_drop_cuts_the_connection_without_a_close_frame() -> None:
    async with emulator(fault=Fault.DROP, fault_after_bytes=3200) as emu, opened(emu) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                for _ in range(50):
                    await ws.send(tone(100))
                    await asyncio.sleep(0.01)
                await ws.send(END)
                async for _message in ws:
                    pass
        assert closed.value.rcvd is None
        assert emu.streams[0].fault_applied


async def test_stall_stops_answering_even_the_end_marker() -> None:
    async with emulator(fault=Fault.STALL, fault_after_bytes=3200) as emu, opened(emu) as ws:
        await send_in_chunks(ws, tone(600) + silence(700), 3200)
        await ws.send(END)
        received: list[str | bytes] = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                async for message in ws:
                    received.append(message)
        assert all(json.loads(m) != CONFIRMATION for m in received)
        assert emu.streams[0].fault_applied


async def test_error_at_start_refuses_the_first_stream_only_when_asked() -> None:
    async with emulator(fault=Fault.ERROR_AT_START, fault_streams=1) as emu:
        with pytest.raises(InvalidStatus) as refused:
            async with opened(emu):
                pass
        assert refused.value.response.status_code == 401
        async with opened(emu) as ws:
            await ws.send(tone(200))
            await ws.send(END)
            assert (await read_until_closed(ws))[-1] == CONFIRMATION
        assert [r.fault_applied for r in emu.streams] == [True, False]


async def test_error_at_start_status_is_configurable() -> None:
    emu = IAppEmulator(EmulatorOptions(fault=Fault.ERROR_AT_START), start_error_status=503)
    async with emu.running():
        with pytest.raises(InvalidStatus) as refused:
            async with opened(emu):
                pass
        assert refused.value.response.status_code == 503


async def test_idle_timeout_closes_a_silent_client() -> None:
    async with emulator(fault=Fault.IDLE_TIMEOUT, idle_timeout=0.3) as emu, opened(emu) as ws:
        await ws.send(tone(100))
        messages = await read_until_closed(ws)
        assert ws.close_code == 1000
        assert ws.close_reason == "idle timeout"
    assert CONFIRMATION not in messages
    assert not emu.streams[0].completed


async def test_no_idle_cut_unless_configured() -> None:
    async with emulator() as emu, opened(emu) as ws:
        await ws.send(tone(100))
        await asyncio.sleep(1.2)
        await ws.send(END)
        assert (await read_until_closed(ws))[-1] == CONFIRMATION


async def test_slow_final_holds_back_the_confirmation() -> None:
    async with emulator(fault=Fault.SLOW_FINAL, slow_final_seconds=0.5) as emu, opened(emu) as ws:
        await ws.send(tone(300))
        await ws.send(END)
        sent = time.monotonic()
        messages = await read_until_closed(ws)
        assert time.monotonic() - sent >= 0.5
    assert messages[-1] == CONFIRMATION
    assert emu.streams[0].fault_applied
