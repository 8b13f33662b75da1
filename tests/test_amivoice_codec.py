"""AmiVoice codec: the exact commands it sends and how it reads every documented server packet."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from asr_daemon.vendors.amivoice.codec import AmiVoiceCodec, quote_value, s_command, split_message
from asr_daemon.vendors.base import (
    PCM16K,
    RESULT_CHARS,
    TRUNCATED,
    FinalResult,
    PartialResult,
    StreamCompleted,
    StreamReady,
    VendorError,
    VendorEvent,
)

KEY = "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"

# Interim and final results from AmiVoice's WebSocket guide (the run on its test.wav), byte for byte: the
# service escapes non-ASCII, so the Japanese words are written here as the escapes that go over the wire.
ADVANCED_MEDIA = "\\u30a2\\u30c9\\u30d0\\u30f3\\u30b9\\u30c8\\u30fb\\u30e1\\u30c7\\u30a3\\u30a2"
HA_TOUTEN_HITOTOKI = "\\u306f\\u3001\\u3072\\u3068\\u3068\\u304d"
DOC_U_FIRST = (
    'U {"results":[{"tokens":[{"written":"' + ADVANCED_MEDIA + '"},{"written":"..."}],'
    '"text":"' + ADVANCED_MEDIA + '..."}],"text":"' + ADVANCED_MEDIA + '..."}'
)
DOC_U_SECOND = (
    'U {"results":[{"tokens":[{"written":"' + ADVANCED_MEDIA + '"},'
    '{"written":"\\u306f"},{"written":"\\u3001"},{"written":"\\u3072\\u3068\\u3068\\u304d"},{"written":"..."}],'
    '"text":"' + ADVANCED_MEDIA + HA_TOUTEN_HITOTOKI + '..."}],'
    '"text":"' + ADVANCED_MEDIA + HA_TOUTEN_HITOTOKI + '..."}'
)
DOC_TEXT = (
    "アドバンスト・メディアは、人と機械との自然なコミュニケーションを実現し、豊かな未来を創造していくことを目指します。"
)
DOC_TEXT_ESCAPED = json.dumps(DOC_TEXT)[1:-1]
# The final result of the same run, tokens abridged to the first two (the packet's shape is unchanged).
DOC_A = (
    'A {"results":[{"tokens":[{"written":"' + ADVANCED_MEDIA + '","confidence":1.00,'
    '"starttime":522,"endtime":1578,'
    '"spoken":"\\u3042\\u3069\\u3070\\u3093\\u3059\\u3068\\u3081\\u3067\\u3043\\u3042"},'
    '{"written":"\\u306f","confidence":1.00,"starttime":1578,"endtime":1866,"spoken":"\\u306f"}],'
    '"confidence":0.998,"starttime":250,"endtime":8794,"tags":[],"rulename":"",'
    '"text":"' + DOC_TEXT_ESCAPED + '"}],'
    '"utteranceid":"20220620/ja_ja-amivoicecloud-16k-user01@01817dce7ba30a301ccf8536-0620_061133",'
    '"text":"' + DOC_TEXT_ESCAPED + '","code":"","message":""}'
)
# A failed recognition as the response-code page shows it.
DOC_A_FAILED = (
    'A {"results":[{"tokens":[],"tags":[],"rulename":"","text":""}],"text":"","code":"-",'
    '"message":"received illegal service authorization"}'
)
# The interim example from the U-event reference.
DOC_U_REFERENCE = (
    'U {"results":[{"tokens":[{"written":"こんにちは"},{"written":"プレート"},{"written":"..."}],'
    '"text":"こんにちはプレート..."}],"text":"こんにちはプレート..."}'
)


def final(text: str, start: int, end: int) -> str:
    result = {"tokens": [], "confidence": 1.0, "starttime": start, "endtime": end, "tags": [], "rulename": ""}
    document = {
        "results": [{**result, "text": text}],
        "utteranceid": "u",
        "text": text,
        "code": "",
        "message": "",
    }
    return "A " + json.dumps(document, ensure_ascii=False)


def ready_codec(parameters: list[tuple[str, str]] | None = None) -> AmiVoiceCodec:
    codec = AmiVoiceCodec("-a-general", KEY, parameters or [("resultUpdatedInterval", "500")])
    codec.start()
    assert codec.receive("s") == [StreamReady()]
    return codec


# -- the s command -------------------------------------------------------------------------------------


def test_s_command_matches_the_guides_examples() -> None:
    # "s 16K -a-general authorization={APPKEY} keepFillerToken=1 resultUpdatedInterval=1000"
    assert (
        s_command(
            "16K",
            "-a-general",
            [("authorization", KEY), ("keepFillerToken", "1"), ("resultUpdatedInterval", "1000")],
        )
        == f"s 16K -a-general authorization={KEY} keepFillerToken=1 resultUpdatedInterval=1000"
    )
    # The sample run's command line.
    assert (
        s_command("LSB16K", "-a-general", [("resultUpdatedInterval", "1000"), ("authorization", KEY)])
        == f"s LSB16K -a-general resultUpdatedInterval=1000 authorization={KEY}"
    )


def test_values_with_spaces_are_quoted_as_documented() -> None:
    properties = "useDiarizer=1 diarizerAlpha=1e-20 diarizerTransitionBias=1e-10"
    assert (
        s_command("16K", "-a-general", [("authorization", KEY), ("segmenterProperties", properties)])
        == f's 16K -a-general authorization={KEY} segmenterProperties="useDiarizer=1 diarizerAlpha=1e-20 '
        'diarizerTransitionBias=1e-10"'
    )


def test_embedded_quotes_are_doubled() -> None:
    assert quote_value('say "hi" はい') == '"say ""hi"" はい"'
    # A quote alone also needs quoting, or the server would read it as an opening quote.
    assert quote_value('a"b') == '"a""b"'
    assert quote_value("") == '""'
    assert quote_value("AmiVoice") == "AmiVoice"


def test_start_sends_lsb16k_with_the_key_first_once() -> None:
    codec = AmiVoiceCodec(
        "-a-medgeneral",
        KEY,
        [("profileWords", "AMI あみ|AmiVoice あみぼいす"), ("resultUpdatedInterval", "500")],
    )
    assert not codec.ready
    assert codec.start() == [
        f's LSB16K -a-medgeneral authorization={KEY} profileWords="AMI あみ|AmiVoice あみぼいす" '
        "resultUpdatedInterval=500"
    ]
    assert codec.start() == []
    assert not codec.ready


def test_ready_only_on_the_bare_s_reply() -> None:
    codec = AmiVoiceCodec("-a-general", KEY)
    codec.start()
    assert codec.receive("G") == []
    assert not codec.ready
    assert codec.receive("s\n") == [StreamReady()]
    assert codec.ready
    # A repeated reply does not start the stream twice.
    assert codec.receive("s") == []


# -- audio and end ---------------------------------------------------------------------------------------


def test_audio_is_a_binary_p_packet_and_end_a_text_e() -> None:
    codec = ready_codec()
    pcm = bytes(range(256)) * 3
    sent = codec.send_audio(pcm)
    assert sent == [b"p" + pcm]
    assert isinstance(sent[0], bytes)
    assert codec.send_audio(b"") == []
    assert codec.audio_format == PCM16K
    assert codec.end() == ["e"]
    assert isinstance(codec.end(), list) and codec.ended
    assert codec.end() == []
    # No audio after the end of the session.
    assert codec.send_audio(pcm) == []


# -- results ---------------------------------------------------------------------------------------------


def test_the_guides_sample_run_becomes_partials_one_final_and_completion() -> None:
    codec = ready_codec()
    events: list[VendorEvent] = []
    for message in ("G", "S 250", "C", DOC_U_FIRST, DOC_U_SECOND, "E 8800", DOC_A, "G"):
        events.extend(codec.receive(message))
    codec.end()
    events.extend(codec.receive("e"))
    assert events == [
        PartialResult("アドバンスト・メディア"),
        PartialResult("アドバンスト・メディアは、ひととき"),
        FinalResult(DOC_TEXT, 250, 8794),
        StreamCompleted(),
    ]
    assert codec.completed


def test_interim_dummy_token_is_dropped() -> None:
    codec = ready_codec()
    assert codec.receive(DOC_U_REFERENCE) == [PartialResult("こんにちはプレート")]


def test_several_utterances_give_one_final_each_in_order() -> None:
    codec = ready_codec()
    events = [
        *codec.receive("S 300"),
        *codec.receive(final("今日は晴れです。", 300, 1800)),
        *codec.receive("S 2900"),
        *codec.receive("C"),
        *codec.receive(final("電気をつけて。", 2900, 4100) + "\r\n"),
    ]
    assert events == [FinalResult("今日は晴れです。", 300, 1800), FinalResult("電気をつけて。", 2900, 4100)]


def test_results_may_arrive_between_our_e_and_the_vendors_e() -> None:
    codec = ready_codec()
    assert codec.end() == ["e"]
    assert codec.receive(final("はい", 100, 600)) == [FinalResult("はい", 100, 600)]
    assert codec.receive("e") == [StreamCompleted()]
    assert codec.receive(final("late", 0, 1)) == []


def test_a_final_without_text_is_no_segment() -> None:
    codec = ready_codec()
    assert codec.receive(final("", 0, 100)) == []


def test_missing_or_bad_times_become_none() -> None:
    codec = ready_codec()
    document = {"results": [{"starttime": "12", "endtime": True, "text": "x"}], "text": "はい", "code": ""}
    assert codec.receive("A " + json.dumps(document)) == [FinalResult("はい", None, None)]
    assert codec.receive('A {"text":"いいえ"}') == [FinalResult("いいえ", None, None)]


def test_packets_without_meaning_for_a_transcript_are_tolerated() -> None:
    codec = ready_codec()
    for message in (
        "G",
        "G some info",
        "Q notice",
        'R {"text":"x"}',
        "S 250",
        "E 900",
        "C",
        "p",
        "",
        "\n",
        "Zzz",
    ):
        assert codec.receive(message) == [], message


# -- errors ----------------------------------------------------------------------------------------------


def test_bad_key_is_fatal_and_names_the_vendors_message() -> None:
    codec = AmiVoiceCodec("-a-general", "wrong")
    codec.start()
    [error] = codec.receive("s received illegal service authorization")
    assert isinstance(error, VendorError)
    assert error.fatal
    assert "received illegal service authorization" in error.message
    assert not codec.ready


def test_start_errors_are_fatal_except_the_server_errors_the_vendor_says_to_retry() -> None:
    codec = AmiVoiceCodec("-a-general", KEY)
    [error] = codec.receive("s received unsupported audio format")
    assert isinstance(error, VendorError) and error.fatal
    codec = AmiVoiceCodec("-a-general", KEY)
    [error] = codec.receive("s can't connect to recognizer server")
    assert isinstance(error, VendorError) and not error.fatal
    assert "can't connect to recognizer server" in error.message


def test_audio_errors() -> None:
    [error] = ready_codec().receive("p can't feed audio data to recognizer server")
    assert isinstance(error, VendorError) and not error.fatal
    assert "can't feed audio data to recognizer server" in error.message
    [error] = ready_codec().receive("p received unsupported audio format")
    assert isinstance(error, VendorError) and error.fatal


def test_unsolicited_e_is_the_idle_cut_not_completion() -> None:
    codec = ready_codec()
    [error] = codec.receive("e timeout occurred")
    assert isinstance(error, VendorError) and not error.fatal
    assert "timeout occurred" in error.message
    assert not codec.completed
    # A bare e before ours is just as unexpected.
    [error] = ready_codec().receive("e")
    assert isinstance(error, VendorError)


def test_e_error_after_our_e_is_a_transient_error() -> None:
    codec = ready_codec()
    codec.end()
    [error] = codec.receive("e timeout occurred while recognizing audio data from client")
    assert isinstance(error, VendorError) and not error.fatal
    assert "timeout occurred while recognizing audio data from client" in error.message
    assert not codec.completed


def test_failed_recognition_result_carries_code_and_message() -> None:
    [error] = ready_codec().receive(DOC_A_FAILED)
    assert error == VendorError("AmiVoice recognition failed: received illegal service authorization", "-", fatal=True)
    [error] = ready_codec().receive('A {"text":"","code":"!","message":"failed to connect to recognizer server"}')
    assert isinstance(error, VendorError) and error.code == "!" and not error.fatal


def test_broken_final_is_an_error_but_broken_interim_is_ignored() -> None:
    codec = ready_codec()
    [error] = codec.receive("A {not json")
    assert isinstance(error, VendorError)
    assert codec.receive("A [1, 2]") != []
    assert codec.receive("U {not json") == []
    assert codec.receive('U {"results": 5, "text": 7}') == []


def test_binary_from_the_vendor_is_an_error() -> None:
    [error] = ready_codec().receive(b"A {}")
    assert isinstance(error, VendorError)


def test_close_before_completion_is_an_error_after_it_is_not() -> None:
    codec = ready_codec()
    [error] = codec.connection_closed(1006, "")
    assert isinstance(error, VendorError)
    codec.end()
    codec.receive("e")
    assert codec.connection_closed(1000, "") == []


def test_split_message() -> None:
    assert split_message("A {}\n") == ("A", "{}")
    assert split_message("s") == ("s", "")
    assert split_message("S 250\r\n") == ("S", "250")
    assert split_message("started") == ("", "started")
    assert split_message("") == ("", "")


# -- fuzz ------------------------------------------------------------------------------------------------

VALID = [
    "s",
    "s received illegal service authorization",
    "p can't feed audio data to recognizer server",
    "e",
    "e timeout occurred",
    "S 250",
    "E 8800",
    "C",
    "G",
    DOC_U_FIRST,
    DOC_U_REFERENCE,
    DOC_A,
    DOC_A_FAILED,
    final("はい", 1, 2),
]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "truncate"]))
        if action == "insert":
            text = text[:position] + draw(st.text(max_size=3)) + text[position:]
        elif action == "delete":
            text = text[:position] + text[position + 1 :]
        else:
            text = text[:position]
    return text


def json_values() -> st.SearchStrategy[object]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=6,
    )


@st.composite
def result_packets(draw: st.DrawFn) -> str:
    tag = draw(st.sampled_from(["A", "U"]))
    keys = st.sampled_from(["results", "text", "code", "message", "tokens", "starttime", "endtime", "written"])
    document = draw(st.dictionaries(keys, json_values(), max_size=5))
    return f"{tag} {json.dumps(document)}"


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(
        mutated() | result_packets() | st.text(max_size=40) | st.binary(max_size=40), min_size=1, max_size=6
    ),
    ended=st.booleans(),
)
def test_receive_never_raises_and_returns_events(messages: list[str | bytes], ended: bool) -> None:
    codec = AmiVoiceCodec("-a-general", KEY)
    codec.start()
    if ended:
        codec.end()
    for message in messages:
        events = codec.receive(message)
        assert isinstance(events, list)
        for event in events:
            assert isinstance(event, StreamReady | PartialResult | FinalResult | StreamCompleted | VendorError)
        if any(isinstance(event, StreamCompleted) for event in events):
            assert codec.completed and ended


def test_what_the_vendor_says_is_bounded_and_the_cut_is_marked() -> None:
    huge = "x" * 1_000_000
    for message in (f"s received {huge}", f"p received {huge}", f"e {huge}",
                    "A " + json.dumps({"code": huge, "message": huge})):
        [error] = ready_codec().receive(message)
        assert isinstance(error, VendorError)
        assert len(error.message) < 400 and error.message.endswith("…")
        assert error.code is None or len(error.code) <= 16
    # Transcripts too: a final or partial past RESULT_CHARS is cut and ends with the marker.
    [result] = ready_codec().receive(final(huge, 0, 10))
    assert isinstance(result, FinalResult)
    assert len(result.text) == RESULT_CHARS and result.text.endswith(TRUNCATED)
    assert result.text.startswith("x" * 1000)
    [partial] = ready_codec().receive("U " + json.dumps({"text": huge}))
    assert isinstance(partial, PartialResult) and len(partial.text) == RESULT_CHARS
    # Text within the bound is kept as it is.
    [result] = ready_codec().receive(final("y" * RESULT_CHARS, 0, 10))
    assert isinstance(result, FinalResult) and result.text == "y" * RESULT_CHARS
