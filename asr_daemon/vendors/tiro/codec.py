"""Tiro's wire format: Google-style ``StreamingRecognize`` as JSON over WebSocket (one object per text frame).

Outgoing: a config-only first message, then ``{"audioContent": <base64>}`` per chunk, then the end marker
``{"audioContent":""}`` (the server treats an empty audio message as the end of the stream). Incoming, in
grpc-gateway's streaming envelope: ``{"result": StreamingRecognizeResponse}`` or
``{"error": google.rpc.Status}``.
The server ends a stream by closing the socket, usually without a close frame, so a close after the end marker
is the completion signal.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import ClassVar

from ...redact import redact
from ..base import (
    FinalResult,
    Outgoing,
    PartialResult,
    StreamCodec,
    StreamCompleted,
    VendorError,
    VendorEvent,
    bounded_result,
)

# google.rpc.Code numbers and names (grpc-gateway sends the number; names are accepted too).
GRPC_CODES: dict[int, str] = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
_CODE_NUMBERS = {name: number for number, name in GRPC_CODES.items()}

# Codes a retry cannot fix: a rejected configuration (validation errors are code 3), a bad or missing token,
# a language without a model. Everything else (INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, ...) may pass.
FATAL_CODES = frozenset({3, 5, 7, 9, 11, 12, 16})

# Close codes that mean the server side failed, even after our end marker (the last final may be missing).
_FAILED_CLOSE_CODES = frozenset({1011, 1012, 1013, 1014})

# The most of a status message (with its field violations) an error keeps: enough for every violation the
# config can cause, bounded because it reaches the client's error event.
MAX_STATUS_TEXT = 600

# protojson Duration: "1.020s", "2s", "-0.5s".
_DURATION = re.compile(r"^\s*(-?)(\d+)(?:\.(\d{1,9}))?s\s*$")

END_MARKER = '{"audioContent":""}'
_AUDIO_PREFIX, _AUDIO_SUFFIX = END_MARKER[:-2], END_MARKER[-2:]


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class TiroCodec(StreamCodec):
    """One Tiro recognition stream."""

    # 100 ms of 16 kHz s16le mono per message (about 4.3 kB once base64-encoded).
    chunk_bytes: ClassVar[int] = 3200

    def __init__(
        self,
        language_code: str = "is-IS",
        *,
        interim_results: bool = True,
        punctuation: bool = True,
        word_time_offsets: bool = True,
    ) -> None:
        super().__init__()
        self.language_code = language_code
        self.interim_results = interim_results
        self.punctuation = punctuation
        self.word_time_offsets = word_time_offsets
        self._failed = False

    # -- outgoing --------------------------------------------------------------------------------------

    def start(self) -> list[Outgoing]:
        # The server answers nothing to the config, so audio may follow at once.
        self.ready = True
        config = {
            "streamingConfig": {
                "config": {
                    "encoding": "LINEAR16",
                    "sampleRateHertz": self.audio_format.rate,
                    "languageCode": self.language_code,
                    "maxAlternatives": 1,
                    "enableWordTimeOffsets": self.word_time_offsets,
                    "enableAutomaticPunctuation": self.punctuation,
                },
                "singleUtterance": False,
                "interimResults": self.interim_results,
            }
        }
        return [_dumps(config)]

    def send_audio(self, pcm: bytes) -> list[Outgoing]:
        # An empty audioContent is the end marker, so an empty chunk must not become a message.
        if not pcm or self.ended:
            return []
        # Base64 needs no JSON escaping: the message is built directly, the same text ``_dumps`` would make
        # without running the JSON encoder over ~4 kB ten times a second.
        return [_AUDIO_PREFIX + base64.b64encode(pcm).decode("ascii") + _AUDIO_SUFFIX]

    def end_of_stream(self) -> list[Outgoing]:
        return [END_MARKER]

    # -- incoming --------------------------------------------------------------------------------------

    def receive(self, message: str | bytes) -> list[VendorEvent]:
        if self.completed:
            return []
        try:
            text = message.decode("utf-8") if isinstance(message, bytes) else message
        except UnicodeDecodeError:
            return self._protocol_error("a binary message that is not UTF-8 text")
        events: list[VendorEvent] = []
        for document in _documents(text):
            if document is None:
                return events + self._protocol_error(f"a message that is not JSON: {_excerpt(text)}")
            events.extend(self._document(document))
        return events

    def connection_closed(self, code: int | None, reason: str) -> list[VendorEvent]:
        if self.completed or self._failed:
            # A stream the vendor failed has been reported already; its close adds nothing.
            return []
        if self.ended and code not in _FAILED_CLOSE_CODES:
            # The server closes (usually without a close frame) once it has sent the last final.
            self.completed = True
            return [StreamCompleted()]
        self._failed = True
        shown = "no close frame" if code is None else f"code {code}"
        detail = f": {redact(reason)}" if reason else ""
        if self.ended:
            return [VendorError(f"vendor closed the connection with an error ({shown}{detail})")]
        return [VendorError(f"vendor closed the connection before the end of the audio ({shown}{detail})")]

    def _document(self, document: dict[str, object]) -> list[VendorEvent]:
        error = document.get("error")
        if error is not None and not (isinstance(error, dict) and _status_code(error) == 0):
            return self._status_error(error)
        result = document.get("result")
        if result is None and "results" in document:
            # A bare StreamingRecognizeResponse (a proxy without grpc-gateway's envelope).
            result = document
        if not isinstance(result, dict):
            # Unknown envelope fields are ignored, as the vendor's own decoder would.
            return []
        status = result.get("error")
        if isinstance(status, dict) and _status_code(status) not in (None, 0):
            return self._status_error(status)
        results = result.get("results")
        if not isinstance(results, list):
            return []
        events: list[VendorEvent] = []
        for item in results:
            if isinstance(item, dict):
                event = _result_event(item)
                if event is not None:
                    events.append(event)
        return events

    def _status_error(self, status: object) -> list[VendorEvent]:
        self._failed = True
        if not isinstance(status, dict):
            return [VendorError(f"vendor error: {_excerpt(str(status))}")]
        number = _status_code(status)
        name = GRPC_CODES.get(number, "") if number is not None else ""
        message = status.get("message")
        text = message.strip() if isinstance(message, str) and message.strip() else name or "unknown error"
        violations = list(_field_violations(status.get("details")))
        if violations:
            text = f"{text}: {'; '.join(violations)}"
        code = name or (str(number) if number is not None else None)
        fatal = number in FATAL_CODES
        return [VendorError(_excerpt(text, MAX_STATUS_TEXT), code, fatal=fatal)]

    def _protocol_error(self, what: str) -> list[VendorEvent]:
        self._failed = True
        return [VendorError(f"vendor sent {what}")]


# ---------------------------------------------------------------------------------------------------------
# Parsing helpers (tolerant: a missing or odd field becomes "absent", never an exception)


def _documents(text: str) -> Iterator[dict[str, object] | None]:
    """The JSON objects in a frame: normally one; newline-delimited ones are split. None marks garbage."""
    try:
        whole = json.loads(text)
    except (ValueError, RecursionError):
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) < 2:
            yield None
            return
        for line in lines:
            try:
                part = json.loads(line)
            except (ValueError, RecursionError):
                yield None
                return
            yield part if isinstance(part, dict) else None
        return
    yield whole if isinstance(whole, dict) else None


def _result_event(result: dict[str, object]) -> VendorEvent | None:
    alternatives = result.get("alternatives")
    best = alternatives[0] if isinstance(alternatives, list) and alternatives else None
    if not isinstance(best, dict):
        return None
    transcript = best.get("transcript")
    text = bounded_result(transcript.strip()) if isinstance(transcript, str) else ""
    if not _truthy(result.get("isFinal", result.get("is_final"))):
        return PartialResult(text)
    start_ms, end_ms = _word_span(best.get("words"))
    return FinalResult(text, start_ms, end_ms)


def _word_span(words: object) -> tuple[int | None, int | None]:
    """Start of the first word and end of the last, in ms from the start of the stream."""
    if not isinstance(words, list) or not words:
        return None, None
    first, last = words[0], words[-1]
    start = _duration_ms(first.get("startTime", first.get("start_time"))) if isinstance(first, dict) else None
    end = _duration_ms(last.get("endTime", last.get("end_time"))) if isinstance(last, dict) else None
    if start is not None and end is not None and end < start:
        return None, None
    return start, end


def _duration_ms(value: object) -> int | None:
    """protojson Duration ("1.020s"); also tolerates seconds as a number and {"seconds", "nanos"}."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            return None
        sign, seconds, fraction = match.groups()
        if sign:
            return None
        return int(seconds) * 1000 + int((fraction or "0").ljust(9, "0")[:3])
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if not 0 <= value < 1e9:  # also rejects NaN
            return None
        return round(value * 1000)
    if isinstance(value, dict):
        seconds = _integer(value.get("seconds", 0))
        nanos = _integer(value.get("nanos", 0))
        if seconds is None or nanos is None or seconds < 0 or nanos < 0 or seconds >= 10**9:
            return None
        return seconds * 1000 + nanos // 1_000_000
    return None


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,18}", value.strip()):
        return int(value)
    return None


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return value is True


def _status_code(status: dict[str, object]) -> int | None:
    """google.rpc.Status code (grpc-gateway v1 called it ``grpc_code``); a number, quoted number or name."""
    value = status.get("code", status.get("grpc_code"))
    if isinstance(value, str) and value.strip().upper() in _CODE_NUMBERS:
        return _CODE_NUMBERS[value.strip().upper()]
    return _integer(value)


def _field_violations(details: object) -> Iterator[str]:
    """``field: description`` for each google.rpc.BadRequest field violation in a Status's details."""
    if not isinstance(details, list):
        return
    for detail in details:
        if not isinstance(detail, dict):
            continue
        violations = detail.get("fieldViolations", detail.get("field_violations"))
        if not isinstance(violations, list):
            continue
        for violation in violations:
            if not isinstance(violation, dict):
                continue
            field = violation.get("field")
            description = violation.get("description")
            description = description.strip() if isinstance(description, str) else ""
            if isinstance(field, str) and field:
                yield f"{field}: {description}" if description else field
            elif description:
                yield description


def _excerpt(text: str, limit: int = 120) -> str:
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
