"""iApp codec: the exact frames it sends, and how it reads every server message, documented or not."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from asr_daemon.redact import register_secret
from asr_daemon.vendors.base import (
    PCM16K,
    RESULT_CHARS,
    TRUNCATED,
    FinalResult,
    PartialResult,
    StreamCompleted,
    VendorError,
    VendorEvent,
)
from asr_daemon.vendors.iapp.codec import IAppCodec

# The response sample from iApp's documentation, byte for byte.
DOC_SAMPLE = '{"type":"realtime","state":"Sentence","text":"สวัสดีครับ"}'
CONFIRMATION = '{"type":"realtime","state":"Sentence","text":"Confirm Close Connection"}'


def result(state: str, text: str) -> str:
    # The spacing json.dumps gives, as the vendor's Python server would send it.
    return json.dumps({"type": "realtime", "state": state, "text": text}, ensure_ascii=False)


def started() -> IAppCodec:
    codec = IAppCodec()
    assert codec.start() == []
    return codec


def test_ready_at_once_without_sending_anything() -> None:
    codec = IAppCodec()
    assert not codec.ready
    assert codec.start() == []
    assert codec.ready


def test_audio_goes_out_as_raw_binary_frames() -> None:
    codec = started()
    pcm = bytes(range(256)) * 5
    assert codec.send_audio(pcm) == [pcm]
    assert codec.send_audio(b"") == []
    assert codec.audio_format == PCM16K
    # 40 ms of 16 kHz s16le mono.
    assert codec.chunk_bytes == 1280


def test_end_of_stream_is_the_documented_json_once() -> None:
    codec = started()
    assert codec.end() == ['{"data":{"status":"CloseConnection"}}']
    assert codec.ended
    assert codec.end() == []
    # Audio after the end marker would break the protocol: it is not sent.
    assert codec.send_audio(b"\x01\x00" * 10) == []


def test_documentation_sample_is_a_partial() -> None:
    codec = started()
    assert codec.receive(DOC_SAMPLE) == [PartialResult("สวัสดีครับ")]


def test_sentences_become_partials_then_finals_on_new_sentence_and_confirmation() -> None:
    codec = started()
    assert codec.receive(result("Sentence", "สวั")) == [PartialResult("สวั")]
    assert codec.receive(result("Sentence", "สวัสดี")) == [PartialResult("สวัสดี")]
    assert codec.receive(result("Sentence", "สวัสดีครับ")) == [PartialResult("สวัสดีครับ")]
    # NewSentence closes the previous sentence with its last text and opens the next one.
    assert codec.receive(result("NewSentence", "วัน")) == [FinalResult("สวัสดีครับ"), PartialResult("วัน")]
    assert codec.receive(result("Sentence", "วันนี้อากาศดี")) == [PartialResult("วันนี้อากาศดี")]
    codec.end()
    assert not codec.completed
    assert codec.receive(CONFIRMATION) == [FinalResult("วันนี้อากาศดี"), StreamCompleted()]
    assert codec.completed
    # The close that follows the confirmation is normal.
    assert codec.connection_closed(1000, "") == []
    assert codec.connection_closed(None, "") == []


def test_confirmation_is_recognised_by_its_text_whatever_the_other_fields() -> None:
    for message in (
        CONFIRMATION,
        '{"text": "Confirm Close Connection"}',
        result("NewSentence", "Confirm Close Connection"),
    ):
        codec = started()
        codec.receive(result("Sentence", "ไฟ"))
        assert codec.receive(message) == [FinalResult("ไฟ"), StreamCompleted()], message


def test_confirmation_without_any_speech_completes_with_no_final() -> None:
    codec = started()
    codec.end()
    assert codec.receive(CONFIRMATION) == [StreamCompleted()]


def test_repeated_and_empty_hypotheses_add_nothing() -> None:
    codec = started()
    assert codec.receive(result("Sentence", "")) == []
    assert codec.receive(result("Sentence", "เปิด")) == [PartialResult("เปิด")]
    assert codec.receive(result("Sentence", "เปิด")) == []
    # A NewSentence with no text yet closes the sentence; the empty one that follows is never a final.
    assert codec.receive(result("NewSentence", "")) == [FinalResult("เปิด")]
    assert codec.receive(result("NewSentence", "ปิด")) == [PartialResult("ปิด")]


def test_new_sentence_first_has_nothing_to_close() -> None:
    codec = started()
    assert codec.receive(result("NewSentence", "ก")) == [PartialResult("ก")]


def test_state_spelled_as_in_the_seed_prose_is_understood() -> None:
    codec = started()
    codec.receive(result("Sentence", "หนึ่ง"))
    assert codec.receive(result("New sentence", "สอง")) == [FinalResult("หนึ่ง"), PartialResult("สอง")]


def test_messages_after_completion_are_ignored() -> None:
    codec = started()
    codec.receive(CONFIRMATION)
    assert codec.receive(result("Sentence", "late")) == []
    assert codec.receive("garbage") == []


def test_non_json_text_is_an_error_quoting_it() -> None:
    codec = started()
    [error] = codec.receive("Internal Server Error")
    assert isinstance(error, VendorError)
    assert not error.fatal
    assert "not JSON" in error.message
    assert "Internal Server Error" in error.message


def test_binary_from_the_vendor_is_an_error() -> None:
    [error] = started().receive(b"\x00\x01")
    assert isinstance(error, VendorError)
    assert "binary" in error.message


def test_unexpected_json_is_an_error_quoting_it() -> None:
    unexpected = ('["Sentence"]', '{"type":"realtime","state":"Sentence"}', '{"state":"Final","x":1}', "42")
    for message in unexpected:
        [error] = started().receive(message)
        assert isinstance(error, VendorError), message
        assert "unexpected message" in error.message
        assert message.replace(" ", "") in error.message.replace(" ", "")


def test_error_document_carries_the_vendors_words_and_code() -> None:
    [error] = started().receive('{"status": 401, "message": "Invalid or missing API key"}')
    assert error == VendorError("iApp error: Invalid or missing API key", "401", fatal=True)
    [error] = started().receive('{"type":"error","error":"quota exceeded","code":"Q1"}')
    assert error == VendorError("iApp error: quota exceeded", "Q1", fatal=False)
    # An unknown state with a text is the vendor saying something: keep it.
    [error] = started().receive('{"type":"realtime","state":"Error","text":"engine busy"}')
    assert error == VendorError("iApp error: engine busy", None, fatal=False)


def test_a_key_echoed_by_the_vendor_never_reaches_the_error() -> None:
    register_secret("iapp-secret-key-0042")
    [error] = started().receive('{"message": "bad key iapp-secret-key-0042"}')
    assert isinstance(error, VendorError)
    assert "iapp-secret-key-0042" not in error.message
    [error] = started().receive("no json iapp-secret-key-0042")
    assert isinstance(error, VendorError)
    assert "iapp-secret-key-0042" not in error.message


def test_long_vendor_messages_are_shortened() -> None:
    [error] = started().receive("x" * 5000)
    assert isinstance(error, VendorError)
    assert len(error.message) < 300


def test_normal_close_after_the_end_marker_completes_the_stream() -> None:
    codec = started()
    codec.receive(result("Sentence", "ครับ"))
    codec.end()
    assert codec.connection_closed(1000, "") == [FinalResult("ครับ"), StreamCompleted()]
    assert codec.completed


def test_close_before_the_end_or_abnormal_close_is_an_error() -> None:
    codec = started()
    codec.receive(result("Sentence", "ครับ"))
    [error] = codec.connection_closed(1000, "idle timeout")
    assert isinstance(error, VendorError)
    assert "idle timeout" in error.message
    assert not codec.completed

    codec = started()
    codec.end()
    [error] = codec.connection_closed(1011, "engine failure")
    assert isinstance(error, VendorError)
    assert "1011" in error.message
    assert "engine failure" in error.message

    codec = started()
    codec.end()
    [error] = codec.connection_closed(None, "")
    assert isinstance(error, VendorError)


# ---------------------------------------------------------------------------------------------------------
# Fuzzing: whatever arrives, receive() returns a list of events and never raises.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
states = st.sampled_from(["Sentence", "NewSentence", "New sentence", "sentence", "", "Final", "Error"])
texts = st.sampled_from(["", "สวัสดี", "Confirm Close Connection", " ", "ok"]) | st.text(max_size=30)


@st.composite
def mutated_messages(draw: st.DrawFn) -> str | bytes:
    document: dict[str, Any] = {"type": "realtime", "state": draw(states), "text": draw(texts)}
    for key in draw(st.lists(st.sampled_from(["type", "state", "text"]), max_size=2)):
        if draw(st.booleans()):
            document.pop(key, None)
        else:
            document[key] = draw(json_values)
    if draw(st.booleans()):
        document.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    encoded = json.dumps(document, ensure_ascii=draw(st.booleans()))
    cut = draw(st.integers(0, len(encoded)))
    how = draw(st.sampled_from(["whole", "truncate", "insert", "bytes"]))
    if how == "truncate":
        return encoded[:cut]
    if how == "insert":
        return encoded[:cut] + draw(st.text(max_size=3)) + encoded[cut:]
    if how == "bytes":
        return encoded.encode()
    return encoded


any_message = mutated_messages() | st.text(max_size=200) | st.binary(max_size=200) | json_values.map(json.dumps)


@settings(max_examples=400, deadline=None)
@given(
    messages=st.lists(any_message, max_size=12),
    end_at=st.integers(0, 12),
    close=st.none() | st.integers(1000, 4999),
)
def test_receive_never_raises_and_keeps_its_promises(
    messages: list[str | bytes], end_at: int, close: int | None
) -> None:
    codec = started()
    events: list[VendorEvent] = []
    for index, message in enumerate(messages):
        if index == end_at:
            codec.end()
        out = codec.receive(message)
        assert isinstance(out, list)
        events.extend(out)
    events.extend(codec.connection_closed(close, "reason"))
    allowed = (PartialResult, FinalResult, StreamCompleted, VendorError)
    assert all(isinstance(event, allowed) for event in events)
    # Never an empty final, never anything after completion, completion at most once.
    assert all(event.text.strip() for event in events if isinstance(event, FinalResult))
    completions = [i for i, event in enumerate(events) if isinstance(event, StreamCompleted)]
    assert len(completions) <= 1
    if completions:
        assert completions[0] == len(events) - 1
        assert codec.completed


def test_a_runaway_hypothesis_is_bounded_and_the_cut_is_marked() -> None:
    codec = started()
    [partial] = codec.receive(result("Sentence", "ก" * (3 * RESULT_CHARS)))
    [final, _] = codec.receive(result("NewSentence", "ข"))
    for event in (partial, final):
        assert isinstance(event, PartialResult | FinalResult)
        assert len(event.text) == RESULT_CHARS and event.text.endswith(TRUNCATED)
