"""Tiro / Talgreinir emulator, written from ``docs/protocols/tiro.md``.

It behaves like tiro-speech-core's ``StreamingRecognize`` behind a grpc-gateway WebSocket proxy:

* the token is checked at the upgrade (HTTP 401) or, as an option, answered with a code-16 error line;
* each client text frame is decoded like protojson does (lowerCamelCase or snake_case names, quoted
  integers, unknown fields discarded, duplicate or conflicting oneof fields refused);
* only the first message is validated (config only, LINEAR16, a loaded language, max alternatives), with the
  server's exact field violations in a ``types.talgreinir.is/google.rpc.BadRequest`` detail;
* later messages are not validated: any message without audio (``{"audioContent":""}``, the bytes ``END``, a
  second config, ``{}``) ends the stream, exactly as the server's read loop does;
* a decoder works through the received audio on its own clock (at most ``decode_speed`` times real time);
  interim results are throttled by wall-clock time and sent only when the hypothesis changed, also when no
  client message arrives; one final per segment, with word times from the start of the stream; pure silence
  gets no message at all;
* the stream ends by closing the socket without a close frame (as gorilla's ``conn.Close()``), or with 1000.

Client mistakes are recorded as violations; the answer is what the vendor would send.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .base import (
    BYTES_PER_MS,
    SAMPLE_RATE,
    Emulator,
    EmulatorOptions,
    Fault,
    SegmentFinal,
    SegmentPartial,
    SegmentStarted,
    StreamRecord,
)

PATH = "/v2beta1/speech:streamingrecognize"

# google.rpc.Code values the server uses.
INVALID_ARGUMENT = 3
INTERNAL = 13
UNAUTHENTICATED = 16

BAD_REQUEST_TYPE = "types.talgreinir.is/google.rpc.BadRequest"
INVALID_REQUEST = "Invalid request. See details"
UNKNOWN_ERROR = "Unknown error in StreamingRecognize."

ENCODINGS = {"ENCODING_UNSPECIFIED": 0, "LINEAR16": 1, "FLAC": 2, "MP3": 8}
LINEAR16 = ENCODINGS["LINEAR16"]

# The decoder works through queued audio in steps of this much audio.
DECODE_STEP_MS = 100

AuthFailure = Literal["http", "error_line"]
CloseMode = Literal["abrupt", "normal"]


# ---------------------------------------------------------------------------------------------------------
# Decoding client messages the way protojson does


class DecodeError(Exception):
    """The proxy could not turn the frame into a request (grpc-gateway answers INVALID_ARGUMENT)."""


@dataclass
class RecognitionConfig:
    encoding: int = 0
    sample_rate_hertz: int = 0
    language_code: str = ""
    max_alternatives: int = 0
    enable_word_time_offsets: bool = False
    enable_automatic_punctuation: bool = False


@dataclass
class StreamingConfig:
    config: RecognitionConfig | None = None
    single_utterance: bool = False
    interim_results: bool = False


@dataclass
class StreamingRequest:
    streaming_config: StreamingConfig | None = None
    audio_content: bytes | None = None
    # Fields the decoder discarded (the vendor ignores them silently; a typo such as ``sampleRate``).
    unknown: list[str] = field(default_factory=list)
    # Base64 the decoder accepted although it is not the canonical padded standard alphabet.
    loose_base64: bool = False


# JSON name → (proto name, kind). protojson accepts both names.
_REQUEST_FIELDS = {
    "streamingConfig": ("streaming_config", "message"),
    "audioContent": ("audio_content", "bytes"),
}
_STREAMING_CONFIG_FIELDS = {
    "config": ("config", "message"),
    "singleUtterance": ("single_utterance", "bool"),
    "interimResults": ("interim_results", "bool"),
}
_CONFIG_FIELDS = {
    "encoding": ("encoding", "encoding"),
    "sampleRateHertz": ("sample_rate_hertz", "int32"),
    "languageCode": ("language_code", "string"),
    "maxAlternatives": ("max_alternatives", "int32"),
    "enableWordTimeOffsets": ("enable_word_time_offsets", "bool"),
    "enableAutomaticPunctuation": ("enable_automatic_punctuation", "bool"),
    # Messages the server does not read; only their shape is checked.
    "metadata": ("metadata", "object"),
    "diarizationConfig": ("diarization_config", "object"),
}


def _pairs_refusing_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise DecodeError(f'proto: duplicate field "{key}"')
        seen[key] = value
    return seen


def _fields(
    obj: dict[str, object], schema: dict[str, tuple[str, str]], path: str, unknown: list[str]
) -> dict[str, tuple[object, str]]:
    """Proto field name → (JSON value, kind), null values dropped; unknown names collected, not refused."""
    by_name = {json_name: json_name for json_name in schema} | {
        proto: json_name for json_name, (proto, _) in schema.items()
    }
    found: dict[str, tuple[object, str]] = {}
    for key, value in obj.items():
        json_name = by_name.get(key)
        if json_name is None:
            unknown.append(f"{path}{key}")
            continue
        proto, kind = schema[json_name]
        if proto in found:
            raise DecodeError(f'proto: duplicate field "{key}"')
        if value is None:
            continue
        found[proto] = (value, kind)
    return found


def _int32(name: str, value: object) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        # protojson accepts integers in quotes ("16000").
        number = int(value)
    if number is None or not -(2**31) <= number < 2**31:
        raise DecodeError(f"proto: invalid value for int32 field {name}: {json.dumps(value)}")
    return number


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise DecodeError(f"proto: invalid value for bool field {name}: {json.dumps(value)}")
    return value


def _string(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise DecodeError(f"proto: invalid value for string field {name}: {json.dumps(value)}")
    return value


def _bytes(name: str, value: object) -> tuple[bytes, bool]:
    """Decoded bytes and whether the encoding was loose (protojson accepts URL-safe and unpadded base64)."""
    text = _string(name, value)
    try:
        return base64.b64decode(text, validate=True), False
    except (binascii.Error, ValueError):
        pass
    loose = text.replace("-", "+").replace("_", "/")
    loose += "=" * (-len(loose) % 4)
    try:
        return base64.b64decode(loose, validate=True), True
    except (binascii.Error, ValueError):
        raise DecodeError(f"proto: invalid value for bytes field {name}: {json.dumps(value)}") from None


def _encoding(value: object) -> int:
    if isinstance(value, str):
        if value not in ENCODINGS:
            raise DecodeError(f"proto: invalid value for enum field encoding: {json.dumps(value)}")
        return ENCODINGS[value]
    return _int32("encoding", value)


def _recognition_config(obj: dict[str, object], unknown: list[str]) -> RecognitionConfig:
    config = RecognitionConfig()
    for name, (value, kind) in _fields(obj, _CONFIG_FIELDS, "streamingConfig.config.", unknown).items():
        if kind == "object":
            if not isinstance(value, dict):
                raise DecodeError(f"proto: invalid value for message field {name}: {json.dumps(value)}")
        elif kind == "encoding":
            config.encoding = _encoding(value)
        elif kind == "int32":
            setattr(config, name, _int32(name, value))
        elif kind == "bool":
            setattr(config, name, _bool(name, value))
        else:
            config.language_code = _string(name, value)
    return config


def _streaming_config(obj: object, unknown: list[str]) -> StreamingConfig:
    if not isinstance(obj, dict):
        raise DecodeError(f"proto: invalid value for message field streaming_config: {json.dumps(obj)}")
    streaming = StreamingConfig()
    for name, (value, _kind) in _fields(obj, _STREAMING_CONFIG_FIELDS, "streamingConfig.", unknown).items():
        if name == "config":
            if not isinstance(value, dict):
                raise DecodeError(f"proto: invalid value for message field config: {json.dumps(value)}")
            streaming.config = _recognition_config(value, unknown)
        else:
            setattr(streaming, name, _bool(name, value))
    return streaming


def decode_request(frame: str | bytes) -> StreamingRequest:
    """One client frame as a StreamingRecognizeRequest; ``DecodeError`` where grpc-gateway would refuse it."""
    try:
        text = frame.decode("utf-8") if isinstance(frame, bytes) else frame
        obj = json.loads(text, object_pairs_hook=_pairs_refusing_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DecodeError("proto: syntax error: invalid JSON") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"proto: syntax error: unexpected token {json.dumps(obj)[:40]}")
    request = StreamingRequest()
    found = _fields(obj, _REQUEST_FIELDS, "", request.unknown)
    if len(found) > 1:
        raise DecodeError(
            'proto: error parsing "audioContent", oneof tiro.speech.v1alpha.StreamingRecognizeRequest'
            ".streaming_request is already set"
        )
    if "streaming_config" in found:
        request.streaming_config = _streaming_config(found["streaming_config"][0], request.unknown)
    if "audio_content" in found:
        request.audio_content, request.loose_base64 = _bytes("audio_content", found["audio_content"][0])
    return request


# ---------------------------------------------------------------------------------------------------------
# Validation of the first message (tiro-speech-core validation.cc)


def validate_first(request: StreamingRequest, language_codes: Sequence[str]) -> list[tuple[str, str]]:
    """Field violations for the first message of a stream, in the server's order."""
    if request.streaming_config is None and request.audio_content is None:
        return [("oneof_streaming_request", "Either 'streaming_config' or 'audio_content' needs to be set.")]
    if request.streaming_config is None:
        return [("audio_content", "First message can only contain the field 'streaming_config'")]
    config = request.streaming_config.config
    if config is None:
        return [("streaming_config.config", "Required field 'streaming_config.config' missing")]
    errors: list[tuple[str, str]] = []
    if config.encoding != LINEAR16:
        errors.append(
            (
                "streaming_config.config.encoding",
                "LINEAR16 currently only supported encoding for StreamingRecognize",
            )
        )
    config_errors: list[tuple[str, str]] = []
    if config.encoding == 0:
        config_errors.append(("encoding", "The field 'encoding' must be specified."))
    elif config.encoding not in ENCODINGS.values():
        config_errors.append(("encoding", "Unsupported encoding specified."))
    if not config.language_code:
        config_errors.append(("language_code", "Field 'language_code' is required. "))
    elif config.language_code not in language_codes:
        config_errors.append(
            ("language_code", f"Unsupported value '{config.language_code}' for field 'language_code'.")
        )
    if not 0 <= config.max_alternatives <= 30:
        config_errors.append(("max_alternatives", "Valid values for field 'max_alternatives' are in range [1;30]"))
    if config_errors:
        errors.append(
            (
                "streaming_config.config",
                "Error validating field 'streaming_config.config'. See error details.",
            )
        )
        errors.extend((f"streaming_config.config.{name}", text) for name, text in config_errors)
    return errors


# ---------------------------------------------------------------------------------------------------------
# Server messages


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def error_line(code: int, message: str, violations: Sequence[tuple[str, str]] = ()) -> str:
    """grpc-gateway's streaming error envelope around a google.rpc.Status."""
    details: list[object] = []
    if violations:
        details.append(
            {
                "@type": BAD_REQUEST_TYPE,
                "fieldViolations": [{"field": name, "description": text} for name, text in violations],
            }
        )
    return _dumps({"error": {"code": code, "message": message, "details": details}})


def duration(ms: int) -> str:
    """protojson Duration: whole seconds, or three fractional digits."""
    seconds, millis = divmod(max(ms, 0), 1000)
    return f"{seconds}s" if millis == 0 else f"{seconds}.{millis:03d}s"


def word_infos(text: str, start_ms: int, end_ms: int) -> list[dict[str, object]]:
    """WordInfo for each word, spread evenly over the segment (the emulator has no real alignment)."""
    words = text.split()
    if not words:
        return []
    step = max(end_ms - start_ms, 0) / len(words)
    infos: list[dict[str, object]] = []
    for i, word in enumerate(words):
        begin = start_ms + round(i * step)
        finish = start_ms + round((i + 1) * step)
        infos.append(
            {
                "startTime": duration(begin),
                "endTime": duration(finish),
                "word": word,
                "confidence": 0,
                "speakerTag": 0,
            }
        )
    return infos


def result_line(text: str, *, is_final: bool, words: list[dict[str, object]] | None) -> str:
    """``{"result": StreamingRecognizeResponse}`` with unpopulated fields emitted, as grpc-gateway v2 does."""
    alternative = {"transcript": text, "confidence": 0, "words": words or []}
    response = {
        "error": None,
        "results": [{"alternatives": [alternative], "isFinal": is_final, "stability": 0}],
        "speechEventType": "SPEECH_EVENT_UNSPECIFIED",
    }
    return _dumps({"result": response})


END_OF_SINGLE_UTTERANCE = _dumps(
    {"result": {"error": None, "results": [], "speechEventType": "END_OF_SINGLE_UTTERANCE"}}
)

_PUNCTUATION = re.compile(r"[^\w\s'-]+")


def unpunctuated(text: str) -> str:
    """What the recogniser says without the punctuation model: lower case, no punctuation."""
    return " ".join(_PUNCTUATION.sub(" ", text).lower().split())


# ---------------------------------------------------------------------------------------------------------
# The emulator


class TiroEmulator(Emulator):
    """Tiro's StreamingRecognize over WebSocket (``asr-daemon emulate tiro``)."""

    vendor: ClassVar[str] = "tiro"
    default_script: ClassVar[tuple[str, ...]] = ("Halló, heimur.", "Gera lítið úr meintri spennu.")
    # tiro-speech-core has no idle limit; a deployment's proxy may (IDLE_TIMEOUT fault emulates that).
    vendor_idle_timeout: ClassVar[float | None] = None

    def __init__(
        self,
        options: EmulatorOptions | None = None,
        *,
        auth_failure: AuthFailure = "http",
        close_mode: CloseMode = "abrupt",
        interim_interval: float = 0.35,
        decode_speed: float = 4.0,
        language_codes: Sequence[str] = ("is-IS", "is-IS-x-exp"),
    ) -> None:
        super().__init__(options)
        # How a bad token is refused: HTTP 401 at the upgrade, or a code-16 error line after it.
        self.auth_failure: AuthFailure = auth_failure
        # How a stream ends: TCP close without a close frame (stock grpc-websocket-proxy), or close code 1000.
        self.close_mode: CloseMode = close_mode
        # Seconds between interim results (the server's 350 ms); 0 sends every change.
        self.interim_interval = interim_interval
        # How many times faster than real time the decoder works through audio a client sent ahead; 0: at once.
        self.decode_speed = decode_speed
        self.language_codes = tuple(language_codes)
        # Upgrades refused for a bad token or path (they never become streams).
        self.rejected_upgrades = 0

    @property
    def url(self) -> str:
        return f"{self.base_url}{PATH}"

    # -- upgrade -----------------------------------------------------------------------------------------

    def _token_ok(self, path: str) -> bool:
        tokens = [v for k, v in parse_qsl(urlsplit(path).query, keep_blank_values=True) if k == "token"]
        return len(tokens) == 1 and tokens[0] in self.options.api_keys

    def authorize(self, request: Request) -> Response | None:
        if urlsplit(request.path).path != PATH:
            self.rejected_upgrades += 1
            return _http_response(404, "Not Found", {"code": 5, "message": "Not Found", "details": []})
        if self.auth_failure == "http" and not self._token_ok(request.path):
            self.rejected_upgrades += 1
            return _http_response(
                401,
                "Unauthorized",
                {"code": UNAUTHENTICATED, "message": "invalid or missing token", "details": []},
            )
        return None

    # -- one stream ----------------------------------------------------------------------------------------

    async def handle(self, connection: ServerConnection) -> None:
        record = self.new_record(connection)
        request_path = connection.request.path if connection.request is not None else ""
        if not self._token_ok(request_path):
            self.violation(record, "invalid or missing token")
            await self._fail(connection, error_line(UNAUTHENTICATED, "invalid or missing token"))
            return
        first = await self._next_request(connection, record)
        if first is None:
            return
        errors = validate_first(first, self.language_codes)
        if errors:
            for name, text in errors:
                self.violation(record, f"first message refused: {name}: {text}")
            await self._fail(connection, error_line(INVALID_ARGUMENT, INVALID_REQUEST, errors))
            return
        assert first.streaming_config is not None and first.streaming_config.config is not None
        streaming = first.streaming_config
        config = first.streaming_config.config
        if not 8000 <= config.sample_rate_hertz <= 48000:
            # The server does not validate the rate; its resampler fails on such a value.
            self.violation(record, f"sampleRateHertz {config.sample_rate_hertz} is outside 8000-48000")
            await self._fail(connection, error_line(INTERNAL, UNKNOWN_ERROR))
            return
        if config.sample_rate_hertz != SAMPLE_RATE:
            self.violation(record, f"sampleRateHertz {config.sample_rate_hertz}: the emulator recognises 16000 only")
        if self.fault_active(record, Fault.ERROR_AT_START):
            record.fault_applied = True
            await self._fail(connection, error_line(INTERNAL, UNKNOWN_ERROR))
            return
        await self._recognise(connection, record, streaming, config)

    async def _recognise(
        self,
        connection: ServerConnection,
        record: StreamRecord,
        streaming: StreamingConfig,
        config: RecognitionConfig,
    ) -> None:
        """Read the client's audio into a queue while a decoder works through it on its own clock."""
        decoder = _Decoder(self, connection, record, streaming, config)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        decoding = asyncio.create_task(decoder.run(queue))
        reading = asyncio.create_task(self._read_audio(connection, record, queue))
        try:
            done, _ = await asyncio.wait((decoding, reading), return_when=asyncio.FIRST_COMPLETED)
            if reading in done and reading.result():
                await decoding
        finally:
            for task in (reading, decoding):
                task.cancel()
            await asyncio.gather(reading, decoding, return_exceptions=True)

    async def _read_audio(
        self, connection: ServerConnection, record: StreamRecord, queue: asyncio.Queue[bytes | None]
    ) -> bool:
        """Queue the client's audio; True when the end marker arrived (the decoder then finishes)."""
        while True:
            request = await self._next_request(connection, record)
            if request is None:
                return False
            audio = request.audio_content
            if not audio or audio == b"END":
                # The server's read loop: no audio (end marker, a second config, {}) ends the stream.
                if request.streaming_config is not None:
                    self.violation(record, "streamingConfig after the first message (the vendor ends the stream)")
                elif audio is None:
                    self.violation(record, "message with neither audioContent nor streamingConfig (ends the stream)")
                queue.put_nowait(None)
                return True
            if len(audio) % 2:
                self.violation(record, f"audio chunk of {len(audio)} bytes is not whole 16-bit samples")
            record.add_pcm(audio)
            if not await self.after_audio(connection, record):
                if self.fault_active(record, Fault.STALL):
                    await self.drain_stalled(connection)
                return False
            queue.put_nowait(audio)

    async def _next_request(self, connection: ServerConnection, record: StreamRecord) -> StreamingRequest | None:
        """The next decoded request; None once the stream is over (refused or idle cut). A client close raises."""
        try:
            frame = await self.receive(connection, record)
        except TimeoutError:
            # A deployment proxy's idle cut: the TCP connection goes, with no close frame and no error line.
            record.fault_applied = self.options.fault is Fault.IDLE_TIMEOUT
            self._logger.info("idle cut of stream %d after %s s without data", record.index, self.idle_timeout)
            connection.transport.abort()
            return None
        if isinstance(frame, bytes):
            self.violation(record, "binary frame (Tiro expects JSON in text frames)")
        try:
            request = decode_request(frame)
        except DecodeError as exc:
            self.violation(record, f"undecodable message: {exc}")
            await self._fail(connection, error_line(INVALID_ARGUMENT, str(exc)))
            return None
        for name in request.unknown:
            self.violation(record, f"unknown field {name!r} (the vendor ignores it silently)")
        if request.loose_base64:
            self.violation(record, "audioContent is not padded standard base64")
        return request

    async def _fail(self, connection: ServerConnection, line: str) -> None:
        await connection.send(line)
        await self._close(connection)

    async def _close(self, connection: ServerConnection) -> None:
        if self.close_mode == "normal":
            await connection.close(1000)
        else:
            # gorilla's conn.Close(): the pending data is flushed, then TCP closes; no WebSocket close frame.
            connection.transport.close()


class _Decoder:
    """One stream's recogniser, working through the queued audio no faster than ``decode_speed`` times real
    time (a streaming decoder has a finite speed), in ``DECODE_STEP_MS`` steps. As tiro-speech-core does, an
    interim result goes out when the hypothesis changed and ``interim_interval`` passed since the last one
    (or since the segment began); a change held back by that interval goes out when it ends, even when no
    more audio comes. So a client that sends faster than real time still sees interims."""

    def __init__(
        self,
        emulator: TiroEmulator,
        connection: ServerConnection,
        record: StreamRecord,
        streaming: StreamingConfig,
        config: RecognitionConfig,
    ) -> None:
        self._emulator = emulator
        self._connection = connection
        self._record = record
        self._streaming = streaming
        self._recognizer = emulator.new_recognizer(record)
        self._punctuate = config.enable_automatic_punctuation
        self._words_wanted = config.enable_word_time_offsets
        self._hypothesis = ""
        self._last_sent = ""
        self._segment_start_ms = 0
        self._started = time.monotonic()
        self._last_interim_at = self._started
        self._decoded_ms = 0
        self.ended = False

    async def run(self, queue: asyncio.Queue[bytes | None]) -> None:
        step = DECODE_STEP_MS * BYTES_PER_MS
        while True:
            audio = await self._next_audio(queue)
            if audio is None:
                break
            for offset in range(0, len(audio), step):
                await self._pace()
                piece = audio[offset : offset + step]
                self._decoded_ms += len(piece) // BYTES_PER_MS
                if await self._decode(piece):
                    return
        await self._emulator.before_final(self._record)
        for event in self._recognizer.flush():
            if isinstance(event, SegmentFinal):
                await self._send_final(event)
                if self._streaming.single_utterance:
                    await self._connection.send(END_OF_SINGLE_UTTERANCE)
        self._record.completed = True
        await self._emulator._close(self._connection)

    async def _next_audio(self, queue: asyncio.Queue[bytes | None]) -> bytes | None:
        """The next queued audio; meanwhile, an interim the interval held back goes out when it ends."""
        while self._pending_interim() and queue.empty():
            wait = self._last_interim_at + self._emulator.interim_interval - time.monotonic()
            try:
                return await asyncio.wait_for(queue.get(), max(wait, 0.0))
            except TimeoutError:
                await self._maybe_interim()
        return await queue.get()

    async def _pace(self) -> None:
        speed = self._emulator.decode_speed
        if speed <= 0:
            return
        due = self._started + self._decoded_ms / 1000 / speed
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _decode(self, pcm: bytes) -> bool:
        """Decode one step; True when the stream ended (single utterance)."""
        for event in self._recognizer.feed(pcm):
            if isinstance(event, SegmentStarted):
                self._hypothesis = self._last_sent = ""
                self._segment_start_ms = event.start_ms
            elif isinstance(event, SegmentPartial):
                self._hypothesis = self._shown(event.text)
                self._segment_start_ms = event.start_ms
            else:
                await self._send_final(event)
                self._hypothesis = self._last_sent = ""
                # The server's next segment starts its interim clock now.
                self._last_interim_at = time.monotonic()
                if self._streaming.single_utterance:
                    await self._connection.send(END_OF_SINGLE_UTTERANCE)
                    self._record.completed = True
                    await self._emulator._close(self._connection)
                    return True
        await self._maybe_interim()
        return False

    def _pending_interim(self) -> bool:
        return (
            self._streaming.interim_results
            and self._recognizer.in_speech
            and self._hypothesis != self._last_sent
            and self._hypothesis != ""
        )

    async def _maybe_interim(self) -> None:
        now = time.monotonic()
        if not self._pending_interim() or now - self._last_interim_at < self._emulator.interim_interval:
            return
        words = None
        if self._words_wanted:
            words = word_infos(self._hypothesis, self._segment_start_ms, self._recognizer.position_ms)
        await self._connection.send(result_line(self._hypothesis, is_final=False, words=words))
        self._last_sent = self._hypothesis
        self._last_interim_at = now

    async def _send_final(self, event: SegmentFinal) -> None:
        text = self._shown(event.text)
        words = word_infos(text, event.start_ms, event.end_ms) if self._words_wanted else None
        self._record.finals.append(text)
        await self._connection.send(result_line(text, is_final=True, words=words))

    def _shown(self, text: str) -> str:
        return text if self._punctuate else unpunctuated(text)


def _http_response(status: int, reason: str, body: dict[str, object]) -> Response:
    payload = _dumps(body).encode()
    headers = Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            ("Connection", "close"),
        ]
    )
    return Response(status, reason, headers, payload)
