"""SAUC adapters and settings, and adapter + emulator through the shared ``VendorStream``."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import struct
import uuid
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from asr_daemon.config import load_settings
from asr_daemon.emulators.base import EmulatorOptions, Fault
from asr_daemon.emulators.sauc import SaucEmulator, VolcengineEmulator, Zyun360Emulator
from asr_daemon.redact import redact
from asr_daemon.vendors.base import (
    FinalResult,
    PartialResult,
    StreamCompleted,
    StreamOptions,
    VendorError,
    VendorEvent,
)
from asr_daemon.vendors.sauc.adapter import (
    VolcengineAdapter,
    VolcengineSettings,
    Zyun360Adapter,
    Zyun360Settings,
)
from asr_daemon.vendors.transport import VendorStream

KEY = "test-key"
APP_ID = "8712345678"
SCRIPT = ["今天天气很好", "我们去公园散步"]


def tone(ms: int, amplitude: int = 6000) -> bytes:
    samples = (int(amplitude * math.sin(2 * math.pi * 330 * n / 16000)) for n in range(16 * ms))
    return b"".join(struct.pack("<h", s) for s in samples)


def silence(ms: int) -> bytes:
    return bytes(32 * ms)


def sentences(count: int) -> bytes:
    """``count`` bursts of 'speech', each followed by enough silence for the emulator to close a segment."""
    return silence(200) + b"".join(tone(900) + silence(700) for _ in range(count))


def zyun360(emulator: SaucEmulator, key: str = KEY) -> Zyun360Adapter:
    return Zyun360Adapter(Zyun360Settings(url=emulator.url, api_key=SecretStr(key)))


def volcengine(emulator: SaucEmulator, key: str = KEY, app_key: str | None = APP_ID) -> VolcengineAdapter:
    settings = VolcengineSettings(
        url=emulator.url, api_key=SecretStr(key), app_key=SecretStr(app_key) if app_key else None
    )
    return VolcengineAdapter(settings)


async def run(
    adapter: Zyun360Adapter | VolcengineAdapter, pcm: bytes, *, pause: float = 0.0, timeout: float = 5.0
) -> list[VendorEvent]:
    """One stream: connect, send ``pcm`` in the codec's chunks, end, collect events to completion or error."""
    stream = VendorStream(adapter, StreamOptions(language="zh-CN", session_id="s1"))
    await stream.connect()
    events: list[VendorEvent] = []
    try:
        await stream.wait_ready()
        size = stream.codec.chunk_bytes
        for offset in range(0, len(pcm), size):
            await stream.send_audio(pcm[offset : offset + size])
        if pause:
            await asyncio.sleep(pause)
        await stream.end()
        async with asyncio.timeout(timeout):
            while not events or not isinstance(events[-1], StreamCompleted | VendorError):
                events.append(await stream.events.get())
    finally:
        await stream.aclose()
    return events


def finals(events: list[VendorEvent]) -> list[str]:
    return [event.text for event in events if isinstance(event, FinalResult)]


# ---------------------------------------------------------------------------------------------------------
# Settings and adapters


def test_settings_defaults() -> None:
    settings = Zyun360Settings()
    assert settings.languages == ["zh", "zh-CN", "zh-Hans"]
    assert (settings.enable_itn, settings.enable_punc, settings.end_window_size) == (True, True, None)
    assert VolcengineSettings().resource_id == "volc.bigasr.sauc.duration"
    with pytest.raises(ValidationError):
        Zyun360Settings(end_window_size=100)
    with pytest.raises(ValidationError):
        Zyun360Settings.model_validate({"app_key": "x"})  # Volcengine-only key


def test_app_key_from_a_file_and_both_keys_are_secrets(tmp_path: Path) -> None:
    path = tmp_path / "app_key"
    path.write_text(f"{APP_ID}\n")
    settings = VolcengineSettings(api_key=SecretStr("access-token-123"), app_key_file=str(path))
    assert settings.app_key_value() == APP_ID
    assert sorted(VolcengineAdapter(settings).secrets()) == sorted(["access-token-123", APP_ID])


def test_unreadable_app_key_file_names_the_key(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ValidationError) as failed:
        VolcengineSettings(app_key_file=str(missing))
    [error] = failed.value.errors()
    assert error["loc"] == ("app_key_file",)
    assert "cannot read it" in error["msg"]


def test_config_file_keys_load_through_the_daemon_settings(tmp_path: Path) -> None:
    app_key_file = tmp_path / "volc_app"
    app_key_file.write_text("app-id-from-file-42")
    settings = load_settings(
        None,
        {
            "vendors": {
                "zyun360": {"api_key": "zyun-key-from-config", "enable_ddc": True},
                "volcengine": {
                    "api_key": "volc-access-from-config",
                    "app_key_file": str(app_key_file),
                    "languages": ["zh-TW"],
                    "resource_id": "volc.seedasr.sauc.duration",
                },
            }
        },
    )
    configured = settings.configured_vendors()
    assert isinstance(configured["zyun360"], Zyun360Settings) and configured["zyun360"].enable_ddc
    assert isinstance(configured["volcengine"], VolcengineSettings)
    # Every secret is registered for redaction at load time.
    shown = redact("zyun-key-from-config volc-access-from-config app-id-from-file-42")
    assert shown == "*** *** ***"


async def test_connect_requests() -> None:
    options = StreamOptions(language="zh-CN")
    request = await Zyun360Adapter(Zyun360Settings(api_key=SecretStr(KEY))).prepare(options)
    assert request.url == "ws://audio-asr.api.zyuncs.com/sauc"
    assert request.headers == {"Authorization": f"Bearer {KEY}"}
    assert request.ping_interval is None
    assert "X-Tt-Logid" in request.log_headers

    adapter = VolcengineAdapter(VolcengineSettings(api_key=SecretStr(KEY), app_key=SecretStr(APP_ID)))
    first, second = await adapter.prepare(options), await adapter.prepare(options)
    assert first.url == "wss://openspeech.bytedance.com/api/v3/sauc/bigmodel_async"
    assert first.ping_interval is None
    assert {k: v for k, v in first.headers.items() if k != "X-Api-Connect-Id"} == {
        "X-Api-App-Key": APP_ID,
        "X-Api-Access-Key": KEY,
        "X-Api-Resource-Id": "volc.bigasr.sauc.duration",
    }
    # A fresh connect id per stream, for the vendor's tracing.
    assert uuid.UUID(first.headers["X-Api-Connect-Id"]) != uuid.UUID(second.headers["X-Api-Connect-Id"])

    new_console = VolcengineAdapter(VolcengineSettings(api_key=SecretStr(KEY)))
    headers = (await new_console.prepare(options)).headers
    assert headers["X-Api-Key"] == KEY and "X-Api-App-Key" not in headers


def test_phrases_and_hotwords_reach_the_request() -> None:
    settings = Zyun360Settings(hotwords=["客厅灯", " 小爱 "])
    codec = Zyun360Adapter(settings).new_codec(StreamOptions(language="zh", phrases=("小爱", "空调")))
    assert codec.request.hotwords == ("客厅灯", "小爱", "空调")


# ---------------------------------------------------------------------------------------------------------
# Through the transport, against the emulators


async def test_zyun360_single_sentence(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    pcm = sentences(1)
    emulator = Zyun360Emulator(EmulatorOptions(script=SCRIPT))
    async with emulator.running():
        events = await run(zyun360(emulator), pcm)
    assert finals(events) == ["今天天气很好"]
    assert isinstance(events[-1], StreamCompleted)
    assert not any(isinstance(event, VendorError) for event in events)
    # Partials come before the final and grow towards it.
    partials = [event.text for event in events if isinstance(event, PartialResult)]
    assert partials and all("今天天气很好".startswith(text) for text in partials)
    assert events.index(next(e for e in events if isinstance(e, PartialResult))) < events.index(
        next(e for e in events if isinstance(e, FinalResult))
    )
    record = emulator.streams[0]
    assert record.violations == []
    assert (record.pcm_bytes, record.pcm_sha256) == (len(pcm), hashlib.sha256(pcm).hexdigest())
    assert record.headers["authorization"] == f"Bearer {KEY}"
    # The vendor's log id is logged for support requests; the key never is.
    assert any("X-Tt-Logid" in message for message in caplog.messages)
    assert not any(KEY in message for message in caplog.messages)


async def test_volcengine_multi_sentence() -> None:
    pcm = sentences(2)
    emulator = VolcengineEmulator(EmulatorOptions(script=SCRIPT))
    async with emulator.running():
        adapter = volcengine(emulator)
        first = await run(adapter, pcm)
        second = await run(adapter, pcm)
    for events in (first, second):
        assert finals(events) == SCRIPT
        assert isinstance(events[-1], StreamCompleted)
    segments = [event for event in first if isinstance(event, FinalResult)]
    assert segments[0].start_ms is not None and segments[1].start_ms is not None
    assert segments[0].end_ms is not None and segments[0].end_ms <= segments[1].start_ms
    for record in emulator.streams:
        assert record.violations == []
        assert (record.pcm_bytes, record.pcm_sha256) == (len(pcm), hashlib.sha256(pcm).hexdigest())
        assert record.headers["x-api-app-key"] == APP_ID
        assert record.headers["x-api-access-key"] == KEY
    connect_ids = {record.headers["x-api-connect-id"] for record in emulator.streams}
    assert len(connect_ids) == 2


async def test_volcengine_new_console_key() -> None:
    emulator = VolcengineEmulator()
    async with emulator.running():
        events = await run(volcengine(emulator, app_key=None), sentences(1))
    assert finals(events) == ["今天天气很好"]
    assert emulator.streams[0].violations == []


async def test_completion_does_not_wait_for_the_vendor_to_close() -> None:
    emulator = Zyun360Emulator(close_after_final=False)
    async with emulator.running():
        events = await run(zyun360(emulator), sentences(1))
    assert finals(events) == ["今天天气很好"]
    assert isinstance(events[-1], StreamCompleted)
    assert emulator.streams[0].violations == []


async def test_slow_final_still_arrives_exactly() -> None:
    options = EmulatorOptions(script=SCRIPT, fault=Fault.SLOW_FINAL, slow_final_seconds=0.5)
    emulator = Zyun360Emulator(options)
    async with emulator.running():
        events = await run(zyun360(emulator), sentences(2))
    assert finals(events) == SCRIPT


async def test_wrong_key_as_an_error_frame_is_fatal() -> None:
    emulator = Zyun360Emulator(auth_error_frame=True)
    async with emulator.running():
        events = await run(zyun360(emulator, "wrong"), sentences(1))
    errors = [event for event in events if isinstance(event, VendorError)]
    assert [(error.code, error.fatal) for error in errors] == [("45000010", True)]
    assert finals(events) == []


async def test_idle_cut_mid_stream_carries_the_vendors_message() -> None:
    options = EmulatorOptions(fault=Fault.IDLE_TIMEOUT, idle_timeout=0.3)
    emulator = Zyun360Emulator(options)
    async with emulator.running():
        events = await run(zyun360(emulator), silence(400), pause=0.8)
    error = events[-1]
    assert isinstance(error, VendorError)
    assert error.code == "45000081"
    assert "waiting next packet timeout: 0.300000 seconds" in error.message
    assert not error.fatal


async def test_server_busy_at_start_is_transient() -> None:
    options = EmulatorOptions(fault=Fault.ERROR_AT_START, fault_streams=1)
    emulator = Zyun360Emulator(options)
    async with emulator.running():
        adapter = zyun360(emulator)
        failed = await run(adapter, sentences(1))
        retried = await run(adapter, sentences(1))
    assert isinstance(failed[-1], VendorError)
    assert (failed[-1].code, failed[-1].message, failed[-1].fatal) == ("55000031", "server busy", False)
    assert finals(retried) == ["今天天气很好"]
