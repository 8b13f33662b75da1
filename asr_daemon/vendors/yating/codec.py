"""Yating streaming ASR wire protocol, sans I/O.

The server greets with ``{"status":"ok","message_type":"session_started"}`` (older documents show a bare
``{"status":"ok"}``); audio sent before that may cost the connection, so the codec is ready only then. Audio
is raw 16 kHz s16le mono in binary frames; one empty binary frame ends the stream. Results are JSON text
``{"pipe": {...}}``: ``asr_sentence`` without ``asr_final`` is the cumulative hypothesis of the open sentence,
``asr_final: true`` closes it (times in seconds), ``asr_eof: true`` says every result has been delivered and
``asr_state`` marks VAD/progress only. Errors are ``{"status":"error","detail":"..."}``, after which the
server closes about three seconds later.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, ClassVar

from ..base import (
    FinalResult,
    Outgoing,
    PartialResult,
    PcmFrameCodec,
    StreamCompleted,
    StreamReady,
    VendorError,
    VendorEvent,
    bounded_result,
    json_message,
    quote_vendor_text,
)

END_OF_STREAM = b""
SESSION_STARTED = "session_started"

# A rejected token/key is a credentials or configuration problem that a new connection will not fix. The
# vendor's exact wording is undocumented, so this matches the words such a complaint must contain.
_CREDENTIAL_WORDS = re.compile(r"token|auth|\bkey\b|api[ _-]?key|credential|permission|forbidden|denied", re.IGNORECASE)


class YatingCodec(PcmFrameCodec):
    """One Yating stream over a WebSocket whose URL already carries the one-time token."""

    end_message: ClassVar[Outgoing] = END_OF_STREAM

    # 2000 bytes (1/16 s): the chunk size the vendor's documentation asks for.
    chunk_bytes: ClassVar[int] = 2000
    # Yating expects audio at about real time.
    max_send_speed: ClassVar[float | None] = 2.0

    def __init__(self) -> None:
        super().__init__()
        # Last hypothesis sent for the open sentence ('' when none), to skip repeats (the vendor sends them).
        self._partial = ""
        # The vendor reported an error; the close that follows it says nothing new.
        self._failed = False

    def start(self) -> list[Outgoing]:
        # The token is in the URL; the server speaks first.
        return []

    def receive(self, message: str | bytes) -> list[VendorEvent]:
        if self.completed:
            return []
        document = json_message("Yating", message)
        if isinstance(document, VendorError):
            return [document]
        events: list[VendorEvent] = []
        if "status" in document:
            events.extend(self._status(document))
        pipe = document.get("pipe")
        if isinstance(pipe, dict):
            events.extend(self._pipe(pipe))
        elif "status" not in document:
            return [VendorError(f"Yating sent an unexpected message: {quote_vendor_text(str(message))}")]
        return events

    def connection_closed(self, code: int | None, reason: str) -> list[VendorEvent]:
        if self._failed:
            return []
        return super().connection_closed(code, reason)

    # -- message kinds ------------------------------------------------------------------------------------

    def _status(self, document: dict[str, Any]) -> list[VendorEvent]:
        status = document.get("status")
        if status == "ok":
            kind = document.get("message_type")
            # The greeting; ``message_type`` is absent in the vendor's older documentation.
            if not self.ready and kind in (None, SESSION_STARTED):
                self.ready = True
                return [StreamReady()]
            return []
        # Anything but "ok" is an error: the vendor's own SDK treats it as fatal to the session.
        detail = document.get("detail")
        said = (
            quote_vendor_text(detail)
            if isinstance(detail, str) and detail.strip()
            else quote_vendor_text(json.dumps(document))
        )
        self._failed = True
        # Only the start of a stream checks the token; later errors are the pipeline's, and a new stream (with
        # a new token) may well succeed.
        fatal = not self.ready and bool(_CREDENTIAL_WORDS.search(said))
        return [VendorError(f"Yating error: {said}", _code(document.get("code")), fatal=fatal)]

    def _pipe(self, pipe: dict[str, Any]) -> list[VendorEvent]:
        events: list[VendorEvent] = []
        sentence = pipe.get("asr_sentence")
        if pipe.get("asr_final") is True:
            text = bounded_result(sentence.strip()) if isinstance(sentence, str) else ""
            self._partial = ""
            events.append(FinalResult(text, _ms(pipe.get("asr_begin_time")), _ms(pipe.get("asr_end_time"))))
        elif isinstance(sentence, str) and sentence != self._partial:
            self._partial = sentence
            events.append(PartialResult(bounded_result(sentence)))
        # ``asr_state`` (first_chunk_received, utterance_begin/end) only marks progress: nothing to report.
        if pipe.get("asr_eof") is True:
            self.completed = True
            events.append(StreamCompleted())
        return events


def _ms(seconds: object) -> int | None:
    """Vendor seconds (float) as whole milliseconds; None when missing or not a sane time."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return None
    if not math.isfinite(seconds) or seconds < 0 or seconds > 1e7:
        return None
    return round(seconds * 1000)


def _code(value: object) -> str | None:
    """The vendor's error code, if it sent one (undocumented; kept for logs)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    # Bounded like the message: the code goes into the error the client sees.
    return quote_vendor_text(str(value))
