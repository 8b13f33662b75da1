"""The SAUC binary protocol: frames and the per-stream state machine, with no I/O.

A frame is a 4-byte header (version | header size, message type | flags, serialization | compression,
reserved), an optional int32 sequence number, a uint32 payload size and the payload; error frames carry a
uint32 error code before the size. All integers are big-endian.

Wire choices (see ``docs/vendors/sauc.md``):

* The client speaks the variant of the official demo and of 360's own guide: sequence numbers on every
  frame (full request 1, audio 2…N, the last packet -(N+1)) and byte2 ``0x11`` (JSON, gzip) on every frame,
  audio included. It is the variant both services are known to accept from their own sample clients.
* Audio is not held back to ride on the last packet: ``end()`` sends an empty last packet (gzip of nothing),
  so no audio waits for the next chunk to arrive.
* Audio payloads are gzip members whose deflate data is one *stored* block (RFC 1951 §3.2.4: what gzip level
  0 writes). Every gzip reader takes them, and building one is a CRC and a copy: a few microseconds, where
  zlib level 1 spends over 100 µs per 200 ms packet (mostly setting its compressor up) to save ~20 % of the
  bytes of real microphone audio. The JSON request and the empty last packet stay zlib-compressed.
* Audio flows right after the full client request, without waiting for its answer: the protocol does not
  ask for the wait and skipping it saves a round trip per utterance. A rejected request still comes back as
  an error frame and becomes a ``VendorError``.
* ``result_type`` is always ``full`` (cumulative) with utterances: each utterance that turns
  ``definite`` becomes one ``FinalResult``, exactly once; the open utterance is the partial.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar

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

PROTOCOL_VERSION = 0b0001
# Header size in 4-byte words; this client never sends header extensions.
HEADER_WORDS = 0b0001


class MessageType(IntEnum):
    FULL_CLIENT_REQUEST = 0b0001
    AUDIO_ONLY_REQUEST = 0b0010
    FULL_SERVER_RESPONSE = 0b1001
    # Only in the older v2 protocol; tolerated and ignored.
    SERVER_ACK = 0b1011
    ERROR = 0b1111


# Message-type-specific flags.
FLAG_SEQUENCE = 0b0001
FLAG_LAST = 0b0010
FLAG_EVENT = 0b0100

SERIALIZATION_NONE = 0b0000
SERIALIZATION_JSON = 0b0001
COMPRESSION_NONE = 0b0000
COMPRESSION_GZIP = 0b0001

SUCCESS_CODE = 20000000
# Largest payload accepted after decompression: results are small JSON documents (a gzip bomb costs nothing).
MAX_PAYLOAD = 1 << 20
# Longest vendor error text carried into our error messages.
MAX_ERROR_TEXT = 300

# Errors retrying cannot fix: bad request, bad key, resource not granted, bad audio format.
FATAL_CODES = frozenset({45000001, 45000010, 45000030, 45000151})
# Errors a new stream may not hit: waiting-for-packet timeout; 550xxxxx (internal, server busy) by prefix.
TRANSIENT_CODES = frozenset({45000081})
# For codes not listed above: messages that speak of credentials are credential errors.
_AUTH_WORDS = re.compile(r"key|auth|token|grant|permission|forbidden|denied|credential", re.IGNORECASE)


class FrameError(ValueError):
    """A frame that does not follow the protocol."""


# ---------------------------------------------------------------------------------------------------------
# Frames


def header(message_type: int, flags: int, serialization: int, compression: int) -> bytes:
    return bytes(
        (
            (PROTOCOL_VERSION << 4) | HEADER_WORDS,
            (message_type << 4) | flags,
            (serialization << 4) | compression,
            0,
        )
    )


def gzip_compress(data: bytes, level: int) -> bytes:
    """A gzip member (zlib's header: no name, mtime 0), so equal input gives equal bytes."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def gzip_decompress(data: bytes, limit: int = MAX_PAYLOAD) -> bytes:
    """Inflate a gzip (or zlib) payload of at most ``limit`` bytes; raises ``FrameError``."""
    inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit)
    except zlib.error as exc:
        raise FrameError(f"bad gzip payload ({exc})") from None
    if inflater.unconsumed_tail:
        raise FrameError(f"payload inflates to more than {limit} bytes")
    if not inflater.eof:
        raise FrameError("truncated gzip payload")
    return out


# A gzip member header as zlib writes it for level 0: magic, deflate, no flags, mtime 0, xfl 4, OS 3 (Unix).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\x03"
# Largest stored deflate block (its length field is 16 bits).
_STORED_BLOCK = 0xFFFF


def gzip_stored(data: bytes) -> bytes:
    """``data`` as a gzip member of stored (uncompressed) deflate blocks, as zlib writes at level 0 (the same
    bytes for one packet of audio), made without setting up a compressor."""
    parts = [_GZIP_HEADER]
    size = len(data)
    offset = 0
    while True:
        block = data[offset : offset + _STORED_BLOCK]
        offset += len(block)
        final = offset >= size
        parts.append(struct.pack("<BHH", 1 if final else 0, len(block), len(block) ^ 0xFFFF))
        parts.append(block)
        if final:
            break
    parts.append(struct.pack("<II", zlib.crc32(data), size & 0xFFFFFFFF))
    return b"".join(parts)


def client_frame(message_type: MessageType, flags: int, sequence: int, payload: bytes, level: int) -> bytes:
    """A client frame in the chosen variant: sequence number, JSON|gzip in byte2, gzip payload (``level`` 0:
    stored, see ``gzip_stored``)."""
    body = gzip_stored(payload) if level == 0 else gzip_compress(payload, level)
    return (
        header(message_type, flags, SERIALIZATION_JSON, COMPRESSION_GZIP)
        + struct.pack(">iI", sequence, len(body))
        + body
    )


@dataclass(frozen=True, slots=True)
class ServerFrame:
    """One parsed server frame; ``payload`` is already decompressed."""

    message_type: int
    flags: int
    serialization: int
    sequence: int | None
    payload: bytes
    error_code: int | None = None

    @property
    def last(self) -> bool:
        """The final response: flags 0b0011 (or 0b0010), negative sequence."""
        return bool(self.flags & FLAG_LAST) or (self.sequence is not None and self.sequence < 0)


def parse_server_frame(data: bytes) -> ServerFrame:
    """Parse one binary server frame; raises ``FrameError`` for anything off the protocol."""
    if len(data) < 4:
        raise FrameError(f"frame of {len(data)} bytes is shorter than the 4-byte header")
    version, words = data[0] >> 4, data[0] & 0x0F
    if version != PROTOCOL_VERSION:
        raise FrameError(f"unknown protocol version {version}")
    if words < 1:
        raise FrameError("header size 0")
    message_type, flags = data[1] >> 4, data[1] & 0x0F
    serialization, compression = data[2] >> 4, data[2] & 0x0F
    if compression not in (COMPRESSION_NONE, COMPRESSION_GZIP):
        raise FrameError(f"unknown compression {compression}")
    offset = words * 4
    sequence: int | None = None
    error_code: int | None = None
    if message_type == MessageType.ERROR:
        error_code, offset = _uint32(data, offset, "error code")
    else:
        if flags & FLAG_SEQUENCE:
            sequence, offset = _int32(data, offset, "sequence number")
        if flags & FLAG_EVENT:
            _, offset = _int32(data, offset, "event number")
        if message_type == MessageType.SERVER_ACK and offset == len(data):
            return ServerFrame(message_type, flags, serialization, sequence, b"")
    size, offset = _uint32(data, offset, "payload size")
    payload = data[offset : offset + size]
    if len(payload) < size:
        raise FrameError(f"payload declares {size} bytes but carries {len(payload)}")
    if compression == COMPRESSION_GZIP and payload:
        payload = gzip_decompress(payload)
    return ServerFrame(message_type, flags, serialization, sequence, payload, error_code)


def _int32(data: bytes, offset: int, what: str) -> tuple[int, int]:
    if len(data) < offset + 4:
        raise FrameError(f"frame ends before its {what}")
    return struct.unpack_from(">i", data, offset)[0], offset + 4


def _uint32(data: bytes, offset: int, what: str) -> tuple[int, int]:
    if len(data) < offset + 4:
        raise FrameError(f"frame ends before its {what}")
    return struct.unpack_from(">I", data, offset)[0], offset + 4


# ---------------------------------------------------------------------------------------------------------
# Errors


def error_text(payload: bytes) -> str:
    """The human part of an error payload: ``{"error": "..."}`` or plain text; redacted and bounded."""
    text = payload.decode("utf-8", "replace").strip()
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        document = None
    if isinstance(document, dict):
        for name in ("error", "message", "msg"):
            value = document.get(name)
            if isinstance(value, str) and value.strip():
                text = value.strip()
                break
    if len(text) > MAX_ERROR_TEXT:
        text = text[: MAX_ERROR_TEXT - 3] + "..."
    return redact(text) or "no message"


def is_fatal(code: int, message: str) -> bool:
    """Whether retrying cannot help: configuration and credential errors."""
    if code in FATAL_CODES:
        return True
    if code in TRANSIENT_CODES or code // 100000 == 550:
        return False
    return _AUTH_WORDS.search(message) is not None


def error_event(code: int, payload: bytes) -> VendorError:
    # The vendor's own words; the session adds the vendor's name and the code.
    message = error_text(payload)
    return VendorError(message, str(code), fatal=is_fatal(code, message))


# ---------------------------------------------------------------------------------------------------------
# The stream


@dataclass(frozen=True, slots=True)
class RecognitionRequest:
    """What goes into the full client request besides the fixed audio format."""

    uid: str = "asr-daemon"
    enable_itn: bool = True
    enable_punc: bool = True
    enable_ddc: bool = False
    enable_nonstream: bool = False
    end_window_size: int | None = None
    hotwords: tuple[str, ...] = ()

    def payload(self) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model_name": "bigmodel",
            "enable_itn": self.enable_itn,
            "enable_punc": self.enable_punc,
            "enable_ddc": self.enable_ddc,
            "show_utterances": True,
            "result_type": "full",
            "enable_nonstream": self.enable_nonstream,
        }
        if self.end_window_size is not None:
            request["end_window_size"] = self.end_window_size
        if self.hotwords:
            hotwords = {"hotwords": [{"word": word} for word in self.hotwords]}
            request["corpus"] = {"context": json.dumps(hotwords, ensure_ascii=False, separators=(",", ":"))}
        return {
            "user": {"uid": self.uid},
            "audio": {"format": "pcm", "codec": "raw", "rate": 16000, "bits": 16, "channel": 1},
            "request": request,
        }


class SaucCodec(StreamCodec):
    """One SAUC recognition stream."""

    # 200 ms of 16 kHz s16le mono: the packet size the vendor recommends for bidirectional streaming.
    chunk_bytes: ClassVar[int] = 6400
    # Packets are meant to come every 100-200 ms; the session ends after ~8 s without one.
    max_send_speed: ClassVar[float | None] = 2.0
    keepalive_seconds: ClassVar[float | None] = 3.0
    # Audio is sent stored (level 0): microphone PCM barely compresses, and zlib's setup per packet was the
    # costliest step of the whole audio path (see the module docstring).
    audio_level: ClassVar[int] = 0
    # The request and the empty last packet: small, once per stream.
    request_level: ClassVar[int] = 1

    def __init__(self, request: RecognitionRequest) -> None:
        super().__init__()
        self.request = request
        self._sequence = 0
        self._emitted: set[tuple[str, int]] = set()
        self._final_texts: list[str] = []
        self._partial = ""
        self._failed = False

    @property
    def sequence(self) -> int:
        """Sequence number of the last frame sent."""
        return self._sequence

    def start(self) -> list[Outgoing]:
        self._sequence = 1
        self.ready = True
        body = json.dumps(self.request.payload(), ensure_ascii=False, separators=(",", ":")).encode()
        return [client_frame(MessageType.FULL_CLIENT_REQUEST, FLAG_SEQUENCE, 1, body, self.request_level)]

    def send_audio(self, pcm: bytes) -> list[Outgoing]:
        if not pcm or self.ended:
            return []
        self._sequence += 1
        sequence = self._sequence
        return [client_frame(MessageType.AUDIO_ONLY_REQUEST, FLAG_SEQUENCE, sequence, pcm, self.audio_level)]

    def end_of_stream(self) -> list[Outgoing]:
        self._sequence += 1
        flags = FLAG_SEQUENCE | FLAG_LAST
        return [client_frame(MessageType.AUDIO_ONLY_REQUEST, flags, -self._sequence, b"", self.request_level)]

    def receive(self, message: str | bytes) -> list[VendorEvent]:
        if self.completed:
            return []
        if isinstance(message, str):
            return [_malformed("a text message where binary frames are expected")]
        try:
            frame = parse_server_frame(message)
        except FrameError as exc:
            return [_malformed(str(exc))]
        if frame.message_type == MessageType.ERROR and frame.error_code is not None:
            if frame.error_code == SUCCESS_CODE:
                return []
            self._failed = True
            return [error_event(frame.error_code, frame.payload)]
        if frame.message_type == MessageType.SERVER_ACK:
            return []
        if frame.message_type != MessageType.FULL_SERVER_RESPONSE:
            return [_malformed(f"unexpected message type {frame.message_type:#06b}")]
        document: object = {}
        if frame.payload:
            try:
                document = json.loads(frame.payload)
            except (ValueError, RecursionError):
                return [_malformed("a response payload that is not JSON")]
        return self._results(document, last=frame.last)

    def connection_closed(self, code: int | None, reason: str) -> list[VendorEvent]:
        # The vendor's error frame already said why; its close adds nothing.
        if self._failed:
            return []
        return super().connection_closed(code, reason)

    # -- results ------------------------------------------------------------------------------------

    def _results(self, document: object, *, last: bool) -> list[VendorEvent]:
        result = document.get("result") if isinstance(document, dict) else None
        if isinstance(result, list):  # older v2 servers answer a list of results
            result = next((item for item in result if isinstance(item, dict)), None)
        if not isinstance(result, dict):
            result = {}
        events: list[VendorEvent] = []
        utterances = result.get("utterances")
        text = result.get("text")
        open_parts: list[dict[str, Any]] = []
        if isinstance(utterances, list):
            for index, utterance in enumerate(utterances):
                if not isinstance(utterance, dict):
                    continue
                if utterance.get("definite") is True:
                    final = self._definite(utterance, index)
                    if final is not None:
                        events.append(final)
                elif _text(utterance):
                    open_parts.append(utterance)
            open_text = "".join(_text(part) for part in open_parts)
        elif isinstance(text, str):
            open_text = self._unfinalised(text)
        else:
            open_text = ""
        if last:
            if open_text.strip():
                start = _ms(open_parts[0].get("start_time")) if open_parts else None
                end = _ms(open_parts[-1].get("end_time")) if open_parts else None
                events.append(FinalResult(bounded_result(open_text), start, end))
                self._final_texts.append(bounded_result(open_text))
            self._partial = ""
            self.completed = True
            events.append(StreamCompleted())
        elif open_text != self._partial:
            self._partial = open_text
            if open_text.strip():
                events.append(PartialResult(bounded_result(open_text)))
        return events

    def _definite(self, utterance: dict[str, Any], index: int) -> FinalResult | None:
        """A definite utterance as a final, unless it was emitted before."""
        start = _ms(utterance.get("start_time"))
        # Start times of finished sentences are stable; without one, the position in the cumulative list is.
        key = ("t", start) if start is not None else ("i", index)
        if key in self._emitted:
            return None
        self._emitted.add(key)
        text = bounded_result(_text(utterance))
        if not text.strip():
            return None
        self._final_texts.append(text)
        self._partial = ""
        return FinalResult(text, start, _ms(utterance.get("end_time")))

    def _unfinalised(self, text: str) -> str:
        """Of a cumulative ``result.text`` without utterances, what no final has covered yet."""
        done = "".join(self._final_texts)
        if text.startswith(done):
            return text[len(done) :]
        return "" if done else text


def _text(utterance: dict[str, Any]) -> str:
    text = utterance.get("text")
    return text if isinstance(text, str) else ""


def _ms(value: object) -> int | None:
    """A time in ms, or None for the -1 (or missing) the vendor uses for 'unknown'."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value != value:
        return None
    if value > 1 << 40:
        return None
    return int(value)


def _malformed(why: str) -> VendorError:
    return VendorError(f"malformed vendor message: {why}")
