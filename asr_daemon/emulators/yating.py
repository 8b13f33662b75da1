"""Emulator of Yating's streaming ASR (token endpoint + WebSocket), from ``docs/protocols/yating.md``.

Two listeners, because the vendor has two endpoints and the WebSocket server only answers GET upgrades
(the token endpoint listens on ``token_port``; by default the WebSocket port + 1, or any free port when the
WebSocket port is 0):

* ``token_url`` (``POST /v1/token`` on a small HTTP/1.1 listener of its own): needs a ``key`` header holding
  one of ``options.api_keys`` (else 401) and a JSON body ``{"pipeline": ..., "options": {...}}`` with a
  documented pipeline (else 400 and a violation). Answers 201 ``{"success": true, "auth_token": ...}``; the
  token is good for one connection within ``token_ttl`` seconds (60, as documented).
* ``url`` (``ws://.../ws/v1/?token=...``): an unknown, used or expired token is answered in-band with
  ``{"status": "error", "detail": ...}`` and the connection is closed ``error_close_delay`` seconds later (3,
  as documented). Otherwise, after ``greeting_delay`` (the vendor's pipeline takes a moment to start), the
  greeting ``{"status": "ok", "ssid": ..., "message_type": "session_started"}`` (``greeting="bare"``: the
  older ``{"status": "ok"}``).

Then, per binary frame of PCM (16 kHz s16le mono): ``first_chunk_received`` once, ``utterance_begin``,
cumulative ``asr_sentence`` partials, a final with the full field set, ``utterance_end``. One empty binary
frame ends the stream: the pending final, then ``{"pipe": {"asr_eof": true}}``; the emulator then waits (up to
``eof_close_after`` s) for the client to close.

What the vendor's own SDK (``ailabs-asr``) does against the documentation, accepted and noted on the stream
(the service evidently accepts it):

* Audio before the greeting: the documentation says it breaks the connection, but the SDK starts streaming as
  soon as the socket opens. The audio is held until the greeting and then recognised
  (``early_audio="disconnect"`` applies the documented rule instead: a violation, and a close with 1008).
* Binary frames above the documented 2000 bytes (the SDK sends whatever its audio callback got).

Choices where the vendor's behaviour is undocumented, each a violation recorded on the stream:

* A binary frame of odd length (half a sample); a second empty frame; audio after the empty frame (ignored,
  but counted in ``pcm_bytes``).
* A text frame other than ``{"pipe": {"config": {"liveStreamingCodeSwitch": "<code>"}}}``: answered with a
  status error, closed after ``error_close_delay``.

Faults: ``drop`` cuts TCP; ``stall`` goes silent; ``error_at_start`` per ``start_error``: ``"token"``
(default: the WebSocket answers ``{"status":"error","detail":"invalid token"}``, which a client must treat
as fatal), ``"pipeline"`` (a status error about the pipeline, transient) or ``"http"`` (the token endpoint
answers 503); ``idle_timeout`` sends a status error and closes after that many seconds without a client
message (the vendor's own limit is unknown: none by default); ``slow_final`` delays the answer to the end
frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .base import (
    Emulator,
    EmulatorOptions,
    Fault,
    ScriptedRecognizer,
    SegmentFinal,
    SegmentPartial,
    SegmentStarted,
    SimEvent,
    StreamRecord,
    tokens_of,
)

WS_PATH = "/ws/v1/"
TOKEN_PATH = "/v1/token"
DOCUMENTED_CHUNK = 2000
# Close code when the client breaks the protocol before the session started (policy violation).
POLICY_CLOSE = 1008
# Pipelines the vendor documents, and the legacy general pipeline's ``options.lang`` values.
PIPELINES = frozenset({"asr-zh-en-std", "asr-zh-tw-std", "asr-en-std", "asr-jp-std"})
LEGACY_PIPELINE = "asr-stream-general"
LEGACY_LANGS = frozenset({"zhen", "zhtw", "en", "zhen_offline"})
UNAUTHORIZED = "key does not exist or the key is not available for the service"
EarlyAudio = Literal["accept", "disconnect"]
EARLY_AUDIO_NOTE = "audio before session_started (the vendor's ailabs-asr SDK streams as soon as the socket opens)"
LARGE_FRAME_NOTE = "binary frames above the documented 2000 bytes (the vendor's ailabs-asr SDK sends them)"
# Bounds of the token listener: a request line + headers, and a body.
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
HTTP_READ_TIMEOUT = 10.0

# What each pipeline "recognises" when no script is configured; a final ends with its punctuation, which
# partials never show (the recognizer holds back the last token), as the vendor's examples do.
DEFAULT_SCRIPTS: dict[str, tuple[str, ...]] = {
    "asr-zh-tw-std": ("今天天氣很好。", "我們去公園散步吧。"),
    "asr-zh-en-std": ("今天天氣很好。", "幫我打開客廳的 TV"),
    "asr-en-std": ("turn on the kitchen light", "what is the weather like today"),
    "asr-jp-std": ("今日はいい天気です。", "電気をつけてください。"),
}
_LEGACY_SCRIPT_PIPELINE = {
    "zhen": "asr-zh-en-std",
    "zhen_offline": "asr-zh-en-std",
    "zhtw": "asr-zh-tw-std",
    "en": "asr-en-std",
}
_PUNCTUATION = frozenset("。，、！？；：,.!?;:")


@dataclass
class TokenGrant:
    """One token the endpoint issued."""

    token: str
    pipeline: str
    options: dict[str, Any]
    issued: float
    used: bool = False


@dataclass
class TokenRequest:
    """One request to the token endpoint, for tests."""

    status: int
    pipeline: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)


class YatingEmulator(Emulator):
    vendor: ClassVar[str] = "yating"
    default_script: ClassVar[tuple[str, ...]] = DEFAULT_SCRIPTS["asr-zh-tw-std"]
    vendor_idle_timeout: ClassVar[float | None] = None

    def __init__(
        self,
        options: EmulatorOptions | None = None,
        *,
        token_port: int | None = None,
        token_ttl: float = 60.0,
        greeting_delay: float = 0.05,
        greeting: Literal["session_started", "bare"] = "session_started",
        error_close_delay: float = 3.0,
        eof_close_after: float = 10.0,
        early_audio: EarlyAudio = "accept",
        start_error: Literal["token", "pipeline", "http"] = "token",
    ) -> None:
        super().__init__(options)
        self.token_ttl = token_ttl
        self.greeting_delay = greeting_delay
        self.greeting = greeting
        self.error_close_delay = error_close_delay
        self.eof_close_after = eof_close_after
        self.early_audio: EarlyAudio = early_audio
        self.start_error = start_error
        self.token_requests: list[TokenRequest] = []
        # Stream index → the grant it was opened with (absent when the token was refused).
        self.stream_grants: dict[int, TokenGrant] = {}
        self._grants: dict[str, TokenGrant] = {}
        self._token_port = token_port
        self._http: asyncio.Server | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        await super().start(host, port)
        # A fixed WebSocket port gets the token endpoint on the next one, so a config can be written once.
        token_port = self._token_port if self._token_port is not None else (port + 1 if port else 0)
        try:
            self._http = await asyncio.start_server(
                self._serve_token, host, token_port, limit=MAX_HEAD_BYTES, ssl=self.options.tls
            )
        except OSError:
            await super().stop()
            raise
        self._logger.info("Yating emulator: url %s, token_url %s", self.url, self.token_url)

    async def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http.wait_closed(), 5)
            self._http = None
        await super().stop()

    @property
    def url(self) -> str:
        return f"{self.base_url}{WS_PATH}"

    @property
    def token_url(self) -> str:
        """Configure as ``vendors.yating.token_url``."""
        assert self._http is not None, "emulator not started"
        port = int(self._http.sockets[0].getsockname()[1])
        scheme = "https" if self.options.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{port}{TOKEN_PATH}"

    @property
    def token_violations(self) -> list[str]:
        return [v for request in self.token_requests for v in request.violations]

    # -- the token endpoint -------------------------------------------------------------------------------

    async def _serve_token(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HTTP_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                method, target, headers = _parse_head(head)
                length = int(headers.get("content-length", "0") or "0")
                if length < 0 or length > MAX_BODY_BYTES or "transfer-encoding" in headers:
                    raise ValueError("unsupported body framing")
                body = await reader.readexactly(length)
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            await _respond(writer, 400, {"success": False, "error": "bad request"})
            return
        status, document = self._token_answer(method, target, headers, body)
        await _respond(writer, status, document)

    def _token_answer(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        if urlsplit(target).path != TOKEN_PATH:
            return 404, {"success": False, "error": "not found"}
        if method != "POST":
            return 405, {"success": False, "error": "method not allowed"}
        request = TokenRequest(status=0)
        self.token_requests.append(request)
        status, document = self._grant(request, headers, body)
        request.status = status
        for text in request.violations:
            self._logger.warning("protocol violation in token request: %s", text)
        return status, document

    def _grant(self, request: TokenRequest, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        index = len(self.token_requests) - 1
        faulty = self.options.fault_streams == 0 or index < self.options.fault_streams
        if self.options.fault is Fault.ERROR_AT_START and self.start_error == "http" and faulty:
            self._logger.info("fault: token request %d answered 503", index)
            return 503, {"success": False, "error": "service unavailable"}
        if headers.get("key") not in self.options.api_keys:
            if "key" not in headers:
                request.violations.append("token request without a key header")
            return 401, {"success": False, "error": UNAUTHORIZED}
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            request.violations.append(f"token request Content-Type is {content_type or 'missing'!r}")
            return 400, {"success": False, "error": "Content-Type must be application/json"}
        problem, pipeline, options = _check_token_body(body)
        if problem is not None:
            request.violations.append(problem)
            return 400, {"success": False, "error": problem}
        assert pipeline is not None
        request.pipeline, request.options = pipeline, options
        now = time.monotonic()
        # Forget grants nobody can use any more, so a long-running emulator stays small.
        for token in [t for t, g in self._grants.items() if now - g.issued > 2 * self.token_ttl]:
            del self._grants[token]
        token = secrets.token_hex(20)
        self._grants[token] = TokenGrant(token, pipeline, options, now)
        return 201, {"success": True, "auth_token": token}

    def _redeem(self, token: str | None) -> tuple[TokenGrant | None, str]:
        """The grant a WebSocket token stands for, or None and why it is refused."""
        grant = self._grants.get(token) if token else None
        if grant is None:
            return None, "invalid token"
        if grant.used:
            return None, "token has already been used"
        if time.monotonic() - grant.issued > self.token_ttl:
            return None, "token expired"
        grant.used = True
        return grant, ""

    # -- the WebSocket ------------------------------------------------------------------------------------

    def authorize(self, request: Request) -> Response | None:
        if urlsplit(request.path).path != WS_PATH:
            return _http_response(404, {"detail": "Not Found"})
        return None

    async def handle(self, connection: ServerConnection) -> None:
        record = self.new_record(connection)
        request = connection.request
        query = parse_qs(urlsplit(request.path).query) if request is not None else {}
        tokens = query.get("token", [])
        grant, refusal = self._redeem(tokens[0] if len(tokens) == 1 else None)
        if grant is None:
            self._logger.info("stream %d: refusing the token (%s)", record.index, refusal)
            await self._fail(connection, record, refusal)
            return
        self.stream_grants[record.index] = grant
        if self.fault_active(record, Fault.ERROR_AT_START) and self.start_error != "http":
            record.fault_applied = True
            detail = "invalid token" if self.start_error == "token" else "asr pipeline failed to start"
            self._logger.info("fault: stream %d answered %r", record.index, detail)
            await self._fail(connection, record, detail)
            return
        early = await self._early_messages(connection, record)
        if early is None:
            return
        greeting: dict[str, str] = {"status": "ok"}
        if self.greeting == "session_started":
            greeting |= {"ssid": uuid.uuid4().hex, "message_type": "session_started"}
        await _send(connection, greeting)
        stream = _ResultStream(connection, record, self._script_for(grant))
        for message in early:
            if not await self._on_message(connection, record, stream, message):
                return
        while not stream.ended:
            try:
                message = await self.receive(connection, record)
            except TimeoutError:
                timeout = self.idle_timeout or 0
                self._logger.info("stream %d: idle timeout", record.index)
                await self._fail(connection, record, f"timeout: no data received for {timeout:g} seconds")
                return
            if not await self._on_message(connection, record, stream, message):
                return
        await self._after_eof(connection, record)

    async def _early_messages(self, connection: ServerConnection, record: StreamRecord) -> list[str | bytes] | None:
        """What the client sends while the pipeline starts (None when that ended the stream)."""
        early: list[str | bytes] = []
        deadline = time.monotonic() + self.greeting_delay
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = await asyncio.wait_for(connection.recv(), left)
            except TimeoutError:
                break
            record.messages_in += 1
            early.append(message)
            if isinstance(message, bytes):
                if self.early_audio == "accept":
                    self.note(record, EARLY_AUDIO_NOTE)
                    continue
                self.violation(record, f"sent {len(message)} bytes of audio before session_started")
                record.add_pcm(message)
                await connection.close(POLICY_CLOSE, "audio before session_started")
                return None
        return early

    async def _on_message(
        self, connection: ServerConnection, record: StreamRecord, stream: _ResultStream, message: str | bytes
    ) -> bool:
        """Handle one client message; False when the stream is over (failed, dropped or stalled)."""
        if isinstance(message, str):
            problem = _text_problem(message)
            if problem is None:
                return True
            self.violation(record, problem)
            await self._fail(connection, record, "invalid message")
            return False
        if not message:
            await self.before_final(record)
            await stream.finish()
            record.completed = True
            return True
        if len(message) % 2:
            self.violation(record, f"binary frame of {len(message)} bytes is not whole 16-bit samples")
        if len(message) > DOCUMENTED_CHUNK:
            self.note(record, LARGE_FRAME_NOTE)
        record.add_pcm(message)
        if not await self.after_audio(connection, record):
            if self.fault_active(record, Fault.STALL):
                await self.drain_stalled(connection)
            return False
        await stream.audio(message)
        return True

    async def _after_eof(self, connection: ServerConnection, record: StreamRecord) -> None:
        """Everything is said: wait for the client to close; whatever it still sends is a violation."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.eof_close_after):
                async for message in connection:
                    record.messages_in += 1
                    if isinstance(message, bytes):
                        record.add_pcm(message)
                        what = f"{len(message)} bytes of audio" if message else "a second empty binary frame"
                    else:
                        what = "a text frame"
                    self.violation(record, f"sent {what} after the end of the stream")
        await connection.close()

    async def _fail(self, connection: ServerConnection, record: StreamRecord, detail: str) -> None:
        """The vendor's error: a status message, then the close a few seconds later."""
        await _send(connection, {"status": "error", "detail": detail})
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.error_close_delay):
                async for message in connection:
                    record.messages_in += 1
                    if isinstance(message, bytes):
                        record.add_pcm(message)
        await connection.close()

    def _script_for(self, grant: TokenGrant) -> ScriptedRecognizer:
        if self.options.script:
            return self.scripted_recognizer(self.options.script)
        pipeline = grant.pipeline
        if pipeline == LEGACY_PIPELINE:
            pipeline = _LEGACY_SCRIPT_PIPELINE.get(str(grant.options.get("lang")), "asr-zh-en-std")
        return self.scripted_recognizer(DEFAULT_SCRIPTS.get(pipeline, self.default_script))


class _ResultStream:
    """Turns audio into Yating ``pipe`` messages for one connection."""

    def __init__(self, connection: ServerConnection, record: StreamRecord, recognizer: ScriptedRecognizer) -> None:
        self._connection = connection
        self._record = record
        self._recognizer = recognizer
        self._first_chunk = True
        self.ended = False

    async def audio(self, pcm: bytes) -> None:
        if self._first_chunk:
            self._first_chunk = False
            await _send(self._connection, {"pipe": {"asr_state": "first_chunk_received"}})
        await self._send_events(self._recognizer.feed(pcm))

    async def finish(self) -> None:
        self.ended = True
        await self._send_events(self._recognizer.flush())
        await _send(self._connection, {"pipe": {"asr_eof": True}})

    async def _send_events(self, events: list[SimEvent]) -> None:
        for event in events:
            if isinstance(event, SegmentStarted):
                await _send(self._connection, {"pipe": {"asr_state": "utterance_begin"}})
            elif isinstance(event, SegmentPartial):
                await _send(self._connection, {"pipe": {"asr_sentence": event.text}})
            elif isinstance(event, SegmentFinal):
                await _send(self._connection, {"pipe": final_result(event)})
                await _send(self._connection, {"pipe": {"asr_state": "utterance_end"}})
                self._record.finals.append(event.text)


def final_result(segment: SegmentFinal) -> dict[str, Any]:
    """A final with the full field set; word times share the segment evenly, punctuation rides on words."""
    tokens, joiner = tokens_of(segment.text)
    words: list[dict[str, Any]] = []
    for token in tokens:
        if token in _PUNCTUATION and words:
            words[-1]["punctuator"] += token
        else:
            words.append({"word": token, "punctuator": ""})
    begin, end = segment.start_ms / 1000, segment.end_ms / 1000
    step = (end - begin) / max(len(words), 1)
    for i, word in enumerate(words):
        word["begin_time"] = round(begin + i * step, 3)
        word["end_time"] = round(begin + (i + 1) * step, 3)
    return {
        "asr_final": True,
        "asr_begin_time": begin,
        "asr_end_time": end,
        "asr_sentence": segment.text,
        "asr_confidence": 0.93,
        "asr_word_time_stamp": words,
        "text_segmented": " ".join(w["word"] for w in words) if joiner == "" else segment.text,
    }


def _check_token_body(body: bytes) -> tuple[str | None, str | None, dict[str, Any]]:
    """(problem, pipeline, options) of a token request body."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "token request body is not JSON", None, {}
    if not isinstance(document, dict):
        return "token request body is not a JSON object", None, {}
    unknown = sorted(set(document) - {"pipeline", "options"})
    if unknown:
        return f"token request has unknown keys {unknown}", None, {}
    pipeline = document.get("pipeline")
    options = document.get("options", {})
    if not isinstance(options, dict):
        return "token request options is not an object", None, {}
    model = options.get("s3CusModelKey")
    if model is not None and (not isinstance(model, str) or not model):
        return "options.s3CusModelKey must be a non-empty string", None, {}
    if pipeline == LEGACY_PIPELINE:
        if options.get("lang") not in LEGACY_LANGS:
            return f"pipeline {LEGACY_PIPELINE} needs options.lang in {sorted(LEGACY_LANGS)}", None, {}
    elif pipeline not in PIPELINES:
        return f"unknown pipeline {pipeline!r}", None, {}
    return None, str(pipeline), options


def _text_problem(message: str) -> str | None:
    """Why a client text frame is not the one text message the vendor takes (None when it is)."""
    shown = message if len(message) <= 80 else message[:77] + "..."
    try:
        document = json.loads(message)
    except ValueError:
        return f"text frame is not JSON: {shown!r}"
    try:
        code = document["pipe"]["config"]["liveStreamingCodeSwitch"]
    except (TypeError, KeyError, IndexError):
        code = None
    if isinstance(code, str) and code and document == {"pipe": {"config": {"liveStreamingCodeSwitch": code}}}:
        return None
    return f"unexpected text frame (only the liveStreamingCodeSwitch config is allowed): {shown!r}"


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError("not HTTP/1.x")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError("bad header line")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


async def _respond(writer: asyncio.StreamWriter, status: int, document: dict[str, Any]) -> None:
    body = json.dumps(document, ensure_ascii=False).encode("utf-8")
    reason = http.HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _http_response(status: int, document: dict[str, Any]) -> Response:
    body = json.dumps(document).encode("utf-8")
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


async def _send(connection: ServerConnection, document: dict[str, Any]) -> None:
    await connection.send(json.dumps(document, ensure_ascii=False))
