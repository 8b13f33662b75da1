"""iApp real-time ASR wire protocol, sans I/O.

The client sends raw 16 kHz s16le mono PCM as binary frames and ends with
``{"data":{"status":"CloseConnection"}}``. The server answers with JSON text frames
``{"type":"realtime","state":"Sentence"|"NewSentence","text":...}``: ``text`` is the whole current hypothesis
of the open sentence; a ``NewSentence`` message closes the previous sentence (its last text stands) and brings
the first hypothesis of the next one. The end of the stream is a JSON message whose ``text`` is
``"Confirm Close Connection"`` (its ``state`` says ``Sentence``, so ``text`` is tested first). Error messages
are undocumented: anything else is reported as an error carrying what the vendor said.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..base import (
    FinalResult,
    Outgoing,
    PartialResult,
    PcmFrameCodec,
    StreamCompleted,
    VendorError,
    VendorEvent,
    bounded_result,
    json_message,
    quote_vendor_text,
)

END_OF_STREAM = '{"data":{"status":"CloseConnection"}}'
CLOSE_CONFIRMATION = "Confirm Close Connection"

# Updates the open sentence. Compared without spaces and case: the seed's prose calls it "New sentence".
_SENTENCE = "sentence"
_NEW_SENTENCE = "newsentence"
# Keys an undocumented error document is most likely to explain itself in, best first.
_MESSAGE_KEYS = ("message", "error", "msg", "desc", "detail", "reason", "text")
_CODE_KEYS = ("code", "status", "status_code")


class IAppCodec(PcmFrameCodec):
    """One iApp stream: no handshake, so it is ready as soon as the WebSocket is open."""

    end_message: ClassVar[Outgoing] = END_OF_STREAM

    # 40 ms: the frame the upstream iFlyTek real-time engine asks for; the iApp sample sends 1024 B (32 ms).
    chunk_bytes: ClassVar[int] = 1280
    # The upstream engine wants audio at about real time; iApp's own sample sends 1.6x.
    max_send_speed: ClassVar[float | None] = 2.0

    def __init__(self) -> None:
        super().__init__()
        # Last text of the open sentence; None when no sentence is open.
        self._sentence: str | None = None

    def start(self) -> list[Outgoing]:
        self.ready = True
        return []

    def receive(self, message: str | bytes) -> list[VendorEvent]:
        if self.completed:
            return []
        document = json_message("iApp", message)
        if isinstance(document, VendorError):
            return [document]
        text = document.get("text")
        state = document.get("state")
        if text == CLOSE_CONFIRMATION:
            return self._complete()
        if isinstance(state, str) and isinstance(text, str):
            kind = state.replace(" ", "").replace("_", "").lower()
            if kind == _SENTENCE:
                return self._update(text)
            if kind == _NEW_SENTENCE:
                return [*self._close_sentence(), *self._update(text)]
        return [_error_from(document, str(message))]

    def connection_closed(self, code: int | None, reason: str) -> list[VendorEvent]:
        # The confirmation is the documented end; a normal close after everything was sent is the one variant
        # of it we also accept (the sample never shows which side closes first). Anything else loses audio.
        if not self.completed and self.ended and code == 1000:
            return self._complete()
        return super().connection_closed(code, reason)

    def _update(self, text: str) -> list[VendorEvent]:
        if text == (self._sentence or ""):
            return []
        self._sentence = text
        return [PartialResult(bounded_result(text))]

    def _close_sentence(self) -> list[VendorEvent]:
        text, self._sentence = self._sentence, None
        if text is None or not text.strip():
            return []
        return [FinalResult(bounded_result(text))]

    def _complete(self) -> list[VendorEvent]:
        self.completed = True
        return [*self._close_sentence(), StreamCompleted()]


def _error_from(document: dict[str, Any], raw: str) -> VendorError:
    """An unrecognised JSON message, most likely an (undocumented) error: keep what the vendor said."""
    said = next((v for k in _MESSAGE_KEYS if isinstance(v := document.get(k), str) and v.strip()), None)
    code_value = next((document[k] for k in _CODE_KEYS if isinstance(document.get(k), str | int)), None)
    # Bounded like the message: the code goes into the error the client sees.
    code = None if code_value is None or isinstance(code_value, bool) else quote_vendor_text(str(code_value))
    if said is None:
        return VendorError(f"iApp sent an unexpected message: {quote_vendor_text(raw)}", code)
    # An authentication complaint does not go away by reconnecting with the same key.
    fatal = code in ("401", "403")
    return VendorError(f"iApp error: {quote_vendor_text(said)}", code, fatal=fatal)
