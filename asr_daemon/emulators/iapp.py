"""Emulator of iApp's real-time ASR WebSocket (``wss://api-iflytek.iapp.co.th/asr``), from
``docs/protocols/iapp.md``.

What it does, and the choices made where the vendor's behaviour is not documented:

* The upgrade needs an ``apikey`` header holding one of ``options.api_keys``; otherwise it is refused with
  HTTP 401 "Invalid or missing API key" (the wording of iApp's REST APIs).
* Binary frames of any size are PCM (16 kHz s16le mono). The only text frame a client may send is
  ``{"data":{"status":"CloseConnection"}}``, or the same with the status iApp's own page words it with,
  ``"end of stream"`` (accepted and noted). Everything else is a violation: a bad text frame is answered by
  closing with 1008; an empty binary frame, or anything sent after the end marker, is ignored.
* Results are ``{"type":"realtime","state":"Sentence"|"NewSentence","text":...}`` with the cumulative text
  of the current sentence; the first message of every sentence but the first is ``NewSentence``.
* On the end marker: the rest of the results, then
  ``{"type":"realtime","state":"Sentence","text":"Confirm Close Connection"}``, then a 1000 close.

Faults: ``drop`` cuts TCP; ``stall`` goes silent; ``error_at_start`` refuses the upgrade with
``start_error_status`` (401 by default, as the vendor refuses a key; 503 emulates an outage a retry may
survive); ``idle_timeout`` closes with 1000 "idle timeout" after that many seconds without a client message
(iApp's real limit is unknown; upstream iFlyTek cuts after about 15 s); ``slow_final`` delays the answer to
the end marker.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
from typing import ClassVar

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .base import (
    Emulator,
    EmulatorOptions,
    Fault,
    ScriptedRecognizer,
    SegmentFinal,
    SegmentPartial,
    SimEvent,
    StreamRecord,
)

END_OF_STREAM = {"data": {"status": "CloseConnection"}}
# The end marker as iApp's page words it ("status field with "end of stream" value"), next to its sample's.
END_OF_STREAM_WORDED = {"data": {"status": "end of stream"}}
WORDED_END_NOTE = 'end marker with status "end of stream" (the wording of iApp\'s page), not "CloseConnection"'
CLOSE_CONFIRMATION = "Confirm Close Connection"
# Close code for a client message the emulator does not understand (policy violation).
BAD_MESSAGE_CLOSE = 1008


class IAppEmulator(Emulator):
    vendor: ClassVar[str] = "iapp"
    # Thai is written without spaces between words, so the recognizer reveals it character by character.
    default_script: ClassVar[tuple[str, ...]] = ("สวัสดีครับ", "วันนี้อากาศดี", "เปิดไฟห้องนั่งเล่น")
    # iApp's own idle limit is unknown: no cut unless configured.
    vendor_idle_timeout: ClassVar[float | None] = None

    def __init__(self, options: EmulatorOptions | None = None, *, start_error_status: int = 401) -> None:
        super().__init__(options)
        self.start_error_status = start_error_status
        # Records of accepted upgrades, keyed by their request, until ``handle`` picks them up.
        self._accepted: dict[int, StreamRecord] = {}

    @property
    def url(self) -> str:
        return f"{self.base_url}/asr"

    # -- the upgrade --------------------------------------------------------------------------------------

    def authorize(self, request: Request) -> Response | None:
        # Every upgrade is a stream, so ``fault_streams`` counts refused ones too.
        record = self.new_record()
        record.headers = {
            name.lower(): ("***" if name.lower() == "apikey" else value) for name, value in request.headers.raw_items()
        }
        key = request.headers.get("apikey")
        if key is None:
            self.violation(record, "upgrade request without an apikey header")
            return _refusal(401, "Invalid or missing API key")
        if key not in self.options.api_keys:
            self._logger.info("stream %d: refusing an unknown API key", record.index)
            return _refusal(401, "Invalid or missing API key")
        if self.fault_active(record, Fault.ERROR_AT_START):
            record.fault_applied = True
            self._logger.info("fault: refusing stream %d with HTTP %d", record.index, self.start_error_status)
            reason = "Invalid or missing API key" if self.start_error_status == 401 else "Service Unavailable"
            return _refusal(self.start_error_status, reason)
        self._accepted[id(request)] = record
        return None

    # -- one stream ---------------------------------------------------------------------------------------

    async def handle(self, connection: ServerConnection) -> None:
        request = connection.request
        accepted = self._accepted.pop(id(request), None) if request is not None else None
        record = accepted or self.new_record(connection)
        stream = _ResultStream(connection)
        recognizer = self.new_recognizer()
        while True:
            try:
                message = await self.receive(connection, record)
            except TimeoutError:
                self._logger.info("stream %d: idle timeout", record.index)
                await _close_reading(connection, 1000, "idle timeout")
                return
            if isinstance(message, bytes):
                if not message:
                    self.violation(record, "empty binary frame")
                    continue
                record.add_pcm(message)
                if not await self.after_audio(connection, record):
                    if self.fault_active(record, Fault.STALL):
                        await self.drain_stalled(connection)
                    return
                await stream.send(recognizer.feed(message), record)
                continue
            problem = _end_marker_problem(message)
            if problem is not None:
                self.violation(record, problem)
                await _close_reading(connection, BAD_MESSAGE_CLOSE, "invalid message")
                return
            if json.loads(message) == END_OF_STREAM_WORDED:
                self.note(record, WORDED_END_NOTE)
            await self._finish(connection, record, stream, recognizer)
            return

    async def _finish(
        self,
        connection: ServerConnection,
        record: StreamRecord,
        stream: _ResultStream,
        recognizer: ScriptedRecognizer,
    ) -> None:
        """Answer the end marker: remaining results, the confirmation, a normal close."""
        # Whatever the client still sends is a violation; it is read meanwhile so it cannot go unnoticed.
        late = asyncio.create_task(self._record_late_messages(connection, record))
        try:
            await self.before_final(record)
            await stream.send(recognizer.flush(), record)
            await connection.send(json.dumps(_result("Sentence", CLOSE_CONFIRMATION), ensure_ascii=False))
            record.completed = True
            await connection.close(1000)
        finally:
            await late

    async def _record_late_messages(self, connection: ServerConnection, record: StreamRecord) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in connection:
                kind = f"{len(message)} bytes of audio" if isinstance(message, bytes) else "a text frame"
                self.violation(record, f"{kind} after the end marker")


class _ResultStream:
    """Turns recognizer events into iApp result messages for one connection."""

    def __init__(self, connection: ServerConnection) -> None:
        self._connection = connection
        self._sentences = 0
        # Text last sent for the open sentence (None: the open segment has not been announced yet).
        self._sent: str | None = None

    async def send(self, events: list[SimEvent], record: StreamRecord) -> None:
        for event in events:
            if isinstance(event, SegmentPartial):
                await self._say(event.text)
            elif isinstance(event, SegmentFinal):
                # No final message exists: the sentence's last update is its full text, and the next
                # NewSentence (or the close confirmation) is what makes it final.
                await self._say(event.text)
                record.finals.append(event.text)
                self._sent = None

    async def _say(self, text: str) -> None:
        if self._sent is None:
            state = "NewSentence" if self._sentences else "Sentence"
            self._sentences += 1
        elif text == self._sent:
            return
        else:
            state = "Sentence"
        self._sent = text
        await self._connection.send(json.dumps(_result(state, text), ensure_ascii=False))


async def _close_reading(connection: ServerConnection, code: int, reason: str) -> None:
    """Close while still reading: audio the client sent meanwhile must not hold up its close frame."""
    drain = asyncio.create_task(_discard(connection))
    try:
        await connection.close(code, reason)
    finally:
        await drain


async def _discard(connection: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in connection:
            pass


def _result(state: str, text: str) -> dict[str, str]:
    return {"type": "realtime", "state": state, "text": text}


def _end_marker_problem(message: str) -> str | None:
    """Why a client text frame is not the end marker (None when it is)."""
    shown = message if len(message) <= 80 else message[:77] + "..."
    try:
        document = json.loads(message)
    except ValueError:
        return f"text frame is not JSON: {shown!r}"
    if document not in (END_OF_STREAM, END_OF_STREAM_WORDED):
        return f"unexpected text frame (only {json.dumps(END_OF_STREAM)} is allowed): {shown!r}"
    return None


def _refusal(status: int, text: str) -> Response:
    body = text.encode()
    headers = Headers(
        [
            ("Connection", "close"),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)
