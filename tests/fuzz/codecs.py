"""Vendor messages for fuzzing the codecs: arbitrary bytes and text, and JSON (or SAUC frames) shaped like
what each vendor sends, with hostile values and broken framing mixed in."""

from __future__ import annotations

import functools
import json
import struct
import zlib
from typing import Any

from hypothesis import strategies as st

from asr_daemon.vendors.sauc.codec import (
    COMPRESSION_GZIP,
    COMPRESSION_NONE,
    FLAG_EVENT,
    FLAG_LAST,
    FLAG_SEQUENCE,
    SUCCESS_CODE,
    MessageType,
)

# Numbers that break naive parsing: huge, negative, non-finite, past int(str)'s 4300-digit limit.
awkward_numbers = st.sampled_from(
    [0, -1, 1, 2**31, -(2**31), 2**63, 10**30, 1e308, -0.0, 0.5, float("inf"), float("-inf"), float("nan")]
)
awkward_text = (
    st.sampled_from(
        [
            "",
            " ",
            "\n",
            "...",
            "\x00",
            "\ud800",
            "é" * 3,
            "1.5s",
            "-1s",
            "true",
            "False",
            "authorization failed",
            "can't open",
            "received illegal",
        ]
    )
    | st.sampled_from([40, 3000, 5000]).map(lambda n: "9" * n + "s")
    | st.sampled_from([300, 3000]).map("x".__mul__)
)


# Two MiB of "[" in 2 KiB: inflates past SAUC's payload limit (and would nest past the recursion limit).
_GZIP_BOMB = zlib.compress(b"[" * (2 << 20), wbits=16 + zlib.MAX_WBITS)


def json_shaped(keys: list[str], words: list[str]) -> st.SearchStrategy[Any]:
    """JSON values whose object keys are mostly the vendor's own (so parsing gets past the first check)."""
    return _json_shaped(tuple(keys), tuple(words))


@functools.cache  # one strategy object per vendor: building it again for every draw is most of the cost
def _json_shaped(keys: tuple[str, ...], words: tuple[str, ...]) -> st.SearchStrategy[Any]:
    leaves = (
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.floats(allow_nan=True, allow_infinity=True)
        | awkward_numbers
        | st.text(max_size=12)
        | awkward_text
        | st.sampled_from(words)
    )
    key = st.sampled_from(keys) | st.text(max_size=6)
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(key, inner, max_size=3),
        max_leaves=6,
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str | bytes:
    """``text`` as sent, or broken: truncated, spliced, nested deep, sent as a binary frame, not UTF-8."""
    how = draw(st.sampled_from(["as-is", "as-is", "as-is", "truncate", "splice", "deep", "binary", "bad-utf8"]))
    if how == "truncate":
        return text[: draw(st.integers(0, max(len(text) - 1, 0)))]
    if how == "splice":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.text(max_size=8) | st.sampled_from(["{", "}", "]", '"', "\\", "\n"])) + text[at:]
    if how == "deep":
        depth = draw(st.sampled_from([50, 999, 5000, 100_000]))
        inner = "[" * depth + "]" * depth if draw(st.booleans()) else '{"a":' * depth + "1" + "}" * depth
        return text.replace("null", inner, 1) if "null" in text else inner
    if how == "binary":
        return text.encode("utf-8", "surrogatepass")
    if how == "bad-utf8":
        return text.encode("utf-8", "surrogatepass") + b"\xff\xfe\x80"
    return text


def noise() -> st.SearchStrategy[str | bytes]:
    return st.text(max_size=64) | st.binary(max_size=64) | awkward_text


# -- per vendor ---------------------------------------------------------------------------------------------

IAPP_KEYS = ["type", "state", "text", "message", "error", "msg", "desc", "detail", "reason", "code", "status",
             "status_code", "data"]  # fmt: skip
IAPP_WORDS = ["realtime", "Sentence", "NewSentence", "New sentence", "new_sentence", "Confirm Close Connection",
              "401", "403"]  # fmt: skip


@st.composite
def iapp_messages(draw: st.DrawFn) -> str | bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(noise())
    document = draw(st.fixed_dictionaries({}, optional={k: json_shaped(IAPP_KEYS, IAPP_WORDS) for k in IAPP_KEYS}))
    if draw(st.booleans()):
        document["state"] = draw(st.sampled_from(IAPP_WORDS))
        document["text"] = draw(st.text(max_size=20) | st.sampled_from(IAPP_WORDS))
    return draw(mutated(_dumps(document)))


YATING_KEYS = ["status", "message_type", "detail", "code", "pipe", "asr_sentence", "asr_final", "asr_eof",
               "asr_state", "asr_begin_time", "asr_end_time"]  # fmt: skip
YATING_WORDS = ["ok", "error", "session_started", "utterance_begin", "utterance_end", "first_chunk_received",
                "invalid token", "key denied"]  # fmt: skip


@st.composite
def yating_messages(draw: st.DrawFn) -> str | bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(noise())
    value = json_shaped(YATING_KEYS, YATING_WORDS)
    pipe = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "asr_sentence": st.text(max_size=20) | value,
                "asr_final": st.booleans() | value,
                "asr_eof": st.booleans() | value,
                "asr_state": st.sampled_from(YATING_WORDS),
                "asr_begin_time": awkward_numbers | value,
                "asr_end_time": awkward_numbers | value,
            },
        )
    )
    document = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "status": st.sampled_from(YATING_WORDS) | value,
                "message_type": st.sampled_from(YATING_WORDS) | value,
                "detail": st.text(max_size=20) | awkward_text | value,
                "code": value,
                "pipe": st.just(pipe) | value,
            },
        )
    )
    return draw(mutated(_dumps(document)))


AMIVOICE_KEYS = ["text", "code", "message", "results", "tokens", "written", "spoken", "starttime", "endtime",
                 "confidence", "utteranceid"]  # fmt: skip
AMIVOICE_WORDS = ["...", "o", "-", "received illegal service authorization", "can't connect", "authorization"]


@st.composite
def amivoice_messages(draw: st.DrawFn) -> str | bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(noise())
    tag = draw(st.sampled_from(["s", "p", "e", "U", "A", "S", "E", "C", "G", "Q", "R", "", "x", "AA"]))
    value = json_shaped(AMIVOICE_KEYS, AMIVOICE_WORDS)
    if tag in ("U", "A", "R"):
        result = draw(
            st.fixed_dictionaries({}, optional={k: value for k in ("text", "tokens", "starttime", "endtime")})
        )
        body = _dumps(
            draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "text": st.text(max_size=20) | value,
                        "code": st.sampled_from(["", "-", "o", "b"]) | value,
                        "message": st.sampled_from(AMIVOICE_WORDS) | value,
                        "results": st.just([result]) | value,
                    },
                )
            )
        )
    else:
        body = draw(st.sampled_from(AMIVOICE_WORDS) | st.text(max_size=30) | awkward_text)
    separator = draw(st.sampled_from([" ", " ", "", "\t"]))
    ending = draw(st.sampled_from(["", "", "\n", "\r\n"]))
    return draw(mutated(f"{tag}{separator}{body}{ending}" if body else f"{tag}{ending}"))


TIRO_KEYS = ["result", "results", "error", "alternatives", "transcript", "isFinal", "is_final", "words",
             "startTime", "endTime", "start_time", "end_time", "seconds", "nanos", "code", "grpc_code", "message",
             "details", "fieldViolations", "field_violations", "field", "description"]  # fmt: skip
TIRO_WORDS = ["true", "false", "1.020s", "0s", "-1s", "INVALID_ARGUMENT", "UNAUTHENTICATED", "OK", "3", "16",
              "12345678901234567890"]  # fmt: skip


@st.composite
def tiro_messages(draw: st.DrawFn) -> str | bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(noise())
    value = json_shaped(TIRO_KEYS, TIRO_WORDS)
    duration = (
        st.sampled_from(TIRO_WORDS)
        | awkward_numbers
        | st.fixed_dictionaries({}, optional={"seconds": value | awkward_numbers, "nanos": value | awkward_numbers})
        | value
    )
    word = st.fixed_dictionaries(
        {}, optional={"startTime": duration, "endTime": duration, "start_time": duration, "end_time": duration}
    )
    alternative = st.fixed_dictionaries(
        {}, optional={"transcript": st.text(max_size=20) | value, "words": st.lists(word, max_size=3) | value}
    )
    result = st.fixed_dictionaries(
        {},
        optional={
            "alternatives": st.lists(alternative, max_size=2) | value,
            "isFinal": st.booleans() | st.sampled_from(TIRO_WORDS) | value,
            "is_final": st.booleans() | value,
        },
    )
    violation = st.fixed_dictionaries({}, optional={"field": value, "description": value})
    status = st.fixed_dictionaries(
        {},
        optional={
            "code": st.sampled_from(TIRO_WORDS) | st.integers(-2, 20) | value,
            "grpc_code": value,
            "message": st.text(max_size=20) | awkward_text | value,
            "details": st.lists(st.fixed_dictionaries({"fieldViolations": st.lists(violation, max_size=3)}), max_size=2)
            | value,
        },
    )
    response = st.fixed_dictionaries({}, optional={"results": st.lists(result, max_size=3) | value, "error": status})
    document = draw(
        st.fixed_dictionaries({}, optional={"result": response | value, "error": status | value, "results": value})
    )
    text = _dumps(document)
    if draw(st.integers(0, 5)) == 0:  # newline-delimited documents in one frame
        text += "\n" + _dumps(draw(value))
    return draw(mutated(text))


SAUC_KEYS = ["result", "text", "utterances", "definite", "start_time", "end_time", "error", "message", "msg",
             "additions", "words"]  # fmt: skip
SAUC_WORDS = ["", "好", "invalid token", "auth failed", "quota"]


@st.composite
def sauc_payload(draw: st.DrawFn) -> bytes:
    value = json_shaped(SAUC_KEYS, SAUC_WORDS)
    utterance = st.fixed_dictionaries(
        {},
        optional={
            "text": st.text(max_size=12) | value,
            "definite": st.booleans() | value,
            "start_time": awkward_numbers | st.integers(-1, 10**6) | value,
            "end_time": awkward_numbers | st.integers(-1, 10**6) | value,
        },
    )
    result = st.fixed_dictionaries(
        {}, optional={"text": st.text(max_size=20) | value, "utterances": st.lists(utterance, max_size=4) | value}
    )
    kind = draw(st.sampled_from(["result", "result", "list", "error", "any", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "any":
        document: Any = draw(value)
    elif kind == "error":
        document = draw(st.fixed_dictionaries({}, optional={k: value for k in ("error", "message", "msg")}))
    else:
        inner = draw(result)
        document = {"result": [inner, draw(value)] if kind == "list" else inner}
    text = draw(mutated(_dumps(document)))
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")


@st.composite
def sauc_messages(draw: st.DrawFn) -> str | bytes:
    """Binary frames: header, optional sequence/event/error code, payload size and payload (gzip or not)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(noise())
    message_type = draw(
        st.sampled_from([MessageType.FULL_SERVER_RESPONSE, MessageType.ERROR, MessageType.SERVER_ACK])
        | st.integers(0, 15)
    )
    flags = draw(
        st.sampled_from([FLAG_SEQUENCE, FLAG_SEQUENCE | FLAG_LAST, FLAG_LAST, 0, FLAG_EVENT]) | st.integers(0, 15)
    )
    compression = draw(st.sampled_from([COMPRESSION_GZIP, COMPRESSION_NONE]) | st.integers(0, 15))
    version_words = draw(st.sampled_from([0x11, 0x11, 0x11, 0x12, 0x10, 0x21]) | st.integers(0, 255))
    frame = bytes((version_words, (message_type << 4) | flags, (1 << 4) | compression, 0))
    frame += bytes(4 * max((version_words & 0x0F) - 1, 0))  # header extension words
    if message_type == MessageType.ERROR:
        code = draw(
            st.sampled_from([SUCCESS_CODE, 45000001, 45000151, 55000031, 0, 2**32 - 1]) | st.integers(0, 2**32 - 1)
        )
        frame += struct.pack(">I", code)
    else:
        if flags & FLAG_SEQUENCE:
            frame += struct.pack(">i", draw(st.integers(-(2**31), 2**31 - 1)))
        if flags & FLAG_EVENT:
            frame += struct.pack(">i", draw(st.integers(-(2**31), 2**31 - 1)))
    payload = draw(sauc_payload())
    how = draw(st.sampled_from(["gzip", "plain", "gzip-truncated", "gzip-bomb", "none"]))
    if how == "gzip":
        payload = zlib.compress(payload, wbits=16 + zlib.MAX_WBITS)
    elif how == "gzip-truncated":
        payload = zlib.compress(payload, wbits=16 + zlib.MAX_WBITS)[: draw(st.integers(0, 20))]
    elif how == "gzip-bomb":
        payload = _GZIP_BOMB
    if how != "none":
        size = draw(st.sampled_from([len(payload)] * 4 + [len(payload) + 1, max(len(payload) - 1, 0), 2**32 - 1]))
        frame += struct.pack(">I", size) + payload
    cut = draw(st.sampled_from([None] * 6 + [0, 3, 5, 9]))
    return frame if cut is None else frame[:cut]
