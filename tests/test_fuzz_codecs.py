"""Fuzzing the five vendor codecs: whatever a vendor (or whoever answers in its place) sends, ``receive`` returns
typed events and never raises, error messages stay short, results are no bigger than the message they came
from, and nothing follows the end of the stream.

A few hundred cases per codec here; ``FUZZ_EXAMPLES=100000`` for the long run (docs/fuzzing.md).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asr_daemon.vendors.amivoice.codec import AmiVoiceCodec
from asr_daemon.vendors.base import (
    FinalResult,
    PartialResult,
    StreamCodec,
    StreamCompleted,
    StreamReady,
    VendorError,
    VendorEvent,
)
from asr_daemon.vendors.iapp.codec import IAppCodec
from asr_daemon.vendors.sauc.codec import MAX_PAYLOAD, RecognitionRequest, SaucCodec
from asr_daemon.vendors.tiro.codec import TiroCodec
from asr_daemon.vendors.yating.codec import YatingCodec
from tests.fuzz import fuzz_settings
from tests.fuzz.codecs import amivoice_messages, iapp_messages, sauc_messages, tiro_messages, yating_messages

CI_EXAMPLES = 100
EVENT_TYPES = (StreamReady, PartialResult, FinalResult, StreamCompleted, VendorError)
# An error message quotes at most a few hundred characters of what the vendor said, whatever it sent.
MAX_ERROR_MESSAGE = 1000


def _size(message: str | bytes) -> int:
    """How much text a message can carry: SAUC payloads may be gzip, so up to the inflate limit."""
    return MAX_PAYLOAD if isinstance(message, bytes) and b"\x1f\x8b" in message else len(message)


def check_events(events: object, largest: int, max_error: int | None = MAX_ERROR_MESSAGE) -> list[VendorEvent]:
    """Typed events, short errors, and results no longer than the ``largest`` message the stream received."""
    assert isinstance(events, list)
    for event in events:
        assert isinstance(event, EVENT_TYPES), event
        if isinstance(event, VendorError):
            assert isinstance(event.message, str) and event.message
            assert max_error is None or len(event.message) <= max_error, len(event.message)
            assert event.code is None or isinstance(event.code, str)
            assert event.code is None or max_error is None or len(event.code) <= max_error
            assert isinstance(event.fatal, bool)
        elif isinstance(event, PartialResult | FinalResult):
            assert isinstance(event.text, str)
            assert len(event.text) <= largest
        if isinstance(event, FinalResult):
            for ms in (event.start_ms, event.end_ms):
                assert ms is None or (type(ms) is int and ms >= 0), ms
    return events  # type: ignore[return-value]


def run_stream(
    codec: StreamCodec, messages: list[str | bytes], end_at: int, close: int | None, max_error: int | None
) -> None:
    """One stream as the transport drives it: start, messages (the end of audio somewhere), the close."""
    codec.start()
    completed = False
    largest = 0
    for index, message in enumerate(messages):
        if index == end_at:
            codec.end()
        largest = max(largest, _size(message))
        events = check_events(codec.receive(message), largest, max_error)
        if completed:
            assert events == [], "events after the end of the stream"
        if any(isinstance(event, StreamCompleted) for event in events):
            assert codec.completed
            completed = True
    closing = check_events(codec.connection_closed(close, "going away"), largest, max_error)
    if completed:
        assert closing == []


# Each codec, what it is fed, and how long its error messages may be (None: not checked).
CODECS: dict[str, tuple[Callable[[], StreamCodec], st.SearchStrategy[str | bytes], int | None]] = {
    "iapp": (IAppCodec, iapp_messages(), MAX_ERROR_MESSAGE),
    "tiro": (TiroCodec, tiro_messages(), MAX_ERROR_MESSAGE),
    "yating": (YatingCodec, yating_messages(), MAX_ERROR_MESSAGE),
    "amivoice": (lambda: AmiVoiceCodec("-a-general", "test-key"), amivoice_messages(), MAX_ERROR_MESSAGE),
    "sauc": (lambda: SaucCodec(RecognitionRequest()), sauc_messages(), MAX_ERROR_MESSAGE),
}
closes = st.none() | st.sampled_from([1000, 1006, 1011, 4000])


def _fuzz(name: str) -> Callable[..., None]:
    make, messages, max_error = CODECS[name]

    @fuzz_settings(CI_EXAMPLES)
    @given(st.lists(messages, max_size=6), st.integers(0, 6), closes)
    def fuzz(messages: list[str | bytes], end_at: int, close: int | None) -> None:
        run_stream(make(), messages, end_at, close, max_error)

    return fuzz  # type: ignore[no-any-return]


test_iapp_codec_survives_any_message = _fuzz("iapp")
test_tiro_codec_survives_any_message = _fuzz("tiro")
test_yating_codec_survives_any_message = _fuzz("yating")
test_amivoice_codec_survives_any_message = _fuzz("amivoice")
test_sauc_codec_survives_any_message = _fuzz("sauc")


# Found by the fuzzing above: what a vendor puts in an error's code or text reaches the client's error event, so
# it is bounded there too.
LONG = "x" * 5000


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (IAppCodec, f'{{"error": "quota", "code": "{LONG}"}}'),
        (YatingCodec, f'{{"status": "error", "detail": "quota", "code": "{LONG}"}}'),
        (TiroCodec, f'{{"error": {{"code": 13, "message": "{LONG}"}}}}'),
    ],
    ids=["iapp-code", "yating-code", "tiro-message"],
)
def test_a_vendor_error_of_any_length_becomes_a_short_error(make: Callable[[], StreamCodec], message: str) -> None:
    codec = make()
    codec.start()
    [error] = codec.receive(message)
    assert isinstance(error, VendorError)
    assert len(error.message) <= MAX_ERROR_MESSAGE
    assert error.code is None or len(error.code) <= MAX_ERROR_MESSAGE


def test_amivoice_says_nothing_after_the_end_of_the_stream_whatever_arrives() -> None:
    codec = AmiVoiceCodec("-a-general", "test-key")
    codec.start()
    codec.receive("s")
    codec.end()
    assert codec.receive("e") == [StreamCompleted()]
    assert codec.receive(b"C authorization") == []
    assert codec.connection_closed(1000, "") == []


def test_amivoice_error_text_is_bounded() -> None:
    codec = AmiVoiceCodec("-a-general", "test-key")
    codec.start()
    [error] = codec.receive(f"s {LONG}")
    assert isinstance(error, VendorError)
    assert len(error.message) <= MAX_ERROR_MESSAGE
