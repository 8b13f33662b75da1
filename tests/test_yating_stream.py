"""The Yating adapter (token + pipeline choice) and codec over the shared transport, against the emulator."""

from __future__ import annotations

import asyncio
import hashlib
import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr, ValidationError

from asr_daemon.emulators.base import EmulatorOptions, Fault
from asr_daemon.emulators.yating import YatingEmulator
from asr_daemon.redact import redact
from asr_daemon.vendors.base import (
    FinalResult,
    PartialResult,
    StreamCompleted,
    StreamOptions,
    VendorError,
    VendorEvent,
    VendorFailure,
)
from asr_daemon.vendors.transport import VendorStream, with_token
from asr_daemon.vendors.yating.adapter import YatingAdapter, YatingSettings
from asr_daemon.vendors.yating.token import parse_token_response, token_request_body

KEY = "test-key"
TAIWAN = StreamOptions(language="zh-TW")
SCRIPT = ["今天天氣很好。", "我們去公園散步吧。", "晚安。"]


def tone(ms: int, amplitude: int = 6000) -> bytes:
    samples = (int(amplitude * math.sin(2 * math.pi * 330 * i / 16000)) for i in range(16 * ms))
    return b"".join(s.to_bytes(2, "little", signed=True) for s in samples)


def silence(ms: int) -> bytes:
    return bytes(32 * ms)


def sentences(count: int) -> bytes:
    """``count`` bursts of 'speech' separated by pauses the emulator cuts sentences at."""
    return silence(200) + silence(700).join(tone(500) for _ in range(count)) + silence(300)


def adapter_for(emu: YatingEmulator, key: str | None = KEY, **settings: Any) -> YatingAdapter:
    return YatingAdapter(
        YatingSettings(
            url=emu.url,
            token_url=emu.token_url,
            api_key=SecretStr(key) if key is not None else None,
            **settings,
        )
    )


@asynccontextmanager
async def emulator(script: list[str] | None = None, **kwargs: Any) -> AsyncIterator[YatingEmulator]:
    option_names = set(EmulatorOptions.__dataclass_fields__)
    options = EmulatorOptions(
        script=SCRIPT if script is None else script, **{k: v for k, v in kwargs.items() if k in option_names}
    )
    emu = YatingEmulator(options, **{k: v for k, v in kwargs.items() if k not in option_names})
    async with emu.running():
        yield emu


async def run_stream(
    adapter: YatingAdapter, pcm: bytes, options: StreamOptions = TAIWAN, chunk: int = 2000
) -> list[VendorEvent]:
    """Connect, wait for the greeting, send ``pcm`` in chunks, end, and collect events until completion."""
    stream = VendorStream(adapter, options)
    await stream.connect()
    try:
        await asyncio.wait_for(stream.wait_ready(), 5)
        for offset in range(0, len(pcm), chunk):
            await stream.send_audio(pcm[offset : offset + chunk])
        await stream.end()
        events: list[VendorEvent] = []
        async with asyncio.timeout(10):
            while True:
                event = await stream.events.get()
                events.append(event)
                if isinstance(event, StreamCompleted | VendorError):
                    return events
    finally:
        await stream.aclose()


def finals(events: list[VendorEvent]) -> list[str]:
    return [event.text for event in events if isinstance(event, FinalResult)]


def assert_clean_and_complete(emu: YatingEmulator, pcm: bytes) -> None:
    record = emu.streams[-1]
    assert record.violations == []
    assert emu.token_violations == []
    assert record.completed
    assert record.pcm_bytes == len(pcm)
    assert record.pcm_sha256 == hashlib.sha256(pcm).hexdigest()


# -- through the emulator ---------------------------------------------------------------------------------


async def test_single_sentence() -> None:
    pcm = sentences(1)
    async with emulator() as emu:
        events = await run_stream(adapter_for(emu), pcm)
        assert_clean_and_complete(emu, pcm)
    assert finals(events) == ["今天天氣很好。"]
    assert isinstance(events[-1], StreamCompleted)
    # Partials grow towards the sentence and come before its final.
    partials = [event.text for event in events if isinstance(event, PartialResult)]
    assert partials and all("今天天氣很好。".startswith(text) for text in partials)
    assert events.index(next(e for e in events if isinstance(e, PartialResult))) < len(events) - 2


async def test_multi_sentence_with_times() -> None:
    pcm = sentences(3)
    async with emulator() as emu:
        events = await run_stream(adapter_for(emu), pcm)
        assert_clean_and_complete(emu, pcm)
    assert finals(events) == SCRIPT
    results = [event for event in events if isinstance(event, FinalResult)]
    assert results[0].start_ms == 200
    assert all(r.start_ms is not None and r.end_ms is not None and r.start_ms < r.end_ms for r in results)


async def test_odd_sized_audio_arrives_intact() -> None:
    # The session re-chunks to 2000 bytes; anything smaller (here 998) must also arrive byte for byte.
    pcm = sentences(2) + b"\x07\x00"
    async with emulator() as emu:
        events = await run_stream(adapter_for(emu), pcm, chunk=998)
        assert_clean_and_complete(emu, pcm)
    assert finals(events) == SCRIPT[:2]


async def test_every_stream_buys_its_own_token_for_its_pipeline() -> None:
    async with emulator() as emu:
        adapter = adapter_for(emu, custom_model_id="lm-42")
        await run_stream(adapter, sentences(1))
        await run_stream(adapter, sentences(1), StreamOptions(language="en-US"))
        await run_stream(adapter, sentences(1), StreamOptions(language="ja"))
        grants = [emu.stream_grants[record.index] for record in emu.streams]
        assert len({grant.token for grant in grants}) == 3
        assert [grant.pipeline for grant in grants] == ["asr-zh-tw-std", "asr-en-std", "asr-jp-std"]
        assert all(grant.options == {"s3CusModelKey": "lm-42"} for grant in grants)
        assert all(record.violations == [] for record in emu.streams)


async def test_the_stream_is_ready_only_after_the_greeting() -> None:
    # A slow pipeline start: audio sent before the greeting would break the connection (and be recorded).
    async with emulator(greeting_delay=0.4) as emu:
        stream = VendorStream(adapter_for(emu), TAIWAN)
        await stream.connect()
        try:
            assert not stream.ready
            await asyncio.sleep(0.2)
            assert not stream.ready
            await asyncio.wait_for(stream.wait_ready(), 5)
            assert stream.ready
        finally:
            await stream.aclose()
        pcm = sentences(1)
        events = await run_stream(adapter_for(emu), pcm)
        assert_clean_and_complete(emu, pcm)
    assert finals(events) == SCRIPT[:1]


async def test_the_bare_greeting_also_opens_the_stream() -> None:
    async with emulator(greeting="bare") as emu:
        events = await run_stream(adapter_for(emu), sentences(1))
    assert finals(events) == SCRIPT[:1]


async def test_a_language_without_a_pipeline_is_fatal() -> None:
    async with emulator() as emu:
        with pytest.raises(VendorFailure) as raised:
            await VendorStream(adapter_for(emu), StreamOptions(language="fr-FR")).connect()
        assert emu.token_requests == []
    assert raised.value.error.fatal
    assert "'fr-FR'" in raised.value.error.message


async def test_a_pipeline_the_vendor_refuses_is_fatal() -> None:
    async with emulator() as emu:
        adapter = adapter_for(emu, pipelines={"zh-TW": "asr-klingon"})
        with pytest.raises(VendorFailure) as raised:
            await VendorStream(adapter, TAIWAN).connect()
    assert raised.value.error.fatal
    assert "HTTP 400" in raised.value.error.message
    assert "unknown pipeline 'asr-klingon'" in raised.value.error.message


async def test_token_service_outage_is_transient() -> None:
    async with emulator(fault=Fault.ERROR_AT_START, start_error="http", fault_streams=1) as emu:
        adapter = adapter_for(emu)
        with pytest.raises(VendorFailure) as raised:
            await VendorStream(adapter, TAIWAN).connect()
        assert not raised.value.error.fatal
        assert raised.value.error.code == "503"
        # A retry succeeds.
        assert finals(await run_stream(adapter, sentences(1))) == SCRIPT[:1]


async def test_unreachable_token_service_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = YatingSettings(
        url="ws://127.0.0.1:1/ws/v1/", token_url=f"http://127.0.0.1:{port}/v1/token", api_key=SecretStr(KEY)
    )
    with pytest.raises(VendorFailure) as raised:
        await VendorStream(YatingAdapter(settings), TAIWAN).connect()
    assert not raised.value.error.fatal
    assert raised.value.error.message.startswith("cannot reach the Yating token service")


async def test_a_rejected_token_on_the_websocket_is_fatal() -> None:
    async with emulator(fault=Fault.ERROR_AT_START, error_close_delay=0.2) as emu:
        stream = VendorStream(adapter_for(emu), TAIWAN)
        await stream.connect()
        try:
            event = await asyncio.wait_for(stream.events.get(), 5)
            assert not stream.ready
        finally:
            await stream.aclose()
    assert isinstance(event, VendorError)
    assert event.fatal
    assert event.message == "Yating error: invalid token"


async def test_vendor_error_mid_stream_carries_the_vendors_message() -> None:
    # The emulator's idle cut: audio stops, the vendor says why in a status error and closes.
    async with emulator(fault=Fault.IDLE_TIMEOUT, idle_timeout=0.3, error_close_delay=0.2) as emu:
        stream = VendorStream(adapter_for(emu), TAIWAN)
        await stream.connect()
        try:
            await asyncio.wait_for(stream.wait_ready(), 5)
            await stream.send_audio(tone(500)[:2000])
            events: list[VendorEvent] = []
            async with asyncio.timeout(5):
                while not events or not isinstance(events[-1], VendorError):
                    events.append(await stream.events.get())
            # The close that follows the error is not reported again.
            async with asyncio.timeout(2):
                while not stream.closed:
                    await asyncio.sleep(0.05)
            assert stream.events.empty()
        finally:
            await stream.aclose()
    error = events[-1]
    assert isinstance(error, VendorError)
    assert not error.fatal
    assert error.message == "Yating error: timeout: no data received for 0.3 seconds"


# -- adapter pieces ---------------------------------------------------------------------------------------


def test_default_settings() -> None:
    settings = YatingSettings()
    assert settings.languages == ["zh-TW", "zh-Hant"]
    assert settings.token_url == "https://asr.api.yating.tw/v1/token"
    assert YatingAdapter(settings).endpoint == "wss://asr.api.yating.tw/ws/v1/"


def test_settings_refuse_bad_values() -> None:
    with pytest.raises(ValidationError):
        YatingSettings(token_url="wss://asr.api.yating.tw/v1/token")
    with pytest.raises(ValidationError):
        YatingSettings(pipelines={"zh-TW": " "})
    with pytest.raises(ValidationError):
        YatingSettings.model_validate({"pipeline": "asr-en-std"})


@pytest.mark.parametrize(
    ("language", "pipeline"),
    [
        ("zh-TW", "asr-zh-tw-std"),
        ("zh-tw", "asr-zh-tw-std"),
        ("zh_TW", "asr-zh-tw-std"),
        ("zh-Hant", "asr-zh-en-std"),
        ("zh-Hant-TW", "asr-zh-en-std"),
        ("zh", "asr-zh-en-std"),
        ("zh-CN", "asr-zh-en-std"),
        ("en", "asr-en-std"),
        ("en-US", "asr-en-std"),
        ("ja-JP", "asr-jp-std"),
        ("", "asr-zh-tw-std"),
        ("fr", None),
    ],
)
def test_built_in_pipeline_choice(language: str, pipeline: str | None) -> None:
    assert YatingSettings().pipeline_for(language) == pipeline


def test_configured_pipelines_override_exact_code_then_base() -> None:
    settings = YatingSettings(pipelines={"zh-tw": "asr-zh-en-std", "en": "asr-stream-general", "ko": "asr-ko"})
    assert settings.pipeline_for("zh-TW") == "asr-zh-en-std"
    assert settings.pipeline_for("en-GB") == "asr-stream-general"
    assert settings.pipeline_for("ko-KR") == "asr-ko"
    # An exact built-in code still beats a configured base language.
    assert YatingSettings(pipelines={"zh": "asr-zh-en-std"}).pipeline_for("zh-TW") == "asr-zh-tw-std"


def test_token_request_body_is_exactly_the_documented_json() -> None:
    assert token_request_body("asr-zh-en-std") == b'{"pipeline":"asr-zh-en-std"}'
    assert (
        token_request_body("asr-zh-en-std", "custom_language_model_id")
        == b'{"pipeline":"asr-zh-en-std","options":{"s3CusModelKey":"custom_language_model_id"}}'
    )


@pytest.mark.parametrize("status", [200, 201])
def test_token_response_success(status: int) -> None:
    body = b'{"success": true, "auth_token": "4e87d0db167271245234e6a80522a33e81c3eb90"}'
    assert parse_token_response(status, body) == "4e87d0db167271245234e6a80522a33e81c3eb90"


@pytest.mark.parametrize(
    ("status", "body", "fatal", "text"),
    [
        (401, b'{"error": "key does not exist"}', True, "Yating rejected the API key (HTTP 401: key does not exist)"),
        (403, b"", True, "Yating rejected the API key (HTTP 403)"),
        (500, b"<html>oops</html>", False, "Yating token service unavailable (HTTP 500: <html>oops</html>)"),
        (429, b"", False, "Yating token service unavailable (HTTP 429)"),
        (404, b"", True, "Yating refused the token request (HTTP 404)"),
        (302, b"", True, "Yating refused the token request (HTTP 302)"),
        (201, b'{"success": true}', False, "Yating token response has no auth_token"),
        (200, b'{"success": false, "error": "quota"}', False, "Yating token request failed: quota"),
        (201, b"not json", False, "Yating token response has no auth_token"),
    ],
)
def test_token_response_failures(status: int, body: bytes, fatal: bool, text: str) -> None:
    with pytest.raises(VendorFailure) as raised:
        parse_token_response(status, body)
    assert raised.value.error.fatal is fatal
    assert raised.value.error.message.startswith(text)


def test_token_goes_into_the_query_and_redaction_masks_it() -> None:
    url = with_token("wss://asr.api.yating.tw/ws/v1/", "4e87d0db")
    assert url == "wss://asr.api.yating.tw/ws/v1/?token=4e87d0db"
    assert "4e87d0db" not in redact(f"connecting to {url}")
    replaced = with_token("ws://proxy/ws/v1/?region=tw&token=old", "new")
    assert parse_qs(urlsplit(replaced).query) == {"region": ["tw"], "token": ["new"]}


async def test_connect_request_keeps_pings_and_carries_no_secret_headers() -> None:
    async with emulator() as emu:
        request = await adapter_for(emu).prepare(TAIWAN)
        assert request.url.startswith(f"{emu.url}?token=")
        assert [r.status for r in emu.token_requests] == [201]
    (token,) = parse_qs(urlsplit(request.url).query)["token"]
    assert len(token) == 40
    assert request.ping_interval is not None
    assert dict(request.headers) == {}
