"""Tiro adapter + codec through the shared ``VendorStream`` against the Tiro emulator."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import pytest
from pydantic import SecretStr

from asr_daemon.emulators.base import Emulator, EmulatorOptions, Fault
from asr_daemon.emulators.tiro import TiroEmulator
from asr_daemon.redact import redact
from asr_daemon.settings import VendorSettings
from asr_daemon.vendors.base import (
    FinalResult,
    PartialResult,
    StreamCompleted,
    StreamOptions,
    VendorError,
    VendorEvent,
    VendorFailure,
)
from asr_daemon.vendors.tiro.adapter import TiroAdapter, TiroSettings
from asr_daemon.vendors.transport import VendorStream, token_in, with_token
from tests.support.speech import have_speech_tools, silence, utterance
from tests.support.streams import events_until_done

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")

SCRIPT = ["Halló heimur.", "Gott að heyra, takk fyrir.", "Bless bless."]
OPTIONS = StreamOptions(language="is")


def adapter(url: str, key: str | None = "test-key", **settings: Any) -> TiroAdapter:
    return TiroAdapter(TiroSettings(url=url, api_key=None if key is None else SecretStr(key), **settings))


async def stream_audio(stream: VendorStream, pcm: bytes, pace: float = 0.0) -> None:
    """Send ``pcm`` in the codec's chunks; ``pace`` seconds between chunks (0: as fast as possible)."""
    size = stream.codec.chunk_bytes
    for offset in range(0, len(pcm), size):
        await stream.send_audio(pcm[offset : offset + size])
        await asyncio.sleep(pace)


async def recognise(emu: Emulator, pcm: bytes, **settings: Any) -> list[VendorEvent]:
    stream = VendorStream(adapter(emu.url, **settings), OPTIONS)
    await stream.connect()
    try:
        await stream_audio(stream, pcm)
        await stream.end()
        return await events_until_done(stream)
    finally:
        await stream.aclose()


# -- the URL carries the key --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("wss://speech.talgreinir.is/v2beta1/speech:streamingrecognize", "?token=k%2By%2F%3D1"),
        ("ws://127.0.0.1:9/v2beta1/speech:streamingrecognize?x=1", "?x=1&token=k%2By%2F%3D1"),
        ("ws://127.0.0.1:9/v2beta1/speech:streamingrecognize?token=old&x=1", "?x=1&token=k%2By%2F%3D1"),
    ],
)
def test_token_is_added_to_the_query(url: str, expected: str) -> None:
    built = with_token(url, "k+y/=1")
    assert built == url.partition("?")[0] + expected
    assert token_in(built) == "k+y/=1"


def test_a_token_bearing_url_is_redacted() -> None:
    url = with_token(TiroAdapter.default_url, "a-secret-tiro-key")
    assert "a-secret-tiro-key" not in redact(url)
    assert "a-secret-tiro-key" not in redact(f"cannot connect to {url}: refused")


async def test_prepare_puts_the_key_in_the_url_and_nowhere_else() -> None:
    request = await adapter("ws://127.0.0.1:9/v2beta1/speech:streamingrecognize").prepare(OPTIONS)
    assert token_in(request.url) == "test-key"
    assert dict(request.headers) == {}


def test_a_token_written_into_the_url_is_a_secret_too() -> None:
    assert adapter("ws://h/v2beta1/speech:streamingrecognize?token=in-url-key", key="k1234").secrets() == [
        "k1234",
        "in-url-key",
    ]


def test_settings_defaults() -> None:
    settings = TiroSettings()
    assert settings.languages == ["is", "is-IS"]
    assert (settings.language_code, settings.punctuation, settings.interim_results) == ("is-IS", True, True)
    assert settings.word_time_offsets
    assert TiroAdapter(settings).endpoint == "wss://speech.talgreinir.is/v2beta1/speech:streamingrecognize"


def test_base_settings_get_tiros_defaults() -> None:
    settings = VendorSettings(languages=["is"], api_key=SecretStr("k1234"))
    codec = TiroAdapter(settings).new_codec(OPTIONS)
    assert (codec.language_code, codec.interim_results, codec.punctuation) == ("is-IS", True, True)


# -- streams ------------------------------------------------------------------------------------------------


async def test_single_sentence_exact_text_every_byte_no_violations() -> None:
    pcm = utterance("hello there my friend")
    async with TiroEmulator(EmulatorOptions(script=SCRIPT)).running() as emu:
        events = await recognise(emu, pcm)
        record = emu.streams[0]
    finals = [e for e in events if isinstance(e, FinalResult)]
    assert [f.text for f in finals] == ["Halló heimur."]
    assert finals[0].start_ms is not None and finals[0].end_ms is not None
    assert 200 <= finals[0].start_ms < finals[0].end_ms <= len(pcm) // 32
    assert events[-1] == StreamCompleted()
    assert record.violations == []
    assert record.pcm_bytes == len(pcm)
    assert record.pcm_sha256 == hashlib.sha256(pcm).hexdigest()


async def test_three_sentences_in_order_with_partials() -> None:
    pcm = utterance("hello there", "nice to hear it thank you", "bye bye")
    async with TiroEmulator(EmulatorOptions(script=SCRIPT), interim_interval=0).running() as emu:
        events = await recognise(emu, pcm)
        record = emu.streams[0]
    assert [e.text for e in events if isinstance(e, FinalResult)] == SCRIPT
    partials = [e.text for e in events if isinstance(e, PartialResult)]
    assert "Gott að heyra," in partials
    starts = [e.start_ms or 0 for e in events if isinstance(e, FinalResult)]
    assert 0 < starts[0] < starts[1] < starts[2]
    assert events[-1] == StreamCompleted()
    assert record.violations == []
    assert (record.pcm_bytes, record.pcm_sha256) == (len(pcm), hashlib.sha256(pcm).hexdigest())


async def test_paced_audio_gets_throttled_partials_before_the_end() -> None:
    pcm = utterance("hello there my good old friend", tail_ms=600)
    arrivals: list[tuple[float, VendorEvent]] = []

    async def timestamp(stream: VendorStream) -> None:
        while True:
            event = await stream.events.get()
            arrivals.append((time.monotonic(), event))
            if isinstance(event, StreamCompleted | VendorError):
                return

    async with TiroEmulator(EmulatorOptions(script=["Gera lítið úr meintri spennu."])).running() as emu:
        stream = VendorStream(adapter(emu.url), OPTIONS)
        await stream.connect()
        opened = time.monotonic()
        reader = asyncio.create_task(timestamp(stream))
        # Twice real time: 100 ms of audio per 50 ms, so the vendor's 350 ms throttle decides what is sent.
        await stream_audio(stream, pcm, pace=0.05)
        ended = time.monotonic()
        await stream.end()
        await asyncio.wait_for(reader, 5)
        await stream.aclose()
    partial_times = [at for at, event in arrivals if isinstance(event, PartialResult)]
    assert partial_times and partial_times[0] < ended
    # 350 ms apart at the vendor (less delivery jitter here); unthrottled they would come every ~60 ms.
    gaps = [b - a for a, b in zip([opened, *partial_times], partial_times, strict=False)]
    assert min(gaps) >= 0.3
    finals = [event.text for _, event in arrivals if isinstance(event, FinalResult)]
    assert finals == ["Gera lítið úr meintri spennu."]


async def test_normal_close_frame_also_completes() -> None:
    async with TiroEmulator(EmulatorOptions(script=SCRIPT), close_mode="normal").running() as emu:
        events = await recognise(emu, utterance("hello there"))
    assert [e.text for e in events if isinstance(e, FinalResult)] == ["Halló heimur."]
    assert events[-1] == StreamCompleted()


async def test_silence_completes_with_no_result() -> None:
    async with TiroEmulator(EmulatorOptions(script=SCRIPT)).running() as emu:
        events = await recognise(emu, silence(1000))
    assert events == [StreamCompleted()]


async def test_settings_reach_the_vendor() -> None:
    async with TiroEmulator(EmulatorOptions(script=SCRIPT), language_codes=["is-IS-x-exp"]).running() as emu:
        events = await recognise(
            emu, utterance("hello there"), language_code="is-IS-x-exp", punctuation=False, interim_results=False
        )
    assert [type(e) for e in events] == [FinalResult, StreamCompleted]
    assert isinstance(events[0], FinalResult) and events[0].text == "halló heimur"


# -- failures -----------------------------------------------------------------------------------------------


async def test_wrong_key_answered_with_an_error_line_is_fatal_too() -> None:
    async with TiroEmulator(EmulatorOptions(script=SCRIPT), auth_failure="error_line").running() as emu:
        events = await recognise(emu, utterance("hello there"), key="wrong-key")
    assert events == [VendorError("invalid or missing token", "UNAUTHENTICATED", fatal=True)]


async def test_unsupported_language_code_is_fatal_with_the_vendors_explanation() -> None:
    async with TiroEmulator(EmulatorOptions(script=SCRIPT)).running() as emu:
        events = await recognise(emu, utterance("hello there"), language_code="en-US")
    (error,) = events
    assert isinstance(error, VendorError) and error.fatal
    assert "Unsupported value 'en-US' for field 'language_code'." in error.message


async def test_vendor_error_at_start_is_transient_and_carries_the_message() -> None:
    options = EmulatorOptions(script=SCRIPT, fault=Fault.ERROR_AT_START)
    async with TiroEmulator(options).running() as emu:
        events = await recognise(emu, utterance("hello there"))
    assert events == [VendorError("Unknown error in StreamingRecognize.", "INTERNAL", fatal=False)]


async def test_vendor_error_frame_mid_stream_carries_the_message() -> None:
    async with TiroEmulator(EmulatorOptions(script=SCRIPT), interim_interval=0, decode_speed=0).running() as emu:
        stream = VendorStream(adapter(emu.url), OPTIONS)
        await stream.connect()
        await stream_audio(stream, utterance("hello there", tail_ms=0))
        # A frame the vendor cannot decode, mid-stream: it answers with an error line and ends the stream.
        await stream.send(['{"audioContent":"#not base64#"}'])
        events = await events_until_done(stream)
        await stream.aclose()
    assert any(isinstance(e, PartialResult) for e in events)
    error = events[-1]
    assert isinstance(error, VendorError)
    assert error.code == "INVALID_ARGUMENT" and error.fatal
    assert 'invalid value for bytes field audio_content: "#not base64#"' in error.message


@pytest.mark.parametrize(
    "url",
    [
        "ws://127.0.0.1:notaport/v2beta1/speech:streamingrecognize",
        "http://127.0.0.1:9/v2beta1/speech:streamingrecognize",
    ],
)
async def test_connection_errors_do_not_show_the_key(url: str) -> None:
    with pytest.raises(VendorFailure) as failed:
        await VendorStream(adapter(url, key="shown-key-4711"), OPTIONS).connect()
    assert "shown-key-4711" not in failed.value.error.message
