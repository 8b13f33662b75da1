"""AmiVoice Cloud Platform WebSocket protocol, sans I/O (``docs/protocols/amivoice.md``).

Client → server: ``s <audio_format> <engine> key=value …`` (text), ``p`` + audio (binary), ``e`` (text).
Server → client: text frames whose first character is the tag, the payload after one space: ``s``/``p``/``e``
answer the commands (a bare tag is success, ``<tag> <message>`` an error), ``S``/``E`` (utterance start/end,
ms), ``C`` (recognition started), ``U`` (interim JSON), ``A`` (final JSON of one utterance), and
``G``/``R``/``Q``, which carry nothing this daemon uses.

How errors are classified (the vendor publishes no machine-readable severity):

* ``s <message>``: fatal (the same command with the same key and engine cannot succeed later), except the
  server errors the vendor's own guide says to retry, whose messages start with ``can't``
  (``s can't connect to recognizer server``): transient.
* ``p <message>`` and a failed ``A`` result: fatal when the message starts with ``received`` (the vendor's
  wording for a bad client request: ``received unsupported audio format``, ``received illegal service
  authorization``); anything else (``p can't feed audio data to recognizer server`` after 600 s without
  speech) is transient: the vendor's guide says to reconnect and send the audio again.
* ``e <message>``: transient. Before our ``e`` it is the vendor's idle cut (``e timeout occurred``); after it,
  a failure to finish on the server side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ..base import (
    PCM16K,
    AudioFormat,
    FinalResult,
    Outgoing,
    PartialResult,
    StreamCodec,
    StreamCompleted,
    StreamReady,
    VendorError,
    VendorEvent,
    bounded_result,
    json_object,
    quote_vendor_text,
)

# Headerless signed 16-bit little-endian 16 kHz: exactly what the session delivers.
AUDIO_FORMAT_LSB16K = "LSB16K"
# The dummy token AmiVoice appends to every interim result.
_DUMMY_TOKEN = "..."
_AUDIO_TAG = b"p"
# AmiVoice's result codes are one character; anything longer is cut to this.
CODE_CHARS = 16


def quote_value(value: str) -> str:
    """A parameter value as the ``s`` command wants it: double-quoted when it holds spaces, ``"`` doubled."""
    if value == "" or '"' in value or any(c.isspace() for c in value):
        return '"' + value.replace('"', '""') + '"'
    return value


def s_command(audio_format: str, engine: str, parameters: Sequence[tuple[str, str]]) -> str:
    """``s <audio_format> <engine> key=value …`` with single spaces, parameters in the given order."""
    parts = ["s", audio_format, engine]
    parts.extend(f"{key}={quote_value(value)}" for key, value in parameters)
    return " ".join(parts)


def split_message(message: str) -> tuple[str, str]:
    """``"A {...}\\n"`` → ``("A", "{...}")``: the tag and its payload, a trailing newline tolerated.

    A message whose first character is not followed by a space or the end is no packet: tag ``""``.
    """
    text = message.rstrip("\r\n")
    if not text or text[1:2] not in ("", " "):
        return "", text
    return text[0], text[2:]


class AmiVoiceCodec(StreamCodec):
    """One ``s`` … ``e`` recognition session on one connection."""

    audio_format: ClassVar[AudioFormat] = PCM16K
    # 100 ms of audio per ``p`` packet: real-time friendly, 10 frames a second.
    chunk_bytes: ClassVar[int] = 3200
    # AmiVoice cuts a stream after 60 s without data and has no keepalive message.
    keepalive_seconds: ClassVar[float | None] = 30.0

    def __init__(self, engine: str, authorization: str, parameters: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__()
        self._command = s_command(AUDIO_FORMAT_LSB16K, engine, [("authorization", authorization), *parameters])
        self._started = False
        self._failed = False

    # -- what we send -----------------------------------------------------------------------------------

    def start(self) -> list[Outgoing]:
        if self._started:
            return []
        self._started = True
        return [self._command]

    def send_audio(self, pcm: bytes) -> list[Outgoing]:
        # Called once ``ready`` (the session waits for StreamReady); an empty chunk is not worth a packet.
        if not pcm or self.ended:
            return []
        return [_AUDIO_TAG + pcm]

    def end_of_stream(self) -> list[Outgoing]:
        return ["e"]

    # -- what we receive --------------------------------------------------------------------------------

    def receive(self, message: str | bytes) -> list[VendorEvent]:
        # After the end of the stream nothing the vendor sends matters, not even a message of the wrong kind.
        if self.completed:
            return []
        if isinstance(message, bytes | bytearray | memoryview):
            return [VendorError(f"unexpected binary message from AmiVoice ({len(message)} bytes)")]
        tag, body = split_message(message)
        if tag == "s":
            return self._on_start_reply(body.strip())
        if tag == "p":
            return self._on_audio_reply(body.strip())
        if tag == "e":
            return self._on_end_reply(body.strip())
        if tag == "U":
            return self._on_interim(body)
        if tag == "A":
            return self._on_final(body)
        # S/E (voice activity), C (recognition started), G/Q (server notices), R (alternative result format,
        # only with resultType, which we never set), and tags unknown today: nothing a transcript needs.
        return []

    def _on_start_reply(self, error: str) -> list[VendorEvent]:
        if not error:
            if self.ready or self._failed:
                return []
            self.ready = True
            return [StreamReady()]
        self._failed = True
        transient = error.startswith("can't")
        hint = " (check vendors.amivoice.api_key)" if "authorization" in error else ""
        return [VendorError(f"AmiVoice refused the stream: {quote_vendor_text(error)}{hint}", fatal=not transient)]

    def _on_audio_reply(self, error: str) -> list[VendorEvent]:
        if not error:  # the vendor sends no success reply to p; tolerate one
            return []
        self._failed = True
        shown = quote_vendor_text(error)
        return [VendorError(f"AmiVoice refused the audio: {shown}", fatal=error.startswith("received"))]

    def _on_end_reply(self, error: str) -> list[VendorEvent]:
        if not self.ended:
            self._failed = True
            detail = quote_vendor_text(error) if error else "an unexpected e packet"
            return [VendorError(f"AmiVoice ended the session before the end of audio: {detail}")]
        if error:
            self._failed = True
            return [VendorError(f"AmiVoice failed to finish the stream: {quote_vendor_text(error)}")]
        self.completed = True
        return [StreamCompleted()]

    def _on_interim(self, body: str) -> list[VendorEvent]:
        # A broken interim result costs only a progress update; the final result carries the text.
        document = json_object(body)
        if document is None:
            return []
        text = _interim_text(document)
        return [PartialResult(bounded_result(text))] if text else []

    def _on_final(self, body: str) -> list[VendorEvent]:
        document = json_object(body)
        if document is None:
            return [VendorError("AmiVoice sent a final result that is not a JSON object")]
        code = _string(document.get("code"))
        message = _string(document.get("message"))
        if code or message:
            shown = quote_vendor_text(message or f"recognition failed with code {code!r}")
            return [
                VendorError(
                    f"AmiVoice recognition failed: {shown}",
                    quote_vendor_text(code[:CODE_CHARS]) or None,
                    fatal=message.startswith("received"),
                )
            ]
        result = _first_result(document)
        text = _string(document.get("text")) or _string(result.get("text"))
        if not text.strip():
            # An utterance with nothing recognisable in it (noise, a cough): no segment.
            return []
        start, end = _milliseconds(result.get("starttime")), _milliseconds(result.get("endtime"))
        return [FinalResult(bounded_result(text), start, end)]


# -------------------------------------------------------------------------------------------------------
# JSON helpers: every field is checked, nothing is trusted to have the documented type.


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _milliseconds(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _first_result(document: dict[str, Any]) -> dict[str, Any]:
    results = document.get("results")
    if isinstance(results, list) and results and isinstance(results[0], dict):
        return results[0]
    return {}


def _interim_text(document: dict[str, Any]) -> str:
    """The interim text without AmiVoice's trailing dummy ``...`` token."""
    text = _string(document.get("text")) or _string(_first_result(document).get("text"))
    tokens = _first_result(document).get("tokens")
    last = tokens[-1] if isinstance(tokens, list) and tokens else None
    dummy_last = isinstance(last, dict) and last.get("written") == _DUMMY_TOKEN
    if (dummy_last or tokens is None) and text.endswith(_DUMMY_TOKEN):
        text = text[: -len(_DUMMY_TOKEN)]
    return text.strip()
