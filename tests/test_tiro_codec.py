"""Tiro codec: messages byte for byte against docs/protocols/tiro.md, every documented answer, fuzz."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_daemon.redact import register_secret
from asr_daemon.vendors.base import (
    RESULT_CHARS,
    TRUNCATED,
    FinalResult,
    PartialResult,
    StreamCompleted,
    StreamReady,
    VendorError,
)
from asr_daemon.vendors.tiro.codec import TiroCodec

EVENT_TYPES = (StreamReady, PartialResult, FinalResult, StreamCompleted, VendorError)

# The StreamingRecognizeResponse example of docs/protocols/tiro.md, in grpc-gateway's envelope (interim).
SPEC_INTERIM = (
    '{"result": {"error": null, "results": [{"alternatives": [{"transcript":'
    ' "gera lítið úr meintri spennu", "confidence": 0, "words": [{"startTime": "1.020s",'
    ' "endTime": "1.289s", "word": "gera", "confidence": 0, "speakerTag": 0}]}], "isFinal": false,'
    ' "stability": 0}], "speechEventType": "SPEECH_EVENT_UNSPECIFIED"}}'
)

VALIDATION_ERROR = json.dumps(
    {
        "error": {
            "code": 3,
            "message": "Invalid request. See details",
            "details": [
                {
                    "@type": "types.talgreinir.is/google.rpc.BadRequest",
                    "fieldViolations": [
                        {
                            "field": "streaming_config.config",
                            "description": "Error validating field 'streaming_config.config'. See error details.",
                        },
                        {
                            "field": "streaming_config.config.language_code",
                            "description": "Unsupported value 'xx' for field 'language_code'.",
                        },
                    ],
                }
            ],
        }
    }
)


def final(transcript: str, words: list[tuple[str, str, str]] | None = None) -> str:
    infos = [{"startTime": s, "endTime": e, "word": w, "confidence": 0, "speakerTag": 0} for w, s, e in words or []]
    alternative = {"transcript": transcript, "confidence": 0, "words": infos}
    return json.dumps({"result": {"error": None, "results": [{"alternatives": [alternative], "isFinal": True}]}})


def started() -> TiroCodec:
    codec = TiroCodec()
    codec.start()
    return codec


# -- outgoing, byte for byte --------------------------------------------------------------------------------


def test_first_message_is_the_config_only_request() -> None:
    codec = TiroCodec()
    assert codec.start() == [
        '{"streamingConfig":{"config":{"encoding":"LINEAR16","sampleRateHertz":16000,"languageCode":"is-IS",'
        '"maxAlternatives":1,"enableWordTimeOffsets":true,"enableAutomaticPunctuation":true},'
        '"singleUtterance":false,"interimResults":true}}'
    ]
    # Tiro answers nothing to the config: audio may flow at once.
    assert codec.ready


def test_config_carries_the_configured_model_and_switches() -> None:
    codec = TiroCodec("is-IS-x-exp", interim_results=False, punctuation=False, word_time_offsets=False)
    assert codec.start() == [
        '{"streamingConfig":{"config":{"encoding":"LINEAR16","sampleRateHertz":16000,"languageCode":"is-IS-x-exp",'
        '"maxAlternatives":1,"enableWordTimeOffsets":false,"enableAutomaticPunctuation":false},'
        '"singleUtterance":false,"interimResults":false}}'
    ]


def test_audio_is_base64_in_audio_content() -> None:
    codec = started()
    assert codec.send_audio(b"\x00\x01\x02\x03\xff\x7f") == ['{"audioContent":"AAECA/9/"}']


def test_end_marker_is_empty_audio_content_once() -> None:
    codec = started()
    assert codec.end() == ['{"audioContent":""}']
    assert codec.ended
    assert codec.end() == []


def test_empty_chunk_is_not_sent_because_it_would_end_the_stream() -> None:
    codec = started()
    assert codec.send_audio(b"") == []
    assert not codec.ended


def test_no_audio_after_the_end_marker() -> None:
    codec = started()
    codec.end()
    assert codec.send_audio(b"\x01\x00") == []


@given(st.binary(min_size=1, max_size=4000))
def test_audio_round_trips_through_base64(pcm: bytes) -> None:
    (message,) = TiroCodec().send_audio(pcm)
    assert isinstance(message, str)
    assert base64.b64decode(json.loads(message)["audioContent"], validate=True) == pcm


# -- results ------------------------------------------------------------------------------------------------


def test_interim_result_is_the_partial_of_the_open_segment() -> None:
    assert started().receive(SPEC_INTERIM) == [PartialResult("gera lítið úr meintri spennu")]


def test_final_result_with_word_times_gives_the_segment_span() -> None:
    message = final("Gera lítið.", [("gera", "1.020s", "1.289s"), ("lítið", "1.289s", "2s")])
    assert started().receive(message) == [FinalResult("Gera lítið.", 1020, 2000)]


def test_final_result_without_words_has_no_times() -> None:
    assert started().receive(final("Halló heimur.")) == [FinalResult("Halló heimur.", None, None)]


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ("0s", "0.500s", (0, 500)),
        ("12.000000001s", "13.5s", (12000, 13500)),
        ({"seconds": "3", "nanos": 250000000}, {"seconds": 4}, (3250, 4000)),
        ("-1s", "2s", (None, 2000)),
        ("soon", "2s", (None, 2000)),
        ("3s", "1s", (None, None)),
    ],
)
def test_word_durations(start: object, end: object, expected: tuple[int | None, int | None]) -> None:
    message = json.dumps(
        {
            "result": {
                "results": [
                    {
                        "alternatives": [{"transcript": "a b", "words": [{"startTime": start}, {"endTime": end}]}],
                        "isFinal": True,
                    }
                ]
            }
        }
    )
    assert started().receive(message) == [FinalResult("a b", *expected)]


def test_each_response_result_becomes_one_event_in_order() -> None:
    message = json.dumps(
        {
            "result": {
                "results": [
                    {"alternatives": [{"transcript": "fyrsta"}], "isFinal": True},
                    {"alternatives": [{"transcript": "annað"}], "isFinal": False},
                ]
            }
        }
    )
    assert started().receive(message) == [FinalResult("fyrsta"), PartialResult("annað")]


def test_unknown_fields_and_older_api_fields_are_ignored() -> None:
    message = json.dumps(
        {
            "result": {
                "resultIndex": 2,
                "endpointerType": "END_OF_SPEECH",
                "results": [{"alternatives": [{"transcript": "já", "new": 1}], "isFinal": True, "x": []}],
            },
            "somethingNew": {"a": 1},
        }
    )
    assert started().receive(message) == [FinalResult("já")]


def test_end_of_single_utterance_event_alone_says_nothing() -> None:
    message = '{"result":{"error":null,"results":[],"speechEventType":"END_OF_SINGLE_UTTERANCE"}}'
    assert started().receive(message) == []


# -- errors -------------------------------------------------------------------------------------------------


def test_validation_error_is_fatal_and_names_the_field() -> None:
    (event,) = started().receive(VALIDATION_ERROR)
    assert event == VendorError(
        "Invalid request. See details: streaming_config.config: Error validating field"
        " 'streaming_config.config'. See error details.; streaming_config.config.language_code:"
        " Unsupported value 'xx' for field 'language_code'.",
        "INVALID_ARGUMENT",
        fatal=True,
    )


@pytest.mark.parametrize(
    ("code", "name", "fatal"),
    [
        (16, "UNAUTHENTICATED", True),
        (7, "PERMISSION_DENIED", True),
        (13, "INTERNAL", False),
        (14, "UNAVAILABLE", False),
        (4, "DEADLINE_EXCEEDED", False),
        ("UNAVAILABLE", "UNAVAILABLE", False),
        ("16", "UNAUTHENTICATED", True),
    ],
)
def test_status_codes_are_classified(code: object, name: str, fatal: bool) -> None:
    message = json.dumps({"error": {"code": code, "message": "Unknown error in StreamingRecognize.", "details": []}})
    assert started().receive(message) == [VendorError("Unknown error in StreamingRecognize.", name, fatal=fatal)]


def test_error_inside_the_response_is_reported() -> None:
    message = '{"result":{"error":{"code":13,"message":"Unexpected failure.","details":[]},"results":[]}}'
    assert started().receive(message) == [VendorError("Unexpected failure.", "INTERNAL", fatal=False)]


def test_ok_status_inside_the_response_is_not_an_error() -> None:
    message = '{"result":{"error":{"code":0,"message":"","details":[]},"results":[]}}'
    assert started().receive(message) == []


def test_ok_status_in_the_envelope_is_not_an_error() -> None:
    assert started().receive('{"error":{"code":0,"message":""}}') == []


def test_grpc_gateway_v1_error_shape() -> None:
    message = '{"error":{"grpc_code":16,"http_code":401,"message":"bad token","http_status":"Unauthorized"}}'
    assert started().receive(message) == [VendorError("bad token", "UNAUTHENTICATED", fatal=True)]


def test_vendor_text_in_an_error_is_redacted() -> None:
    register_secret("s3cr3t-tiro-key")
    message = json.dumps(
        {
            "error": {
                "code": 16,
                "message": "token s3cr3t-tiro-key rejected for /v2?token=other-value",
                "details": [],
            }
        }
    )
    (event,) = started().receive(message)
    assert isinstance(event, VendorError)
    assert "s3cr3t-tiro-key" not in event.message
    assert "other-value" not in event.message


def test_garbage_is_a_transient_error() -> None:
    (event,) = started().receive("<html>502 Bad Gateway</html>")
    assert isinstance(event, VendorError)
    assert not event.fatal
    assert "not JSON" in event.message


def test_newline_delimited_documents_in_one_frame() -> None:
    frame = SPEC_INTERIM + "\n" + final("Gera lítið úr meintri spennu.") + "\n"
    assert started().receive(frame) == [
        PartialResult("gera lítið úr meintri spennu"),
        FinalResult("Gera lítið úr meintri spennu."),
    ]


# -- completion ---------------------------------------------------------------------------------------------


def test_close_without_close_frame_after_the_end_marker_completes() -> None:
    codec = started()
    codec.end()
    assert codec.connection_closed(None, "") == [StreamCompleted()]
    assert codec.completed
    assert codec.receive(final("seint")) == []


def test_normal_close_after_the_end_marker_completes() -> None:
    codec = started()
    codec.end()
    assert codec.connection_closed(1000, "") == [StreamCompleted()]


def test_close_before_the_end_marker_is_a_transient_error() -> None:
    for code in (None, 1000):
        codec = started()
        (event,) = codec.connection_closed(code, "")
        assert isinstance(event, VendorError)
        assert not event.fatal
        assert not codec.completed


def test_server_error_close_after_the_end_marker_is_an_error() -> None:
    codec = started()
    codec.end()
    (event,) = codec.connection_closed(1011, "internal error")
    assert isinstance(event, VendorError)
    assert not codec.completed


def test_close_after_a_reported_error_adds_nothing() -> None:
    codec = started()
    codec.end()
    codec.receive(VALIDATION_ERROR)
    # Not a completion: the error already decided the stream's fate.
    assert codec.connection_closed(None, "") == []
    assert not codec.completed


# -- fuzz ---------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)

SAMPLES = [SPEC_INTERIM, VALIDATION_ERROR, final("a b", [("a", "0.1s", "0.2s"), ("b", "0.2s", "0.3s")])]


def mutate(value: object, data: st.DataObject) -> object:
    """Replace, drop or keep each node of a valid message at random."""
    choice = data.draw(st.integers(0, 5))
    if choice == 0:
        return data.draw(json_values)
    if isinstance(value, dict):
        return {k: mutate(v, data) for k, v in value.items() if data.draw(st.integers(0, 6))}
    if isinstance(value, list):
        return [mutate(v, data) for v in value if data.draw(st.integers(0, 6))]
    return value


def check(codec: TiroCodec, message: str | bytes) -> None:
    events = codec.receive(message)
    assert isinstance(events, list)
    assert all(isinstance(event, EVENT_TYPES) for event in events)


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_receive_never_raises_on_random_messages(message: str | bytes) -> None:
    check(started(), message)


@settings(max_examples=300)
@given(json_values)
def test_receive_never_raises_on_random_json(value: object) -> None:
    check(started(), json.dumps(value))
    check(started(), json.dumps({"result": value}))
    check(started(), json.dumps({"error": value}))
    check(started(), json.dumps({"result": {"results": [value]}}))


@settings(max_examples=300)
@given(st.data())
def test_receive_never_raises_on_mutated_vendor_messages(data: st.DataObject) -> None:
    sample = json.loads(data.draw(st.sampled_from(SAMPLES)))
    text = json.dumps(mutate(sample, data), ensure_ascii=data.draw(st.booleans()))
    if data.draw(st.booleans()) and text:
        cut = data.draw(st.integers(0, len(text)))
        text = text[:cut]
    check(started(), text)
    check(started(), text.encode("utf-8"))


def test_a_runaway_transcript_is_bounded_and_the_cut_is_marked() -> None:
    [event] = started().receive(final("x" * (3 * RESULT_CHARS)))
    assert isinstance(event, FinalResult)
    assert len(event.text) == RESULT_CHARS and event.text.endswith(TRUNCATED)
