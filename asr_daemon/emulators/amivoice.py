"""Emulator of the AmiVoice Cloud Platform WebSocket API (``wss://acp-api.amivoice.com/v1/``), from
``docs/protocols/amivoice.md``.

The wire, as documented:

* Any client may upgrade on ``/v1/`` or ``/v1/nolog/`` (no auth header); other paths get HTTP 404.
* ``s <audio_format> <grammar_file_names> key=value …`` (text) starts a session; values with spaces are
  double-quoted with ``"`` doubled. The reply is ``s`` on success or ``s <message>``.
* ``p`` + audio (binary, first byte 0x70) feeds audio; there is no reply unless it fails.
* ``e`` (text) ends the session: the remaining ``E``/``A`` events, then ``e``. A new ``s`` may follow on the
  same connection (it starts a new stream record).
* Events: ``S <ms>`` and ``C`` when an utterance starts, ``U <json>`` with the revealed words plus the dummy
  ``...`` token, ``E <ms>`` and ``A <json>`` (the full documented shape) when it ends. A bare ``G`` (server
  information, to be ignored) after a session's first audio and after each ``A``, where the guide's log shows it.
* ``8K``/``16K`` (audio with a file header): a RIFF/WAVE header at the start of the session's audio is not
  recognised as speech; other containers are noted and taken as raw PCM.
* AmiVoice's own Wrp library sends no ``Sec-WebSocket-Version`` and does not mask its frames: both are
  accepted and noted (the service evidently accepts them), not refused as RFC 6455 says.
* 60 s without any client message: unsolicited ``e timeout occurred`` (``… while recognizing audio data from
  client`` once audio flowed), then the connection closes. 600 s of audio without speech:
  ``p can't feed audio data to recognizer server`` and the session is over (``no_speech_limit_ms``).

Choices where the vendor publishes nothing (the protocol page's "where the documents are silent"): the checks
run in the order authorization, audio format, grammar; a missing or unknown engine is answered ``s received
illegal grammar file names``; a malformed command (bad quoting, a text ``p``, a second ``s`` or an ``e``
outside a session) is answered ``<tag> received illegal command``; a ``p`` outside a session (none started, or
the ``s`` refused) is answered ``p can't feed audio data to recognizer server``. What the service answers to
``p`` and ``e`` after a refused ``s`` is a guess. Every client mistake is also recorded as a
violation; a wrong key or an unknown engine is a configuration error, not a protocol violation, so it is
answered but not recorded.

Faults: ``drop`` cuts TCP after ``fault_after_bytes`` of audio; ``stall`` goes silent; ``error_at_start``
answers a valid ``s`` with the server error ``s can't connect to recognizer server`` (which the vendor's guide
says to retry); ``idle_timeout`` applies the idle cut after ``idle_timeout`` seconds (1 s by default);
``slow_final`` holds the answer to ``e`` back by ``slow_final_seconds``.
"""

from __future__ import annotations

import http
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .base import (
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
    tokens_of,
)

PATHS = frozenset({"/v1/", "/v1/nolog/"})
AUDIO_FORMATS = frozenset(
    [f"{order}{rate}k" for order in ("lsb", "msb") for rate in (8, 11, 16, 22, 32, 44, 48)]
    + ["mulaw", "alaw", "8k", "16k"]
)
# Engines listed in docs/protocols/amivoice.md; the real service has more (other languages), unknown ones are refused.
ENGINES = frozenset(
    {
        "-a-general",
        "-a-general-input",
        "-a-medgeneral",
        "-a-bizmrreport",
        "-a-bizfinance",
        "-a-medcare",
        "-a-medkarte",
        "-a-medpharmacy",
        "-a-bizinsurance",
        "-a-meeting",
    }
)
KNOWN_KEYS = frozenset(
    {
        "authorization",
        "profileId",
        "profileWords",
        "keepFillerToken",
        "segmenterProperties",
        "resultUpdatedInterval",
        "extension",
        "resultType",
        "maxDecodingTime",
        "maxResponseTime",
        "maxDecodingRate",
        "targetResponseTime",
        "targetDecodingRate",
        "recognitionTimeout",
        "noInputTimeout",
    }
)

AUTHORIZATION_ERROR = "received illegal service authorization"
AUDIO_FORMAT_ERROR = "received unsupported audio format"
GRAMMAR_ERROR = "received illegal grammar file names"
COMMAND_ERROR = "received illegal command"
SERVER_ERROR = "can't connect to recognizer server"
FEED_ERROR = "can't feed audio data to recognizer server"
IDLE_BEFORE_AUDIO = "timeout occurred"
IDLE_DURING_AUDIO = "timeout occurred while recognizing audio data from client"
AUDIO_TAG = 0x70  # 'p'
# Audio formats that carry a file header (the rest are headerless PCM or G.711).
HEADER_FORMATS = frozenset({"8k", "16k"})


# -------------------------------------------------------------------------------------------------------
# The s command


@dataclass
class SCommand:
    """A parsed ``s`` command and what is wrong with its syntax."""

    positional: list[str] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def parse_s_command(message: str) -> SCommand:
    """Parse ``s <audio_format> <grammar> key=value …`` strictly: single spaces, quoted values, ``""``."""
    command = SCommand()
    if not message.startswith("s "):
        command.problems.append("the s command needs its parameters after a single space")
        return command
    text = message[2:]
    if text.endswith(" "):
        command.problems.append("trailing space in the s command")
    position = 0
    seen_parameter = False
    while position < len(text):
        if text[position] == " ":
            command.problems.append("more than one space between s command parameters")
            position += 1
            continue
        token_end = _token_end(text, position)
        token = text[position:token_end]
        key, equals, _ = token.partition("=")
        if equals and text.startswith('"', position + len(key) + 1):
            value, position = _quoted_value(text, position + len(key) + 2, key, command.problems)
            _add_parameter(command, key, value)
            seen_parameter = True
            continue
        position = token_end + 1
        if equals:
            if '"' in token:
                command.problems.append(f"stray double quote in {token!r}")
            _add_parameter(command, key, token[len(key) + 1 :])
            seen_parameter = True
        elif seen_parameter:
            command.problems.append(f"{token!r} after the key=value parameters")
        else:
            command.positional.append(token)
    return command


def _token_end(text: str, start: int) -> int:
    end = text.find(" ", start)
    return len(text) if end == -1 else end


def _quoted_value(text: str, start: int, key: str, problems: list[str]) -> tuple[str, int]:
    """Read a quoted value starting after its opening quote; return it and the index after its separator."""
    value: list[str] = []
    position = start
    while position < len(text):
        char = text[position]
        if char == '"':
            if text.startswith('"', position + 1):
                value.append('"')
                position += 2
                continue
            position += 1
            if position < len(text) and text[position] != " ":
                problems.append(f"characters after the closing quote of {key}")
                position = _token_end(text, position)
            return "".join(value), position + 1
        value.append(char)
        position += 1
    problems.append(f"unterminated quoted value of {key}")
    return "".join(value), len(text)


def _add_parameter(command: SCommand, key: str, value: str) -> None:
    if not key:
        command.problems.append("a parameter without a key")
    elif key in command.parameters:
        command.problems.append(f"{key} given twice")
    command.parameters[key] = value


def parameter_problems(parameters: dict[str, str]) -> list[str]:
    """Values the documented parameters cannot take."""
    problems = [f"unknown parameter {key}" for key in parameters if key not in KNOWN_KEYS]
    interval = parameters.get("resultUpdatedInterval")
    if interval is not None and not interval.isdigit():
        problems.append(f"resultUpdatedInterval={interval!r} is not a number of milliseconds")
    filler = parameters.get("keepFillerToken")
    if filler is not None and filler not in ("0", "1"):
        problems.append(f"keepFillerToken={filler!r} is not 0 or 1")
    profile_id = parameters.get("profileId")
    if profile_id is not None and not profile_id.startswith(":"):
        problems.append(f"profileId={profile_id!r} does not start with ':'")
    words = parameters.get("profileWords")
    if words is not None:
        for entry in words.split("|"):
            if len(entry.split(" ")) < 2 or "" in entry.split(" "):
                problems.append(f"profileWords entry {entry!r} is not 'written spoken'")
    return problems


# -------------------------------------------------------------------------------------------------------
# Result documents


def interim_document(text: str, words: Sequence[str] | None = None) -> str:
    """``U`` payload: the revealed tokens (the sentence's words, not the partial text re-split) plus AmiVoice's
    dummy ``...`` token."""
    if words is None:
        words, _ = tokens_of(text)
    tokens = [{"written": word} for word in words] + [{"written": "..."}]
    shown = text + "..."
    return json.dumps({"results": [{"tokens": tokens, "text": shown}], "text": shown}, separators=(",", ":"))


def final_document(segment: SegmentFinal, utterance_id: str) -> str:
    """``A`` payload in the documented shape, with word times spread evenly over the segment."""
    words, _ = tokens_of(segment.text)
    span = max(segment.end_ms - segment.start_ms, 0)
    count = max(len(words), 1)
    tokens = [
        {
            "written": word,
            "confidence": 1.0,
            "starttime": segment.start_ms + span * index // count,
            "endtime": segment.start_ms + span * (index + 1) // count,
            "spoken": word,
        }
        for index, word in enumerate(words)
    ]
    result = {
        "tokens": tokens,
        "confidence": 1.0,
        "starttime": segment.start_ms,
        "endtime": segment.end_ms,
        "tags": [],
        "rulename": "",
        "text": segment.text,
    }
    document = {
        "results": [result],
        "utteranceid": utterance_id,
        "text": segment.text,
        "code": "",
        "message": "",
    }
    return json.dumps(document, separators=(",", ":"))


def new_utterance_id() -> str:
    now = time.gmtime()
    return f"{time.strftime('%Y%m%d/%H', now)}/{secrets.token_hex(12)}_{time.strftime('%Y%m%d_%H%M%S', now)}"


# -------------------------------------------------------------------------------------------------------
# The server


@dataclass
class _Session:
    """One accepted ``s`` … ``e``."""

    recognizer: ScriptedRecognizer
    big_endian: bool
    # For formats with a file header: drops a WAV header from the session's first audio.
    header: WavHeaderStripper | None = None
    audio_seen: bool = False
    last_speech_ms: int = 0
    # Half a big-endian sample split across two p packets.
    carry: bytes = b""

    def little_endian(self, audio: bytes) -> bytes:
        if not self.big_endian:
            return audio
        data = self.carry + audio
        even = len(data) - len(data) % 2
        self.carry = data[even:]
        swapped = bytearray(even)
        swapped[0::2], swapped[1::2] = data[1:even:2], data[0:even:2]
        return bytes(swapped)


class AmiVoiceEmulator(Emulator):
    vendor: ClassVar[str] = "amivoice"
    # Japanese is written without spaces, so the recognizer reveals it character by character.
    default_script: ClassVar[tuple[str, ...]] = ("今日はいい天気ですね。", "リビングの電気をつけてください。")
    vendor_idle_timeout: ClassVar[float | None] = 60.0
    client_tolerance: ClassVar[ClientTolerance] = ClientTolerance(
        client="AmiVoice's Wrp library sends it so", missing_version=True, unmasked_frames=True
    )

    def __init__(self, options: EmulatorOptions | None = None, *, no_speech_limit_ms: int = 600_000) -> None:
        super().__init__(options)
        # Audio without detected speech before the vendor stops accepting it (600 s on the real service).
        self.no_speech_limit_ms = no_speech_limit_ms

    @property
    def url(self) -> str:
        return f"{self.base_url}/v1/"

    def authorize(self, request: Request) -> Response | None:
        if request.path in PATHS:
            return None
        body = b"Not Found\n"
        headers = Headers([("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return Response(404, http.HTTPStatus.NOT_FOUND.phrase, headers, body)

    async def handle(self, connection: ServerConnection) -> None:
        record = self.new_record(connection)
        session: _Session | None = None
        # The vendor ended the session on its own (no-speech limit): late audio is expected, not a violation.
        cut_by_vendor = False
        while True:
            try:
                message = await self.receive(connection, record)
            except TimeoutError:
                started = session is not None and session.recognizer.position_ms > 0
                await connection.send(f"e {IDLE_DURING_AUDIO if started else IDLE_BEFORE_AUDIO}")
                await connection.close()
                return
            if isinstance(message, bytes):
                if session is None:
                    if not cut_by_vendor:
                        self.violation(record, "p packet before a successful s command")
                    await connection.send(f"p {FEED_ERROR}")
                    continue
                keep_going = await self._on_audio(connection, record, session, message)
                if keep_going is None:
                    return
                if not keep_going:
                    session, cut_by_vendor = None, True
                continue
            name = message.split(" ", 1)[0]
            if name == "s":
                if session is not None:
                    self.violation(record, "s command while a session is active")
                    await connection.send(f"s {COMMAND_ERROR}")
                    continue
                if record.completed:
                    record = self.new_record(connection)
                session = await self._on_start(connection, record, message)
                cut_by_vendor = False
            elif name == "e":
                if message != "e":
                    self.violation(record, f"e command with arguments: {message[:40]!r}")
                if session is None:
                    if not cut_by_vendor:
                        self.violation(record, "e command without an active session")
                    await connection.send(f"e {COMMAND_ERROR}")
                    continue
                await self._on_end(connection, record, session)
                session = None
            elif message.startswith("p"):
                self.violation(record, "audio sent as a text frame (p must be a binary frame)")
                await connection.send(f"p {COMMAND_ERROR}")
            else:
                self.violation(record, f"unknown command {message[:40]!r}")

    # -- commands ----------------------------------------------------------------------------------------

    async def _on_start(self, connection: ServerConnection, record: StreamRecord, message: str) -> _Session | None:
        command = parse_s_command(message)
        for problem in command.problems:
            self.violation(record, problem)
        if command.problems:
            await connection.send(f"s {COMMAND_ERROR}")
            return None
        authorization = command.parameters.get("authorization")
        if authorization is None:
            self.violation(record, "s command without authorization")
        if authorization not in self.options.api_keys:
            await connection.send(f"s {AUTHORIZATION_ERROR}")
            return None
        audio_format = command.positional[0] if command.positional else ""
        if audio_format.lower() not in AUDIO_FORMATS:
            self.violation(record, f"unknown audio format {audio_format!r}")
            await connection.send(f"s {AUDIO_FORMAT_ERROR}")
            return None
        if len(command.positional) != 2:
            self.violation(record, f"expected <audio_format> <grammar_file_names>, got {command.positional!r}")
            await connection.send(f"s {GRAMMAR_ERROR}")
            return None
        if command.positional[1] not in ENGINES:
            await connection.send(f"s {GRAMMAR_ERROR}")
            return None
        for problem in parameter_problems(command.parameters):
            self.violation(record, problem)
        if self.fault_active(record, Fault.ERROR_AT_START):
            record.fault_applied = True
            await connection.send(f"s {SERVER_ERROR}")
            return None
        await connection.send("s")
        big_endian = audio_format.lower().startswith("msb")
        header = WavHeaderStripper() if audio_format.lower() in HEADER_FORMATS else None
        return _Session(self.new_recognizer(record), big_endian, header)

    async def _on_audio(
        self, connection: ServerConnection, record: StreamRecord, session: _Session, message: bytes
    ) -> bool | None:
        """Feed one ``p`` packet. None: stop serving (dropped/stalled); False: the session was cut."""
        if not message or message[0] != AUDIO_TAG:
            self.violation(record, "binary frame without the 'p' prefix")
            await connection.send(f"p {COMMAND_ERROR}")
            return True
        audio = message[1:]
        if not audio:
            self.violation(record, "p packet without audio")
            return True
        if session.header is not None:
            audio = self._without_header(record, session.header, audio)
        record.add_pcm(audio)
        if not await self.after_audio(connection, record):
            if self.fault_active(record, Fault.STALL):
                await self.drain_stalled(connection)
            return None
        if not session.audio_seen and audio:
            session.audio_seen = True
            await connection.send("G")
        recognizer = session.recognizer
        await self._send_events(connection, record, recognizer.feed(session.little_endian(audio)))
        if recognizer.in_speech:
            session.last_speech_ms = recognizer.position_ms
        elif recognizer.position_ms - session.last_speech_ms >= self.no_speech_limit_ms:
            await connection.send(f"p {FEED_ERROR}")
            return False
        return True

    def _without_header(self, record: StreamRecord, header: WavHeaderStripper, audio: bytes) -> bytes:
        known = header.problem is not None
        audio = header.feed(audio)
        if header.problem is not None and not known:
            # Valid for the vendor (other containers, other encodings), only not recognisable here.
            self._logger.warning("stream %d: audio taken as raw PCM: %s", record.index, header.problem)
        return audio

    async def _on_end(self, connection: ServerConnection, record: StreamRecord, session: _Session) -> None:
        await self.before_final(record)
        if session.header is not None:
            held = session.header.flush()
            if held:
                record.add_pcm(held)
                await self._send_events(connection, record, session.recognizer.feed(held))
        await self._send_events(connection, record, session.recognizer.flush())
        await connection.send("e")
        record.completed = True

    async def _send_events(self, connection: ServerConnection, record: StreamRecord, events: list[SimEvent]) -> None:
        for event in events:
            if isinstance(event, SegmentStarted):
                await connection.send(f"S {event.start_ms}")
                await connection.send("C")
            elif isinstance(event, SegmentPartial):
                await connection.send(f"U {interim_document(event.text, event.words)}")
            elif isinstance(event, SegmentFinal):
                await connection.send(f"E {event.end_ms}")
                await connection.send(f"A {final_document(event, new_utterance_id())}")
                await connection.send("G")
                record.finals.append(event.text)
