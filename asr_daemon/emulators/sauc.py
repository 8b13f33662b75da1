"""Emulators of 360 Zyun and Volcengine large-model streaming ASR (the SAUC binary protocol).

Written from ``docs/protocols/sauc.md``, not from the adapter: it parses frames with its own code.
It accepts both client variants the vendors' documents show (with and without sequence numbers, byte2
``0x01`` or ``0x11`` on audio, an empty or audio-carrying last packet) and records anything else as a
violation, answered with the vendor's 45000001 error frame. Responses mirror the client's compression;
each stream's log id goes out in the ``X-Tt-Logid`` upgrade header.

Volcengine endpoints differ in when they answer: ``bigmodel`` after every packet, ``bigmodel_async`` (and 360)
only when the result changed, ``bigmodel_nostream`` only at the end.

360's own Go demo sends its frames in WebSocket text frames (the payload is binary, not UTF-8): the 360
emulator takes text frames as binary and notes it; the Volcengine emulator refuses them, as Volcengine's
demos send binary frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http
import json
import struct
import uuid
import zlib
from abc import abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .base import (
    BYTES_PER_MS,
    ClientTolerance,
    Emulator,
    EmulatorOptions,
    Fault,
    ScriptedRecognizer,
    SegmentFinal,
    SegmentPartial,
    SegmentStarted,
    SimEvent,
    StreamRecord,
    WavHeaderStripper,
)

# Message types (high nibble of byte1).
FULL_CLIENT_REQUEST = 0b0001
AUDIO_ONLY_REQUEST = 0b0010
FULL_SERVER_RESPONSE = 0b1001
ERROR_RESPONSE = 0b1111
# Flags (low nibble of byte1).
POS_SEQUENCE = 0b0001
LAST_NO_SEQUENCE = 0b0010
NEG_SEQUENCE = 0b0011
# Serialization / compression (byte2).
NO_SERIALIZATION = 0b0000
JSON_SERIALIZATION = 0b0001
NO_COMPRESSION = 0b0000
GZIP_COMPRESSION = 0b0001

# Error codes from the vendor's documentation.
INVALID_PARAMS = 45000001
INVALID_KEY = 45000010
RESOURCE_NOT_GRANTED = 45000030
IDLE_TIMEOUT = 45000081
BAD_AUDIO_FORMAT = 45000151
SERVER_BUSY = 55000031

LOGID_HEADER = "X-Tt-Logid"
MAX_INFLATED = 4 << 20
VOLCENGINE_RESOURCES = frozenset(
    {
        "volc.bigasr.sauc.duration",
        "volc.bigasr.sauc.concurrent",
        "volc.seedasr.sauc.duration",
        "volc.seedasr.sauc.concurrent",
    }
)


class AnswerMode(StrEnum):
    """When the service sends a result."""

    EVERY_PACKET = "bigmodel"
    ON_CHANGE = "bigmodel_async"
    AT_END = "bigmodel_nostream"


class ClientFrameError(Exception):
    """A client message the vendor rejects: the text goes into the violation and the error frame."""

    def __init__(self, text: str, code: int = INVALID_PARAMS) -> None:
        super().__init__(text)
        self.code = code


@dataclass(frozen=True)
class ClientFrame:
    message_type: int
    flags: int
    serialization: int
    compression: int
    sequence: int | None
    payload: bytes


def parse_client_frame(message: str | bytes) -> ClientFrame:
    """Parse a client frame per the spec's layout; raises ``ClientFrameError``."""
    if isinstance(message, str):
        raise ClientFrameError("text message; SAUC frames are binary")
    if len(message) < 4:
        raise ClientFrameError(f"frame of {len(message)} bytes is shorter than the 4-byte header")
    version, words = message[0] >> 4, message[0] & 0x0F
    if version != 0b0001:
        raise ClientFrameError(f"protocol version {version}, expected 1")
    if words < 1 or len(message) < words * 4:
        raise ClientFrameError(f"header size {words} words does not fit the frame")
    message_type, flags = message[1] >> 4, message[1] & 0x0F
    serialization, compression = message[2] >> 4, message[2] & 0x0F
    if message[3] != 0:
        raise ClientFrameError(f"reserved header byte is {message[3]:#04x}, expected 0x00")
    if flags not in (0b0000, POS_SEQUENCE, LAST_NO_SEQUENCE, NEG_SEQUENCE):
        raise ClientFrameError(f"message flags {flags:#06b} are not a sequence/last-packet combination")
    if serialization not in (NO_SERIALIZATION, JSON_SERIALIZATION):
        raise ClientFrameError(f"serialization {serialization:#06b} is neither none nor JSON")
    if compression not in (NO_COMPRESSION, GZIP_COMPRESSION):
        raise ClientFrameError(f"compression {compression:#06b} is neither none nor gzip")
    offset = words * 4
    sequence: int | None = None
    if flags & POS_SEQUENCE:
        if len(message) < offset + 4:
            raise ClientFrameError("frame ends before its sequence number")
        (sequence,) = struct.unpack_from(">i", message, offset)
        offset += 4
    if len(message) < offset + 4:
        raise ClientFrameError("frame ends before its payload size")
    (size,) = struct.unpack_from(">I", message, offset)
    offset += 4
    payload = message[offset:]
    if len(payload) != size:
        raise ClientFrameError(f"payload size field says {size} bytes, the frame carries {len(payload)}")
    if compression == GZIP_COMPRESSION and payload:
        payload = _gunzip(payload)
    return ClientFrame(message_type, flags, serialization, compression, sequence, payload)


def _gunzip(data: bytes) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_INFLATED)
    except zlib.error as exc:
        raise ClientFrameError(f"payload flagged gzip is not gzip ({exc})") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise ClientFrameError("gzip payload is truncated or too large")
    return out


def server_frame(flags: int, sequence: int, document: dict[str, Any], compression: int) -> bytes:
    """A full server response, serialized as JSON and compressed like the client's request."""
    payload = json.dumps(document, ensure_ascii=False).encode()
    if compression == GZIP_COMPRESSION:
        payload = gzip.compress(payload, compresslevel=1)
    head = bytes((0x11, (FULL_SERVER_RESPONSE << 4) | flags, (JSON_SERIALIZATION << 4) | compression, 0))
    return head + struct.pack(">iI", sequence, len(payload)) + payload


def error_frame(code: int, text: str) -> bytes:
    """An error frame: JSON ``{"error": ...}``, never compressed (the spec's ``11 F0 10 00``)."""
    payload = json.dumps({"error": text}, ensure_ascii=False).encode()
    return bytes((0x11, 0xF0, 0x10, 0x00)) + struct.pack(">II", code, len(payload)) + payload


# ---------------------------------------------------------------------------------------------------------
# Per-stream state


@dataclass
class _Stream:
    record: StreamRecord
    recognizer: ScriptedRecognizer
    log_id: str
    mode: AnswerMode
    compression: int = GZIP_COMPRESSION
    # None until the full client request says whether this client numbers its frames.
    sequenced: bool | None = None
    # Client frames so far (the full request included): the sequence number the next one should carry - 1.
    frames: int = 0
    audio_format: str = "pcm"
    show_utterances: bool = False
    single: bool = False
    audio_bytes: int = 0
    # For ``wav``: drops the RIFF header the demo streams with the audio.
    wav_header: WavHeaderStripper | None = None
    responses: int = 0
    finals: list[SegmentFinal] = field(default_factory=list)
    reported_finals: int = 0
    open_start: int | None = None
    open_text: str = ""


def _check_request(document: object) -> tuple[str, int] | None:
    """Validate a full client request; returns (what is wrong, error code) or None."""
    if not isinstance(document, dict):
        return "full client request payload is not a JSON object", INVALID_PARAMS
    audio = document.get("audio")
    if not isinstance(audio, dict):
        return "missing audio", INVALID_PARAMS
    request = document.get("request")
    if "format" not in audio:
        return "missing audio.format", INVALID_PARAMS
    if not isinstance(request, dict) or "model_name" not in request:
        return "missing request.model_name", INVALID_PARAMS
    if request["model_name"] != "bigmodel":
        return f"request.model_name {request['model_name']!r}, expected 'bigmodel'", INVALID_PARAMS
    if audio["format"] not in ("pcm", "wav", "ogg", "mp3"):
        return f"audio.format {audio['format']!r} is not pcm, wav, ogg or mp3", INVALID_PARAMS
    if audio.get("codec", "raw") not in ("raw", "opus"):
        return f"audio.codec {audio.get('codec')!r} is not raw or opus", INVALID_PARAMS
    for name, allowed in (("rate", (16000,)), ("bits", (16,)), ("channel", (1, 2))):
        value = audio.get(name, allowed[0])
        if isinstance(value, bool) or value not in allowed:
            return f"audio.{name} {value!r} is not one of {list(allowed)}", INVALID_PARAMS
    for name in ("enable_itn", "enable_punc", "enable_ddc", "show_utterances", "enable_nonstream"):
        if name in request and not isinstance(request[name], bool):
            return f"request.{name} {request[name]!r} is not a boolean", INVALID_PARAMS
    if request.get("result_type", "full") not in ("full", "single"):
        return f"request.result_type {request['result_type']!r} is not full or single", INVALID_PARAMS
    window = request.get("end_window_size")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 200):
        return f"request.end_window_size {window!r} is not an integer of at least 200", INVALID_PARAMS
    corpus = request.get("corpus")
    if corpus is not None:
        context = corpus.get("context") if isinstance(corpus, dict) else None
        if not isinstance(corpus, dict) or (context is not None and not _is_json_text(context)):
            return "request.corpus.context is not a JSON string", INVALID_PARAMS
    # Recognisable by the vendor but not by this emulator's scripted recognizer.
    if audio["format"] not in ("pcm", "wav") or audio.get("codec", "raw") != "raw" or audio.get("channel", 1) != 1:
        return "the emulator recognises 16 kHz 16-bit mono pcm/wav only", BAD_AUDIO_FORMAT
    return None


def _is_json_text(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------
# The server


class SaucEmulator(Emulator):
    """The SAUC protocol as both services speak it; subclasses add the endpoint and the credential check."""

    default_script: ClassVar[tuple[str, ...]] = ("今天天气很好", "我们去公园散步")
    vendor_idle_timeout: ClassVar[float | None] = 8.0
    # Endpoint path → when results are sent.
    paths: ClassVar[dict[str, AnswerMode]]

    def __init__(
        self,
        options: EmulatorOptions | None = None,
        *,
        auth_error_frame: bool = False,
        close_after_final: bool = True,
    ) -> None:
        """``auth_error_frame``: refuse bad credentials with an error frame after the upgrade instead of an
        HTTP status (both are observed). ``close_after_final``: close the socket after the final response
        (whether the service does is unconfirmed; a client must not depend on it)."""
        super().__init__(options)
        self.auth_error_frame = auth_error_frame
        self.close_after_final = close_after_final

    # -- upgrade -------------------------------------------------------------------------------------

    @abstractmethod
    def credential_error(self, headers: Headers) -> tuple[int, int, str] | None:
        """(HTTP status, error code, message) for bad credentials, or None."""

    def authorize(self, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path not in self.paths:
            return _http_error(http.HTTPStatus.NOT_FOUND, f"no endpoint {path}")
        refused = self.credential_error(request.headers)
        if refused is None or self.auth_error_frame:
            return None
        return _http_error(http.HTTPStatus(refused[0]), refused[2])

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        # Overridden (not just ``authorize``) because the accepted upgrade carries vendor headers.
        self.tolerate_handshake(connection, request)
        response = self.authorize(request) or connection.protocol.accept(request)
        response.headers[LOGID_HEADER] = _log_id()
        if response.status_code == http.HTTPStatus.SWITCHING_PROTOCOLS and "X-Api-Connect-Id" in request.headers:
            response.headers["X-Api-Connect-Id"] = request.headers["X-Api-Connect-Id"]
        return response

    # -- one stream ----------------------------------------------------------------------------------

    async def handle(self, connection: ServerConnection) -> None:
        record = self.new_record(connection)
        request = connection.request
        response = connection.response
        assert request is not None and response is not None
        stream = _Stream(
            record=record,
            recognizer=self.new_recognizer(),
            log_id=response.headers.get(LOGID_HEADER, ""),
            mode=self.paths[urlsplit(request.path).path],
        )
        refused = self.credential_error(request.headers)
        if refused is not None:
            await self._fail(connection, refused[1], refused[2])
            return
        try:
            if not await self._open(connection, stream):
                return
            while True:
                message = await self.receive(connection, record)
                if not await self._packet(connection, stream, message):
                    return
        except TimeoutError:
            limit = self.idle_timeout or 0.0
            text = f"[Timeout waiting next packet] waiting next packet timeout: {limit:.6f} seconds, session has ended"
            with contextlib.suppress(ConnectionClosed):
                await connection.send(error_frame(IDLE_TIMEOUT, text))
                await connection.close()

    async def _open(self, connection: ServerConnection, stream: _Stream) -> bool:
        """Read and answer the full client request; False when the stream ended."""
        record = stream.record
        message = await self.receive(connection, record)
        try:
            frame = parse_client_frame(message)
            if frame.message_type != FULL_CLIENT_REQUEST:
                raise ClientFrameError(f"first message is type {frame.message_type:#06b}, not a full client request")
            if frame.flags & LAST_NO_SEQUENCE:
                raise ClientFrameError("full client request flagged as the last packet")
            if frame.serialization != JSON_SERIALIZATION:
                raise ClientFrameError("full client request not serialized as JSON")
            try:
                document = json.loads(frame.payload)
            except (ValueError, RecursionError):
                raise ClientFrameError("full client request payload is not JSON") from None
        except ClientFrameError as exc:
            self.violation(record, str(exc))
            await self._fail(connection, exc.code, f"invalid request params: {exc}")
            return False
        problem = _check_request(document)
        if problem is not None:
            if problem[1] == INVALID_PARAMS:
                self.violation(record, problem[0])
            await self._fail(connection, problem[1], f"invalid request params: {problem[0]}")
            return False
        stream.sequenced = frame.sequence is not None
        stream.frames = 1
        if frame.sequence is not None and frame.sequence != 1:
            self.violation(record, f"full client request has sequence {frame.sequence}, expected 1")
        stream.compression = frame.compression
        stream.audio_format = document["audio"]["format"]
        stream.wav_header = WavHeaderStripper() if stream.audio_format == "wav" else None
        stream.show_utterances = document["request"].get("show_utterances", False) is True
        stream.single = document["request"].get("result_type", "full") == "single"
        if self.fault_active(record, Fault.ERROR_AT_START):
            record.fault_applied = True
            await self._fail(connection, SERVER_BUSY, "server busy")
            return False
        # The answer to the full request carries no result yet, only the log id.
        acknowledgement = {"result": {"additions": self._additions(stream)}}
        await self._respond(connection, stream, last=False, document=acknowledgement)
        return True

    async def _packet(self, connection: ServerConnection, stream: _Stream, message: str | bytes) -> bool:
        """Handle one audio-only request; False when the stream ended."""
        record = stream.record
        try:
            frame = parse_client_frame(message)
            if frame.message_type == FULL_CLIENT_REQUEST:
                raise ClientFrameError("duplicate full client request")
            if frame.message_type != AUDIO_ONLY_REQUEST:
                raise ClientFrameError(f"message type {frame.message_type:#06b} where audio-only requests belong")
        except ClientFrameError as exc:
            self.violation(record, str(exc))
            await self._fail(connection, exc.code, f"invalid request params: {exc}")
            return False
        last = bool(frame.flags & LAST_NO_SEQUENCE)
        self._check_sequence(stream, frame, last)
        pcm = frame.payload
        if stream.wav_header is not None:
            pcm = stream.wav_header.feed(pcm) + (stream.wav_header.flush() if last else b"")
        record.add_pcm(pcm)
        stream.audio_bytes += len(pcm)
        changed = self._apply(stream, stream.recognizer.feed(pcm))
        if not await self.after_audio(connection, record):
            await self.drain_stalled(connection)
            return False
        if last:
            self._apply(stream, stream.recognizer.flush())
            await self.before_final(record)
            await self._respond(connection, stream, last=True, document=self._result(stream))
            record.completed = True
            await self._after_final(connection, stream)
            return False
        if stream.mode is AnswerMode.EVERY_PACKET or (changed and stream.mode is AnswerMode.ON_CHANGE):
            await self._respond(connection, stream, last=False, document=self._result(stream))
        return True

    def _check_sequence(self, stream: _Stream, frame: ClientFrame, last: bool) -> None:
        """Numbering follows the full client request: none, or 1 for it, 2…N for audio, -(N+1) for the last."""
        record = stream.record
        stream.frames += 1
        if stream.sequenced != (frame.sequence is not None):
            numbered = "numbers" if frame.sequence is not None else "does not number"
            self.violation(record, f"audio packet {numbered} its frames, unlike the full client request")
        if frame.sequence is None or not stream.sequenced:
            return
        wanted = -stream.frames if last else stream.frames
        if frame.sequence != wanted:
            self.violation(record, f"audio packet sequence {frame.sequence}, expected {wanted}")

    async def _after_final(self, connection: ServerConnection, stream: _Stream) -> None:
        if self.close_after_final:
            await connection.close()
            return
        # The socket stays open: the client must close it, and must not send anything more.
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            async with asyncio.timeout(self.idle_timeout):
                async for _ in connection:
                    self.violation(stream.record, "message after the last packet")
        await connection.close()

    async def _fail(self, connection: ServerConnection, code: int, text: str) -> None:
        """Send an error frame. The service leaves the socket open after errors (observed): linger until the
        client closes it, or the idle limit passes."""
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            await connection.send(error_frame(code, text))
            async with asyncio.timeout(self.idle_timeout):
                async for _ in connection:
                    pass
        await connection.close()

    # -- recognition and results --------------------------------------------------------------------

    def _apply(self, stream: _Stream, events: list[SimEvent]) -> bool:
        """Fold recognizer events into the stream; True when the visible result changed."""
        changed = False
        for event in events:
            if isinstance(event, SegmentStarted):
                stream.open_start, stream.open_text = event.start_ms, ""
            elif isinstance(event, SegmentPartial):
                stream.open_start, stream.open_text = event.start_ms, event.text
                changed = True
            elif isinstance(event, SegmentFinal):
                stream.finals.append(event)
                stream.record.finals.append(event.text)
                stream.open_start, stream.open_text = None, ""
                changed = True
        return changed

    def _additions(self, stream: _Stream) -> dict[str, str]:
        return {"log_id": stream.log_id}

    def _result(self, stream: _Stream) -> dict[str, Any]:
        """A response document: cumulative (``full``) or only what is new (``single``)."""
        finals = stream.finals[stream.reported_finals :] if stream.single else stream.finals
        stream.reported_finals = len(stream.finals)
        utterances: list[dict[str, Any]] = [
            {
                "definite": True,
                "start_time": final.start_ms,
                "end_time": final.end_ms,
                "text": final.text,
                "additions": {"fixed_prefix_result": "", "source": "stream"},
            }
            for final in finals
        ]
        if stream.open_start is not None and stream.open_text:
            position = stream.audio_bytes // BYTES_PER_MS
            utterances.append(
                {
                    "definite": False,
                    "start_time": stream.open_start,
                    "end_time": position,
                    "text": stream.open_text,
                }
            )
        elif finals:
            # Observed from the service: a trailing empty utterance with unknown times.
            utterances.append({"definite": False, "start_time": -1, "end_time": -1, "text": ""})
        texts = [u["text"] for u in utterances if u["text"]]
        joiner = " " if any(" " in text.strip() for text in texts) else ""
        result: dict[str, Any] = {"additions": self._additions(stream), "text": joiner.join(texts)}
        if stream.show_utterances:
            result["utterances"] = utterances
        return {"audio_info": {"duration": stream.audio_bytes // BYTES_PER_MS}, "result": result}

    async def _respond(
        self, connection: ServerConnection, stream: _Stream, *, last: bool, document: dict[str, Any]
    ) -> None:
        stream.responses += 1
        flags, sequence = (NEG_SEQUENCE, -stream.responses) if last else (POS_SEQUENCE, stream.responses)
        await connection.send(server_frame(flags, sequence, document, stream.compression))


def _http_error(status: http.HTTPStatus, text: str) -> Response:
    body = json.dumps({"error": text}).encode()
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body)


def _log_id() -> str:
    return uuid.uuid4().hex[:34].upper()


class Zyun360Emulator(SaucEmulator):
    """360 Zyun: ``Authorization: Bearer <key>`` at ``/sauc``; results only when they change."""

    vendor: ClassVar[str] = "zyun360"
    paths: ClassVar[dict[str, AnswerMode]] = {"/sauc": AnswerMode.ON_CHANGE}
    client_tolerance: ClassVar[ClientTolerance] = ClientTolerance(
        client="360's Go demo sends them so", text_as_binary=True
    )

    @property
    def url(self) -> str:
        return f"{self.base_url}/sauc"

    def credential_error(self, headers: Headers) -> tuple[int, int, str] | None:
        authorization = headers.get("Authorization", "")
        scheme, _, key = authorization.partition(" ")
        if not authorization:
            return 401, INVALID_KEY, "missing Authorization header"
        if scheme != "Bearer" or key.strip() not in self.options.api_keys:
            return 401, INVALID_KEY, "Invalid API key"
        return None


class VolcengineEmulator(SaucEmulator):
    """Volcengine: ``X-Api-App-Key`` + ``X-Api-Access-Key`` (or a new-console ``X-Api-Key``) and
    ``X-Api-Resource-Id``; the endpoint path picks when results are sent."""

    vendor: ClassVar[str] = "volcengine"
    paths: ClassVar[dict[str, AnswerMode]] = {f"/api/v3/sauc/{mode.value}": mode for mode in AnswerMode}

    @property
    def url(self) -> str:
        return f"{self.base_url}/api/v3/sauc/bigmodel_async"

    def credential_error(self, headers: Headers) -> tuple[int, int, str] | None:
        app_key, access_key = headers.get("X-Api-App-Key", ""), headers.get("X-Api-Access-Key", "")
        api_key = headers.get("X-Api-Key", "")
        if api_key:
            if api_key not in self.options.api_keys:
                return 401, INVALID_KEY, "Invalid X-Api-Key"
        elif not app_key or not access_key:
            return 401, INVALID_KEY, "missing X-Api-App-Key or X-Api-Access-Key"
        elif access_key not in self.options.api_keys:
            return 401, INVALID_KEY, "Invalid X-Api-Access-Key"
        if headers.get("X-Api-Resource-Id", "") not in VOLCENGINE_RESOURCES:
            return 403, RESOURCE_NOT_GRANTED, "requested resource not granted"
        return None
