"""The Yating emulator, driven by raw HTTP and ``websockets`` clients: its protocol, what it refuses, its faults."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from asr_daemon.emulators.base import EmulatorOptions, Fault
from asr_daemon.emulators.yating import YatingEmulator

KEY = "test-key"
SCRIPT = ["今天天氣很好。", "我們去公園散步吧。"]


def tone(ms: int, amplitude: int = 6000) -> bytes:
    """A 440 Hz tone: loud enough to count as speech for the scripted recognizer."""
    samples = (int(amplitude * math.sin(2 * math.pi * 440 * i / 16000)) for i in range(16 * ms))
    return b"".join(s.to_bytes(2, "little", signed=True) for s in samples)


def silence(ms: int) -> bytes:
    return bytes(32 * ms)


TWO_SENTENCES = tone(600) + silence(700) + tone(600) + silence(300)


@asynccontextmanager
async def emulator(script: list[str] | None = None, **kwargs: Any) -> AsyncIterator[YatingEmulator]:
    option_names = set(EmulatorOptions.__dataclass_fields__)
    options = EmulatorOptions(
        script=SCRIPT if script is None else script, **{k: v for k, v in kwargs.items() if k in option_names}
    )
    emu = YatingEmulator(options, **{k: v for k, v in kwargs.items() if k not in option_names})
    await emu.start("127.0.0.1", 0)
    try:
        yield emu
    finally:
        await emu.stop()


def _post_blocking(url: str, headers: dict[str, str], body: bytes, method: str) -> tuple[int, Any]:
    parts = urlsplit(url)
    client = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        client.request(method, parts.path, body=body, headers=headers)
        response = client.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        client.close()


async def post(
    url: str,
    body: Any = None,
    *,
    key: str | None = KEY,
    content_type: str = "application/json",
    raw: bytes | None = None,
    method: str = "POST",
) -> tuple[int, Any]:
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["key"] = key
    data = raw if raw is not None else json.dumps(body if body is not None else {"pipeline": "asr-zh-tw-std"})
    encoded = data if isinstance(data, bytes) else data.encode()
    return await asyncio.to_thread(_post_blocking, url, headers, encoded, method)


async def token(emu: YatingEmulator, pipeline: str = "asr-zh-tw-std") -> str:
    status, document = await post(emu.token_url, {"pipeline": pipeline})
    assert status == 201, document
    value = document["auth_token"]
    assert isinstance(value, str)
    return value


def opened(emu: YatingEmulator, value: str | None) -> connect:
    url = emu.url if value is None else f"{emu.url}?token={value}"
    return connect(url, ping_interval=None, open_timeout=5)


async def next_json(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, str)
    document = json.loads(message)
    assert isinstance(document, dict)
    return document


async def greeted(ws: ClientConnection) -> dict[str, Any]:
    greeting = await next_json(ws)
    assert greeting["status"] == "ok" and greeting["message_type"] == "session_started", greeting
    return greeting


async def send_in_chunks(ws: ClientConnection, pcm: bytes, size: int = 2000) -> None:
    for offset in range(0, len(pcm), size):
        await ws.send(pcm[offset : offset + size])


async def read_until_eof(ws: ClientConnection) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(10):
        while True:
            document = await next_json(ws)
            messages.append(document)
            if document.get("pipe", {}).get("asr_eof") is True:
                return messages


async def read_until_closed(ws: ClientConnection, timeout: float = 10) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        try:
            async for message in ws:
                assert isinstance(message, str)
                messages.append(json.loads(message))
        except ConnectionClosed:
            pass
    return messages


# -- the token endpoint -----------------------------------------------------------------------------------


async def test_token_endpoint_issues_one_time_tokens_with_201() -> None:
    async with emulator() as emu:
        body = {"pipeline": "asr-zh-en-std", "options": {"s3CusModelKey": "my-model"}}
        status, document = await post(emu.token_url, body)
        assert status == 201
        assert document["success"] is True
        assert len(document["auth_token"]) == 40
        other = await token(emu)
        assert other != document["auth_token"]
        assert emu.token_requests[0].pipeline == "asr-zh-en-std"
        assert emu.token_requests[0].options == {"s3CusModelKey": "my-model"}
        assert emu.token_violations == []


async def test_token_endpoint_refuses_a_wrong_or_missing_key_with_401() -> None:
    async with emulator() as emu:
        status, document = await post(emu.token_url, key="wrong-key")
        assert status == 401
        assert document["success"] is False
        assert emu.token_violations == []
        status, _ = await post(emu.token_url, key=None)
        assert status == 401
        assert emu.token_violations == ["token request without a key header"]


@pytest.mark.parametrize(
    ("body", "content_type", "problem"),
    [
        ({"pipeline": "asr-klingon"}, "application/json", "unknown pipeline"),
        ({}, "application/json", "unknown pipeline"),
        ({"pipeline": "asr-en-std", "lang": "en"}, "application/json", "unknown keys"),
        ({"pipeline": "asr-en-std", "options": {"s3CusModelKey": 7}}, "application/json", "s3CusModelKey"),
        ({"pipeline": "asr-stream-general", "options": {"lang": "fr"}}, "application/json", "options.lang"),
        (b"pipeline=asr-en-std", "application/json", "not JSON"),
        ({"pipeline": "asr-en-std"}, "text/plain", "Content-Type"),
    ],
)
async def test_token_endpoint_refuses_malformed_requests(body: Any, content_type: str, problem: str) -> None:
    async with emulator() as emu:
        raw = body if isinstance(body, bytes) else None
        status, document = await post(emu.token_url, body, content_type=content_type, raw=raw)
        assert status == 400
        assert document["success"] is False
        assert len(emu.token_violations) == 1 and problem in emu.token_violations[0]


async def test_token_endpoint_accepts_the_legacy_general_pipeline() -> None:
    async with emulator() as emu:
        body = {"pipeline": "asr-stream-general", "options": {"lang": "zhen"}}
        status, _ = await post(emu.token_url, body)
        assert status == 201
        assert emu.token_violations == []


async def test_token_endpoint_knows_only_post_to_its_path() -> None:
    async with emulator() as emu:
        assert (await post(emu.token_url, method="GET"))[0] == 405
        assert (await post(emu.token_url.replace("/v1/token", "/v2/token")))[0] == 404


# -- the WebSocket ----------------------------------------------------------------------------------------


async def test_full_stream_speaks_the_documented_protocol() -> None:
    async with emulator() as emu:
        async with opened(emu, await token(emu)) as ws:
            greeting = await greeted(ws)
            assert greeting["ssid"]
            await send_in_chunks(ws, TWO_SENTENCES)
            await ws.send(b"")
            messages = await read_until_eof(ws)
        record = emu.streams[0]

    pipes = [m["pipe"] for m in messages]
    assert pipes[0] == {"asr_state": "first_chunk_received"}
    assert pipes[-1] == {"asr_eof": True}
    finals = [p for p in pipes if p.get("asr_final")]
    assert [f["asr_sentence"] for f in finals] == SCRIPT
    for final in finals:
        assert set(final) >= {
            "asr_begin_time", "asr_end_time", "asr_confidence", "asr_word_time_stamp", "text_segmented"
        }
        assert 0 <= final["asr_begin_time"] < final["asr_end_time"]
        words = final["asr_word_time_stamp"]
        assert "".join(w["word"] + w["punctuator"] for w in words) == final["asr_sentence"]
        assert all(w["begin_time"] < w["end_time"] for w in words)
    partials = [p["asr_sentence"] for p in pipes if "asr_sentence" in p and "asr_final" not in p]
    assert partials and all(SCRIPT[0].startswith(p) or SCRIPT[1].startswith(p) for p in partials)
    states = [p["asr_state"] for p in pipes if "asr_state" in p]
    assert states.count("utterance_begin") == 2 and states.count("utterance_end") == 2
    # Each final is followed by its utterance_end, as in the vendor's example exchange.
    for index, pipe in enumerate(pipes):
        if pipe.get("asr_final"):
            assert pipes[index + 1] == {"asr_state": "utterance_end"}

    assert record.violations == []
    assert record.completed
    assert record.pcm_bytes == len(TWO_SENTENCES)
    assert record.pcm_sha256 == hashlib.sha256(TWO_SENTENCES).hexdigest()
    assert record.finals == SCRIPT


async def test_a_token_works_once() -> None:
    async with emulator(error_close_delay=0.3) as emu:
        value = await token(emu)
        async with opened(emu, value) as ws:
            await greeted(ws)
        async with opened(emu, value) as ws:
            started = time.monotonic()
            messages = await read_until_closed(ws)
            elapsed = time.monotonic() - started
        assert messages == [{"status": "error", "detail": "token has already been used"}]
        # The vendor closes a few seconds after the error, not at once.
        assert elapsed >= 0.25


@pytest.mark.parametrize("value", [None, "0" * 40])
async def test_an_unknown_or_missing_token_is_refused_in_band(value: str | None) -> None:
    async with emulator(error_close_delay=0.1) as emu, opened(emu, value) as ws:
        assert await read_until_closed(ws) == [{"status": "error", "detail": "invalid token"}]


async def test_an_expired_token_is_refused() -> None:
    async with emulator(token_ttl=0.1, error_close_delay=0.1) as emu:
        value = await token(emu)
        await asyncio.sleep(0.2)
        async with opened(emu, value) as ws:
            assert await read_until_closed(ws) == [{"status": "error", "detail": "token expired"}]


async def test_only_the_documented_path_upgrades() -> None:
    async with emulator() as emu:
        with pytest.raises(InvalidStatus) as raised:
            async with connect(emu.base_url + "/ws/v2/?token=x", open_timeout=5):
                pass
        assert raised.value.response.status_code == 404


async def test_the_bare_greeting_variant() -> None:
    async with emulator(greeting="bare") as emu, opened(emu, await token(emu)) as ws:
        assert await next_json(ws) == {"status": "ok"}


async def test_default_scripts_follow_the_pipeline() -> None:
    async with emulator(script=[]) as emu:
        for pipeline, expected in (("asr-en-std", "turn on the kitchen light"), ("asr-jp-std", "今日はいい天気です。")):
            async with opened(emu, await token(emu, pipeline)) as ws:
                await greeted(ws)
                await send_in_chunks(ws, tone(600) + silence(100))
                await ws.send(b"")
                finals = [m["pipe"] for m in await read_until_eof(ws) if m["pipe"].get("asr_final")]
            assert [f["asr_sentence"] for f in finals] == [expected]


# -- strictness about client messages ---------------------------------------------------------------------


async def test_audio_before_the_greeting_breaks_the_connection_under_the_documented_rule() -> None:
    async with emulator(greeting_delay=0.5, early_audio="disconnect") as emu:
        async with opened(emu, await token(emu)) as ws:
            await ws.send(tone(60))
            messages = await read_until_closed(ws)
            assert ws.close_code == 1008
        assert messages == []
        assert emu.streams[0].violations == ["sent 1920 bytes of audio before session_started"]
        assert emu.streams[0].pcm_bytes == 1920


async def test_audio_before_the_greeting_is_recognised_and_noted() -> None:
    # The vendor's SDK streams as soon as the socket opens, so the service evidently accepts it.
    async with emulator(greeting_delay=0.3) as emu:
        async with opened(emu, await token(emu)) as ws:
            await send_in_chunks(ws, TWO_SENTENCES)
            await greeted(ws)
            await ws.send(b"")
            finals = [m["pipe"] for m in await read_until_eof(ws) if m["pipe"].get("asr_final")]
        assert [f["asr_sentence"] for f in finals] == SCRIPT
        record = emu.streams[0]
        assert record.violations == []
        assert len(record.notes) == 1 and "before session_started" in record.notes[0]
        assert record.pcm_bytes == len(TWO_SENTENCES)


async def test_a_bad_text_frame_is_answered_with_an_error_and_a_close() -> None:
    async with emulator(error_close_delay=0.1) as emu:
        async with opened(emu, await token(emu)) as ws:
            await greeted(ws)
            await ws.send('{"type": "end"}')
            assert await read_until_closed(ws) == [{"status": "error", "detail": "invalid message"}]
        assert len(emu.streams[0].violations) == 1
        assert "unexpected text frame" in emu.streams[0].violations[0]


async def test_the_language_switch_is_the_one_text_frame_allowed() -> None:
    async with emulator() as emu:
        async with opened(emu, await token(emu)) as ws:
            await greeted(ws)
            await ws.send(json.dumps({"pipe": {"config": {"liveStreamingCodeSwitch": "zh"}}}))
            await ws.send(b"")
            await read_until_eof(ws)
        assert emu.streams[0].violations == []


async def test_odd_frames_are_violations_oversized_ones_notes() -> None:
    async with emulator() as emu:
        async with opened(emu, await token(emu)) as ws:
            await greeted(ws)
            await ws.send(bytes(1001))
            await ws.send(bytes(4000))
            await ws.send(b"")
            await read_until_eof(ws)
        record = emu.streams[0]
        assert len(record.violations) == 1
        assert "1001 bytes is not whole 16-bit samples" in record.violations[0]
        # The vendor's SDK sends whatever its audio callback got: frames above 2000 bytes are accepted.
        assert len(record.notes) == 1 and "above the documented 2000 bytes" in record.notes[0]


async def test_anything_after_the_end_frame_is_a_violation() -> None:
    async with emulator() as emu:
        async with opened(emu, await token(emu)) as ws:
            await greeted(ws)
            await ws.send(bytes(2000))
            await ws.send(b"")
            await read_until_eof(ws)
            await ws.send(b"")
            await ws.send(bytes(2000))
            await asyncio.sleep(0.1)
        record = emu.streams[0]
        assert record.violations == [
            "sent a second empty binary frame after the end of the stream",
            "sent 2000 bytes of audio after the end of the stream",
        ]
        assert record.pcm_bytes == 4000


# -- faults -----------------------------------------------------------------------------------------------


async def test_fault_drop_cuts_the_connection_without_a_close_frame() -> None:
    async with emulator(fault=Fault.DROP, fault_after_bytes=8000) as emu:
        async with opened(emu, await token(emu)) as ws:
            await greeted(ws)
            with pytest.raises(ConnectionClosed) as raised:
                for _ in range(50):
                    await ws.send(bytes(2000))
                    await asyncio.sleep(0.005)
                await ws.recv()
            assert raised.value.rcvd is None
        assert emu.streams[0].fault_applied
        assert emu.streams[0].pcm_bytes == 8000


async def test_fault_stall_goes_silent() -> None:
    async with emulator(fault=Fault.STALL, fault_after_bytes=4000) as emu:
        async with opened(emu, await token(emu)) as ws:
            await greeted(ws)
            await send_in_chunks(ws, TWO_SENTENCES)
            await ws.send(b"")
            received = []
            with pytest.raises(TimeoutError):
                while True:
                    received.append(await next_json(ws, timeout=0.5))
        assert all("asr_eof" not in m.get("pipe", {}) for m in received)
        assert emu.streams[0].fault_applied


async def test_fault_error_at_start_refuses_the_stream_as_an_invalid_token() -> None:
    async with emulator(fault=Fault.ERROR_AT_START, fault_streams=1, error_close_delay=0.1) as emu:
        async with opened(emu, await token(emu)) as ws:
            assert await read_until_closed(ws) == [{"status": "error", "detail": "invalid token"}]
        # Only the first stream is affected.
        async with opened(emu, await token(emu)) as ws:
            await greeted(ws)


async def test_fault_error_at_start_as_a_pipeline_error() -> None:
    async with emulator(fault=Fault.ERROR_AT_START, start_error="pipeline", error_close_delay=0.1) as emu:
        async with opened(emu, await token(emu)) as ws:
            messages = await read_until_closed(ws)
        assert messages == [{"status": "error", "detail": "asr pipeline failed to start"}]


async def test_fault_error_at_start_as_a_token_service_outage() -> None:
    async with emulator(fault=Fault.ERROR_AT_START, start_error="http", fault_streams=1) as emu:
        status, _ = await post(emu.token_url)
        assert status == 503
        status, _ = await post(emu.token_url)
        assert status == 201


async def test_fault_idle_timeout_reports_and_closes() -> None:
    async with emulator(fault=Fault.IDLE_TIMEOUT, idle_timeout=0.2, error_close_delay=0.1) as emu:
        async with opened(emu, await token(emu)) as ws:
            await greeted(ws)
            await ws.send(bytes(2000))
            messages = await read_until_closed(ws, timeout=3)
        assert messages[-1] == {"status": "error", "detail": "timeout: no data received for 0.2 seconds"}


async def test_fault_slow_final_holds_the_end_back() -> None:
    async with emulator(fault=Fault.SLOW_FINAL, slow_final_seconds=0.4) as emu:
        async with opened(emu, await token(emu)) as ws:
            await greeted(ws)
            await send_in_chunks(ws, tone(600))
            await ws.send(b"")
            started = time.monotonic()
            messages = await read_until_eof(ws)
            elapsed = time.monotonic() - started
        assert elapsed >= 0.35
        assert [m["pipe"]["asr_sentence"] for m in messages if m["pipe"].get("asr_final")] == SCRIPT[:1]
