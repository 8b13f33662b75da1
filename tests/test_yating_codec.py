"""The Yating codec: byte for byte against docs/protocols/yating.md and the vendor's own documents; fuzzed."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from asr_daemon.vendors.base import (
    PCM16K,
    RESULT_CHARS,
    TRUNCATED,
    FinalResult,
    PartialResult,
    StreamCompleted,
    StreamReady,
    VendorError,
)
from asr_daemon.vendors.yating.codec import YatingCodec

# The greeting and a final exactly as the vendor's Java SDK README shows them.
SESSION_STARTED = (
    '{\n    "status":"ok",\n    "ssid":"WEBSOCKET_SSID",\n    "message_type":"session_started"\n}'
)
README_FINAL = """{
    "pipe": {
        "asr_final": true,
        "asr_begin_time": 0.032,
        "asr_end_time": 4.532,
        "asr_sentence": "今天天氣很好。",
        "asr_confidence": 1.0,
        "asr_word_time_stamp": [
            {"word": "今天", "begin_time": 0.4661875, "end_time": 0.54515625, "punctuator": ""},
            {"word": "好", "begin_time": 1.17671875, "end_time": 1.334625, "punctuator": "。"}
        ],
        "text_segmented": "今天 天氣 很 好"
    }
}"""


def ready_codec() -> YatingCodec:
    codec = YatingCodec()
    assert codec.start() == []
    assert codec.receive(SESSION_STARTED) == [StreamReady()]
    return codec


def test_audio_goes_out_as_the_same_bytes_in_binary_frames() -> None:
    codec = ready_codec()
    pcm = bytes(range(256)) * 7 + b"\x01\x02\x03\x04"
    sent = codec.send_audio(pcm)
    assert sent == [pcm]
    assert isinstance(sent[0], bytes)
    assert YatingCodec.chunk_bytes == 2000
    assert YatingCodec.audio_format == PCM16K


def test_empty_audio_is_not_sent_because_an_empty_frame_ends_the_stream() -> None:
    assert ready_codec().send_audio(b"") == []


def test_end_is_exactly_one_empty_binary_frame() -> None:
    codec = ready_codec()
    assert codec.end() == [b""]
    assert codec.ended
    assert codec.end() == []
    assert codec.send_audio(b"\x00\x01") == []


def test_not_ready_until_the_session_started_greeting() -> None:
    codec = YatingCodec()
    codec.start()
    assert not codec.ready
    assert codec.receive('{"pipe": {"asr_state": "first_chunk_received"}}') == []
    assert not codec.ready
    assert codec.receive(SESSION_STARTED) == [StreamReady()]
    assert codec.ready
    # A repeated greeting changes nothing.
    assert codec.receive(SESSION_STARTED) == []


def test_the_seeds_bare_status_ok_greeting_is_accepted() -> None:
    codec = YatingCodec()
    assert codec.receive('{"status":"ok"}') == [StreamReady()]


def test_an_ok_status_of_another_kind_is_not_the_greeting() -> None:
    codec = YatingCodec()
    assert codec.receive('{"status": "ok", "message_type": "session_closing"}') == []
    assert not codec.ready


def test_the_seed_documents_example_exchange() -> None:
    codec = YatingCodec()
    messages = [
        '{"status":"ok"}',
        '{"pipe":{"asr_state":"first_chunk_received"}}',
        '{"pipe":{"asr_state":"utterance_begin"}}',
        '{"pipe":{"asr_sentence":"金"}}',
        '{"pipe":{"asr_sentence":"今天天"}}',
        '{"pipe":{"asr_sentence":"今天天"}}',
        '{"pipe":{"asr_sentence":"今天天氣"}}',
        """{"pipe":{"asr_sentence":"今天天氣很好","asr_final":true,"asr_begin_time":4.38600015640259,
           "asr_end_time":24.5459995269775,"asr_word_time_stamp":[
           {"word":"今天","begin_time":4.38600015640259,"end_time":5.55634234543425},
           {"word":"好","begin_time":8.4567654,"end_time":9.01324324}]}}""",
        '{"pipe":{"asr_state":"utterance_end"}}',
    ]
    events = [event for message in messages for event in codec.receive(message)]
    assert events == [
        StreamReady(),
        PartialResult("金"),
        PartialResult("今天天"),  # the repeated hypothesis is not reported twice
        PartialResult("今天天氣"),
        FinalResult("今天天氣很好", 4386, 24546),
    ]


def test_final_with_the_full_field_set_keeps_text_and_converts_times_to_ms() -> None:
    codec = ready_codec()
    assert codec.receive(README_FINAL) == [FinalResult("今天天氣很好。", 32, 4532)]


def test_a_final_resets_the_partial_so_the_next_sentence_can_repeat_it() -> None:
    codec = ready_codec()
    assert codec.receive('{"pipe":{"asr_sentence":"好"}}') == [PartialResult("好")]
    assert codec.receive('{"pipe":{"asr_sentence":"好","asr_final":true}}') == [FinalResult("好")]
    assert codec.receive('{"pipe":{"asr_sentence":"好"}}') == [PartialResult("好")]


def test_asr_final_false_is_still_a_partial() -> None:
    codec = ready_codec()
    assert codec.receive('{"pipe":{"asr_sentence":"今天","asr_final":false}}') == [PartialResult("今天")]


def test_times_that_are_missing_or_not_sane_become_none() -> None:
    codec = ready_codec()
    assert codec.receive('{"pipe":{"asr_final":true,"asr_sentence":"a"}}') == [FinalResult("a")]
    weird = '{"pipe":{"asr_final":true,"asr_sentence":"b","asr_begin_time":true,"asr_end_time":NaN}}'
    assert codec.receive(weird) == [FinalResult("b")]
    negative = '{"pipe":{"asr_final":true,"asr_sentence":"c","asr_begin_time":-1,"asr_end_time":"2"}}'
    assert codec.receive(negative) == [FinalResult("c")]


def test_eof_completes_the_stream_and_later_messages_are_ignored() -> None:
    codec = ready_codec()
    codec.end()
    assert codec.receive('{"pipe": {"asr_eof": true}}') == [StreamCompleted()]
    assert codec.completed
    assert codec.receive('{"pipe":{"asr_sentence":"late"}}') == []
    assert codec.connection_closed(1000, "") == []


def test_a_final_and_eof_in_one_message_come_out_in_order() -> None:
    codec = ready_codec()
    message = '{"pipe":{"asr_final":true,"asr_sentence":"完","asr_eof":true}}'
    assert codec.receive(message) == [FinalResult("完"), StreamCompleted()]


def test_a_rejected_token_is_a_fatal_error_carrying_the_vendors_detail() -> None:
    codec = YatingCodec()
    (error,) = codec.receive('{"status": "error", "detail": "invalid token"}')
    assert isinstance(error, VendorError)
    assert error.fatal
    assert "invalid token" in error.message
    # The server closes a few seconds later; that close is not a second error.
    assert codec.connection_closed(1000, "") == []


def test_a_pipeline_error_mid_stream_is_not_fatal() -> None:
    codec = ready_codec()
    (error,) = codec.receive('{"status": "error", "detail": "asr pipeline crashed", "code": 5003}')
    assert isinstance(error, VendorError)
    assert not error.fatal
    assert error.message == "Yating error: asr pipeline crashed"
    assert error.code == "5003"


def test_a_token_complaint_after_the_greeting_is_not_fatal() -> None:
    # The token is checked when the stream starts; a later error is the pipeline's, and a new stream may succeed.
    (error,) = ready_codec().receive('{"status": "error", "detail": "token expired"}')
    assert isinstance(error, VendorError)
    assert not error.fatal


def test_an_error_without_detail_quotes_the_message() -> None:
    (error,) = YatingCodec().receive('{"status": "failed"}')
    assert isinstance(error, VendorError)
    assert "failed" in error.message


def test_error_details_are_redacted_and_bounded() -> None:
    detail = "bad url wss://asr.api.yating.tw/ws/v1/?token=4e87d0db167271245234 " + "x" * 500
    (error,) = YatingCodec().receive(json.dumps({"status": "error", "detail": detail}))
    assert isinstance(error, VendorError)
    assert "4e87d0db167271245234" not in error.message
    assert len(error.message) < 260


def test_messages_outside_the_protocol_are_errors() -> None:
    for message in (b"\x00\x01", "not json", "[1, 2]", '"text"', '{"hello": "world"}', '{"pipe": 3}'):
        events = YatingCodec().receive(message)
        assert len(events) == 1 and isinstance(events[0], VendorError), message
        assert not events[0].fatal


def test_a_close_before_eof_is_an_error() -> None:
    codec = ready_codec()
    codec.end()
    (error,) = codec.connection_closed(None, "")
    assert isinstance(error, VendorError)
    assert not error.fatal


# -- fuzzing ----------------------------------------------------------------------------------------------

VALID = [
    SESSION_STARTED,
    README_FINAL,
    '{"status":"ok"}',
    '{"pipe":{"asr_state":"utterance_begin"}}',
    '{"pipe":{"asr_sentence":"今天天氣"}}',
    '{"pipe":{"asr_eof":true}}',
    '{"status":"error","detail":"token expired"}',
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=8,
)
pipe_keys = st.sampled_from(
    ["asr_state", "asr_sentence", "asr_final", "asr_begin_time", "asr_end_time", "asr_eof", "text_segmented"]
)
pipe_documents = st.dictionaries(pipe_keys, json_values, max_size=6).map(lambda pipe: {"pipe": pipe})
status_documents = st.fixed_dictionaries(
    {"status": json_values},
    optional={"detail": json_values, "message_type": json_values, "code": json_values},
)


def assert_events(events: Any) -> None:
    assert isinstance(events, list)
    allowed = (StreamReady, PartialResult, FinalResult, StreamCompleted, VendorError)
    assert all(isinstance(event, allowed) for event in events)


@settings(max_examples=300)
@given(st.lists(st.text() | st.binary() | json_values.map(json.dumps), max_size=8))
def test_random_messages_never_raise(messages: list[str | bytes]) -> None:
    codec = YatingCodec()
    for message in messages:
        assert_events(codec.receive(message))
    assert_events(codec.connection_closed(None, ""))


@settings(max_examples=200, deadline=None)
@given(st.lists(pipe_documents | status_documents, max_size=6))
def test_protocol_shaped_messages_never_raise(documents: list[dict[str, Any]]) -> None:
    codec = YatingCodec()
    for document in documents:
        events = codec.receive(json.dumps(document))
        assert_events(events)
        for event in events:
            if isinstance(event, FinalResult):
                assert isinstance(event.text, str)
                assert event.start_ms is None or event.start_ms >= 0


@settings(max_examples=300)
@given(st.sampled_from(VALID), st.data())
def test_mutated_valid_messages_never_raise(message: str, data: st.DataObject) -> None:
    raw = bytearray(message.encode("utf-8"))
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if action == "flip":
            raw[position] ^= data.draw(st.integers(1, 255))
        elif action == "delete":
            del raw[position]
        else:
            raw.insert(position, data.draw(st.integers(0, 255)))
        if not raw:
            break
    codec = ready_codec()
    assert_events(codec.receive(raw.decode("utf-8", "replace")))
    assert_events(codec.receive(bytes(raw)))


def test_a_runaway_sentence_is_bounded_and_the_cut_is_marked() -> None:
    codec = ready_codec()
    huge = "好" * (3 * RESULT_CHARS)
    [partial] = codec.receive(json.dumps({"pipe": {"asr_final": False, "asr_sentence": huge}}))
    [final] = codec.receive(json.dumps({"pipe": {"asr_final": True, "asr_sentence": huge}}))
    for event in (partial, final):
        assert isinstance(event, PartialResult | FinalResult)
        assert len(event.text) == RESULT_CHARS and event.text.endswith(TRUNCATED)
