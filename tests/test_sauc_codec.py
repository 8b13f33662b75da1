"""SAUC codec: frames byte for byte against docs/protocols/sauc.md, results, error classes, fuzz."""

from __future__ import annotations

import gzip
import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
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
    VendorEvent,
)
from asr_daemon.vendors.sauc.codec import RecognitionRequest, SaucCodec

# The spec's full client request, as this client fills it in (compact JSON, keys in this order).
EXPECTED_REQUEST = (
    b'{"user":{"uid":"asr-daemon"},'
    b'"audio":{"format":"pcm","codec":"raw","rate":16000,"bits":16,"channel":1},'
    b'"request":{"model_name":"bigmodel","enable_itn":true,"enable_punc":true,"enable_ddc":false,'
    b'"show_utterances":true,"result_type":"full","enable_nonstream":false}}'
)


def started(request: RecognitionRequest | None = None) -> SaucCodec:
    codec = SaucCodec(request or RecognitionRequest())
    codec.start()
    return codec


def response(document: Any, *, sequence: int = 2, last: bool = False, gzipped: bool = True) -> bytes:
    """A full server response laid out as the spec's table shows (``11 91 11 00`` / ``11 93 11 00``)."""
    payload = json.dumps(document, ensure_ascii=False).encode()
    if gzipped:
        payload = gzip.compress(payload)
    head = bytes([0x11, 0x93 if last else 0x91, 0x11 if gzipped else 0x10, 0x00])
    return head + struct.pack(">iI", sequence, len(payload)) + payload


def error(code: int, document: Any) -> bytes:
    """An error frame as the spec shows it: ``11 F0 10 00`` code size JSON (uncompressed)."""
    payload = json.dumps(document).encode()
    return bytes.fromhex("11F01000") + struct.pack(">II", code, len(payload)) + payload


def utterance(text: str, definite: bool, start: int = -1, end: int = -1) -> dict[str, Any]:
    return {"definite": definite, "start_time": start, "end_time": end, "text": text}


def result(*utterances: dict[str, Any], text: str | None = None, duration: int = 1000) -> dict[str, Any]:
    cumulative = "".join(u["text"] for u in utterances) if text is None else text
    return {
        "audio_info": {"duration": duration},
        "result": {"additions": {"log_id": "LOG"}, "text": cumulative, "utterances": list(utterances)},
    }


# ---------------------------------------------------------------------------------------------------------
# Client frames


def test_full_client_request_is_the_demo_variant_with_gzip_json() -> None:
    codec = SaucCodec(RecognitionRequest())
    [frame] = codec.start()
    assert isinstance(frame, bytes)
    assert frame[:4] == bytes.fromhex("11111100")
    assert frame[4:8] == bytes.fromhex("00000001")
    (size,) = struct.unpack(">I", frame[8:12])
    assert size == len(frame) - 12
    assert gzip.decompress(frame[12:]) == EXPECTED_REQUEST
    # Audio flows at once: the spec does not ask the client to wait for the answer to the request.
    assert codec.ready


def test_audio_frames_number_from_two_and_carry_gzip_pcm() -> None:
    codec = started()
    pcm = bytes(range(256)) * 25
    frames = [codec.send_audio(pcm)[0], codec.send_audio(pcm[:100])[0]]
    for sequence, (frame, sent) in enumerate(zip(frames, [pcm, pcm[:100]], strict=True), start=2):
        assert isinstance(frame, bytes)
        assert frame[:4] == bytes.fromhex("11211100")
        assert frame[4:8] == struct.pack(">i", sequence)
        assert struct.unpack(">I", frame[8:12])[0] == len(frame) - 12
        assert gzip.decompress(frame[12:]) == sent
    assert SaucCodec.chunk_bytes == 6400


def test_last_packet_is_empty_with_negative_sequence() -> None:
    codec = started()
    codec.send_audio(b"\x01\x00" * 3200)
    codec.send_audio(b"\x02\x00" * 3200)
    [frame] = codec.end()
    assert isinstance(frame, bytes)
    assert frame[:4] == bytes.fromhex("11231100")
    assert frame[4:8] == bytes.fromhex("FFFFFFFC")  # -4: request 1, audio 2 and 3, last -4
    assert struct.unpack(">I", frame[8:12])[0] == len(frame) - 12 == 20  # gzip of nothing
    assert gzip.decompress(frame[12:]) == b""
    # Once ended, nothing more goes out.
    assert codec.end() == []
    assert codec.send_audio(b"\x00\x00") == []


def test_empty_audio_sends_nothing_and_keeps_numbering() -> None:
    codec = started()
    assert codec.send_audio(b"") == []
    [frame] = codec.send_audio(b"\x00\x00")
    assert isinstance(frame, bytes)
    assert frame[4:8] == struct.pack(">i", 2)


def test_request_options_and_hotwords() -> None:
    request = RecognitionRequest(
        uid="kitchen", enable_itn=False, enable_ddc=True, end_window_size=600, hotwords=("小爱", "客厅灯")
    )
    [frame] = SaucCodec(request).start()
    assert isinstance(frame, bytes)
    document = json.loads(gzip.decompress(frame[12:]))
    assert document["user"] == {"uid": "kitchen"}
    assert document["request"]["enable_itn"] is False
    assert document["request"]["enable_ddc"] is True
    assert document["request"]["end_window_size"] == 600
    context = json.loads(document["request"]["corpus"]["context"])
    assert context == {"hotwords": [{"word": "小爱"}, {"word": "客厅灯"}]}


# ---------------------------------------------------------------------------------------------------------
# Results


def test_answer_to_the_full_request_has_no_result() -> None:
    codec = started()
    ack = response({"result": {"additions": {"log_id": "20250622163644B5501DFE8F745CFA3C9B"}}}, sequence=1)
    assert codec.receive(ack) == []
    assert codec.receive(response({"audio_info": {"duration": 1776}, "result": {"additions": {}}})) == []


def test_open_utterance_is_a_partial_sent_only_when_it_changes() -> None:
    codec = started()
    assert codec.receive(response(result(utterance("今天", False, 300, 800)))) == [PartialResult("今天")]
    assert codec.receive(response(result(utterance("今天", False, 300, 900)), sequence=3)) == []
    assert codec.receive(response(result(utterance("今天天气", False, 300, 1100)), sequence=4)) == [
        PartialResult("今天天气")
    ]


def test_the_spec_example_response_gives_one_final() -> None:
    codec = started()
    example = {
        "audio_info": {"duration": 3696},
        "result": {
            "additions": {"log_id": "20250622163644B5501DFE8F745CFA3C9B"},
            "text": "这是字节跳动，今日头条母公司。",
            "utterances": [
                {
                    "definite": True,
                    "start_time": 0,
                    "end_time": 1705,
                    "text": "这是字节跳动，",
                    "additions": {"fixed_prefix_result": "", "source": "stream", "speaker_id": "0"},
                    "words": [{"text": "这", "start_time": 740, "end_time": 860, "blank_duration": 0}],
                },
                {"definite": False, "start_time": -1, "end_time": -1, "text": ""},
            ],
        },
    }
    assert codec.receive(response(example)) == [FinalResult("这是字节跳动，", 0, 1705)]


def test_definite_utterances_become_finals_exactly_once() -> None:
    codec = started()
    first = utterance("今天天气很好", True, 300, 1900)
    events = codec.receive(response(result(first, utterance("我们", False, 2900, 3300))))
    assert events == [FinalResult("今天天气很好", 300, 1900), PartialResult("我们")]
    # result_type=full repeats every finished utterance in every later response.
    events = codec.receive(response(result(first, utterance("我们去公园", False, 2900, 3800)), sequence=3))
    assert events == [PartialResult("我们去公园")]
    second = utterance("我们去公园散步", True, 2900, 4400)
    events = codec.receive(response(result(first, second, utterance("", False)), sequence=4))
    assert events == [FinalResult("我们去公园散步", 2900, 4400)]
    events = codec.receive(response(result(first, second), sequence=-5, last=True))
    assert events == [StreamCompleted()]
    assert codec.completed


def test_final_response_finalises_the_open_utterance() -> None:
    codec = started()
    codec.receive(response(result(utterance("今天天气", False, 300, 1100))))
    last = response(result(utterance("今天天气很好", False, 300, 1900)), sequence=-3, last=True, gzipped=False)
    assert codec.receive(last) == [FinalResult("今天天气很好", 300, 1900), StreamCompleted()]
    # Nothing counts after completion, and a close is then expected.
    assert codec.receive(response(result(utterance("多余", True, 5000, 6000)), sequence=4)) == []
    assert codec.connection_closed(1000, "") == []


def test_negative_sequence_alone_marks_the_final_response() -> None:
    codec = started()
    head = bytes.fromhex("11911100")  # flags say "positive sequence" but the number is negative
    payload = gzip.compress(json.dumps(result(utterance("好", True, 0, 500))).encode())
    frame = head + struct.pack(">iI", -9, len(payload)) + payload
    assert codec.receive(frame) == [FinalResult("好", 0, 500), StreamCompleted()]


def test_cumulative_text_without_utterances() -> None:
    codec = started()
    plain = {"result": {"text": "今天天气"}}
    assert codec.receive(response(plain)) == [PartialResult("今天天气")]
    final = {"result": {"text": "今天天气很好"}}
    assert codec.receive(response(final, sequence=-3, last=True)) == [
        FinalResult("今天天气很好"),
        StreamCompleted(),
    ]


def test_final_response_without_any_text_completes_empty() -> None:
    codec = started()
    assert codec.receive(response({"audio_info": {"duration": 500}}, sequence=-2, last=True)) == [StreamCompleted()]


def test_server_ack_and_event_numbers_are_tolerated() -> None:
    codec = started()
    assert codec.receive(bytes.fromhex("11B11100") + struct.pack(">i", 1)) == []
    payload = json.dumps(result(utterance("你好", False, 0, 400))).encode()
    # flags 0b0101: sequence, then an event number (newer v3 servers), then the size.
    frame = bytes.fromhex("11951000") + struct.pack(">iiI", 2, 451, len(payload)) + payload
    assert codec.receive(frame) == [PartialResult("你好")]


def test_header_extensions_are_skipped() -> None:
    codec = started()
    payload = json.dumps(result(utterance("你好", False, 0, 400))).encode()
    frame = bytes.fromhex("12911000") + b"\xaa\xbb\xcc\xdd" + struct.pack(">iI", 2, len(payload)) + payload
    assert codec.receive(frame) == [PartialResult("你好")]


# ---------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("code", "text", "fatal"),
    [
        (45000010, "Invalid X-Api-Key", True),
        (45000030, "requested resource not granted", True),
        (45000001, "invalid request params: missing audio.format", True),
        (45000151, "bad audio format", True),
        (55000031, "server busy", False),
        (55000001, "internal error", False),
        (
            45000081,
            "[Timeout waiting next packet] waiting next packet timeout: 8.000000 seconds, session has ended",
            False,
        ),
        (45000002, "empty audio", False),
        (45009999, "access denied for this token", True),
    ],
)
def test_error_frames_carry_code_message_and_class(code: int, text: str, fatal: bool) -> None:
    codec = started()
    [event] = codec.receive(error(code, {"error": text}))
    assert event == VendorError(text, str(code), fatal=fatal)
    # The error said why; the close that follows adds no second error.
    assert codec.connection_closed(None, "") == []


def test_error_payload_in_plain_text_and_success_code() -> None:
    codec = started()
    raw = b"server busy"
    [event] = codec.receive(bytes.fromhex("11F00000") + struct.pack(">II", 55000031, len(raw)) + raw)
    assert isinstance(event, VendorError)
    assert (event.message, event.code) == ("server busy", "55000031")
    assert codec.receive(error(20000000, {"error": "success"})) == []


def test_error_text_is_redacted() -> None:
    secret = "sk-sauc-secret-9f8e7d"
    register_secret(secret)
    [event] = started().receive(error(45000010, {"error": f"Invalid X-Api-Key {secret}"}))
    assert isinstance(event, VendorError)
    assert secret not in event.message
    assert event.message == "Invalid X-Api-Key ***"


def test_close_before_completion_is_an_error() -> None:
    codec = started()
    [event] = codec.connection_closed(1006, "")
    assert isinstance(event, VendorError)
    assert not event.fatal


@pytest.mark.parametrize(
    "message",
    [
        "text where frames belong",
        b"",
        b"\x11\x91",
        bytes.fromhex("21911100") + bytes(8),  # protocol version 2
        bytes.fromhex("11911100") + struct.pack(">iI", 2, 50) + b"short",  # truncated payload
        bytes.fromhex("11911100") + struct.pack(">iI", 2, 9) + b"not gzip!",
        bytes.fromhex("11911000") + struct.pack(">iI", 2, 4) + b"{no}",  # not JSON
        bytes.fromhex("11911200") + struct.pack(">iI", 2, 2) + b"{}",  # unknown compression
        bytes.fromhex("11211100") + struct.pack(">iI", 2, 2) + b"{}",  # a client message type
    ],
)
def test_malformed_messages_become_transient_errors(message: str | bytes) -> None:
    [event] = started().receive(message)
    assert isinstance(event, VendorError)
    assert event.message.startswith("malformed vendor message")
    assert not event.fatal


def test_gzip_bomb_is_refused() -> None:
    bomb = gzip.compress(b"[" + b" " * (2 << 20) + b"]")
    frame = bytes.fromhex("11911100") + struct.pack(">iI", 2, len(bomb)) + bomb
    [event] = started().receive(frame)
    assert isinstance(event, VendorError)
    assert "inflates to more than" in event.message


# ---------------------------------------------------------------------------------------------------------
# Fuzz

EVENT_TYPES = (StreamReady, PartialResult, FinalResult, StreamCompleted, VendorError)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
utterance_like = st.fixed_dictionaries(
    {},
    optional={
        "definite": st.booleans() | json_values,
        "start_time": st.integers(-5, 5000) | json_values,
        "end_time": st.integers(-5, 5000) | json_values,
        "text": st.text(max_size=8) | json_values,
    },
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "audio_info": json_values,
        "result": st.fixed_dictionaries(
            {},
            optional={
                "text": st.text(max_size=10) | json_values,
                "utterances": st.lists(utterance_like) | json_values,
            },
        )
        | json_values,
    },
)


@st.composite
def server_messages(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.sampled_from(["response", "error", "mutated", "random", "text"]))
    if kind == "text":
        return draw(st.text(max_size=40))
    if kind == "random":
        return draw(st.binary(max_size=64))
    document = draw(documents)
    frame = (
        error(draw(st.integers(0, 2**32 - 1)), document)
        if kind == "error"
        else response(
            document,
            sequence=draw(st.integers(-(2**31), 2**31 - 1)),
            last=draw(st.booleans()),
            gzipped=draw(st.booleans()),
        )
    )
    if kind == "mutated":
        data = bytearray(frame)
        for _ in range(draw(st.integers(1, 4))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] = draw(st.integers(0, 255))
        cut = draw(st.integers(0, len(data)))
        return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)
    return frame


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(server_messages(), max_size=6))
def test_receive_never_raises_and_returns_events(messages: list[str | bytes]) -> None:
    codec = started()
    finals: list[VendorEvent] = []
    for message in messages:
        events = codec.receive(message)
        assert isinstance(events, list)
        assert all(isinstance(event, EVENT_TYPES) for event in events)
        finals.extend(e for e in events if isinstance(e, FinalResult))
        if any(isinstance(e, StreamCompleted) for e in events):
            assert codec.completed
    assert isinstance(codec.connection_closed(None, ""), list)


def test_a_runaway_utterance_is_bounded_and_the_cut_is_marked() -> None:
    codec = started()
    huge = "天" * (3 * RESULT_CHARS)
    [partial] = codec.receive(response(result(utterance(huge, False, 0, 100))))
    [final] = codec.receive(response(result(utterance(huge, True, 0, 200)), sequence=3))
    for event in (partial, final):
        assert isinstance(event, PartialResult | FinalResult)
        assert len(event.text) == RESULT_CHARS and event.text.endswith(TRUNCATED)
