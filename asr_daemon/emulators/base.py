"""What every vendor emulator shares.

An emulator is a strict WebSocket server for one vendor protocol, written from ``docs/protocols/``. It
"recognises" speech by following a script: PCM is cut into segments on silence (energy per 10 ms frame),
each segment is assigned the script's next sentence, the sentence's words are revealed as partials while
the segment's audio arrives, and the whole sentence is the segment's final. So a test that speaks a known
text gets that exact text back, through every byte of the vendor's wire format.

Each stream is recorded (PCM bytes received, their SHA-256, protocol violations) so tests can prove that
no audio was lost and that the client spoke the protocol correctly. What a vendor's own client does against
the vendor's written protocol is accepted, since the real service evidently accepts it, and recorded as a
note rather than a violation (``ClientTolerance``). Fault modes reproduce what real vendors do on a bad day.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..audio.normalise import AudioFormatError, parse_wav_header
from .options import EmulatorOptions as EmulatorOptions
from .options import Fault as Fault

_LOGGER = logging.getLogger(__name__)

# The client connection being served, for fault hooks called without it.
_CONNECTION: contextvars.ContextVar[ServerConnection] = contextvars.ContextVar("emulator_connection")

FRAME_MS = 10
SAMPLE_RATE = 16000
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000


@dataclass
class StreamRecord:
    """What one client stream did, for tests and logs."""

    index: int
    pcm_bytes: int = 0
    sha256: Any = field(default_factory=hashlib.sha256)
    violations: list[str] = field(default_factory=list)
    # Departures from the written protocol that the vendor's own client makes (accepted, as the service does).
    notes: list[str] = field(default_factory=list)
    messages_in: int = 0
    finals: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    completed: bool = False
    fault_applied: bool = False
    # The PCM itself, when the emulator keeps it (``EmulatorOptions.keep_pcm``).
    pcm: bytearray | None = None

    def add_pcm(self, pcm: bytes) -> None:
        self.pcm_bytes += len(pcm)
        self.sha256.update(pcm)
        if self.pcm is not None:
            self.pcm += pcm

    @property
    def pcm_sha256(self) -> str:
        digest: str = self.sha256.hexdigest()
        return digest


# ---------------------------------------------------------------------------------------------------------
# Scripted recognition


def tokens_of(sentence: str) -> tuple[list[str], str]:
    """Split a script sentence into words and the joiner that rebuilds it (none for CJK/Thai scripts)."""
    if " " in sentence.strip():
        return sentence.split(), " "
    return list(sentence), ""


@dataclass(frozen=True)
class SegmentStarted:
    start_ms: int


@dataclass(frozen=True)
class SegmentPartial:
    text: str
    start_ms: int
    # The sentence's tokens revealed so far (words; characters for scripts written without spaces).
    words: tuple[str, ...] = ()


@dataclass(frozen=True)
class SegmentFinal:
    text: str
    start_ms: int
    end_ms: int


SimEvent = SegmentStarted | SegmentPartial | SegmentFinal


# Voiced frames at a segment's onset that identify its audio.
_FINGERPRINT_FRAMES = 10


@dataclass
class SentenceBook:
    """Shared by an emulator's streams: which sentence each segment's audio was recognised as."""

    by_fingerprint: dict[bytes, int] = field(default_factory=dict)
    next_sentence: int = 0

    def sentence_for(self, fingerprint: bytes) -> int:
        if fingerprint not in self.by_fingerprint:
            self.by_fingerprint[fingerprint] = self.next_sentence
            self.next_sentence += 1
        return self.by_fingerprint[fingerprint]


class ScriptedRecognizer:
    """Cuts PCM (16 kHz s16le mono) into segments on silence and 'recognises' each as the next sentence."""

    def __init__(self, options: EmulatorOptions, script: Sequence[str], book: SentenceBook | None = None) -> None:
        self._options = options
        self._script = list(script) or ["hello"]
        self._book = book
        self._onset = bytearray()
        self._next_sentence = 0
        self._carry = b""
        self._frame_bytes = FRAME_MS * BYTES_PER_MS
        self._position_ms = 0
        self._in_speech = False
        self._speech_ms = 0
        self._silence_run_ms = 0
        self._start_ms = 0
        self._revealed = 0
        self._words: list[str] = []
        self._joiner = ""

    @property
    def position_ms(self) -> int:
        return self._position_ms

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def feed(self, pcm: bytes) -> list[SimEvent]:
        data = self._carry + pcm
        usable = len(data) - len(data) % self._frame_bytes
        self._carry = data[usable:]
        events: list[SimEvent] = []
        for offset in range(0, usable, self._frame_bytes):
            events.extend(self._frame(data[offset : offset + self._frame_bytes]))
        return events

    def flush(self) -> list[SimEvent]:
        """End of stream: close an open segment."""
        if self._carry:
            self._position_ms += len(self._carry) // BYTES_PER_MS
            self._carry = b""
        if self._in_speech:
            return [self._close_segment()]
        return []

    def _frame(self, frame: bytes) -> list[SimEvent]:
        self._position_ms += FRAME_MS
        voiced = _rms(frame) >= self._options.energy_threshold
        events: list[SimEvent] = []
        if not self._in_speech:
            if voiced:
                self._open_segment()
                events.append(SegmentStarted(self._start_ms))
            else:
                return events
        if voiced:
            self._silence_run_ms = 0
            self._speech_ms += FRAME_MS
            if not self._words:
                self._onset += frame
                if len(self._onset) < _FINGERPRINT_FRAMES * self._frame_bytes:
                    return events
                self._choose_sentence()
            wanted = min(len(self._words) - 1, self._speech_ms // max(self._options.word_ms, 1) + 1)
            if wanted > self._revealed:
                self._revealed = wanted
                revealed = tuple(self._words[:wanted])
                events.append(SegmentPartial(self._joiner.join(revealed), self._start_ms, revealed))
        else:
            self._silence_run_ms += FRAME_MS
            if self._silence_run_ms >= self._options.silence_ms:
                events.append(self._close_segment())
        return events

    def _open_segment(self) -> None:
        self._words = []
        self._onset.clear()
        if self._book is None:
            self._choose_sentence()
        self._in_speech = True
        self._speech_ms = 0
        self._silence_run_ms = 0
        self._revealed = 0
        self._start_ms = self._position_ms - FRAME_MS

    def _choose_sentence(self) -> None:
        if self._book is not None:
            index = self._book.sentence_for(hashlib.sha1(self._onset).digest())
        else:
            index = self._next_sentence
            self._next_sentence += 1
        self._words, self._joiner = tokens_of(self._script[index % len(self._script)])

    def _close_segment(self) -> SegmentFinal:
        if not self._words:
            self._choose_sentence()
        self._in_speech = False
        end_ms = self._position_ms - self._silence_run_ms
        return SegmentFinal(self._joiner.join(self._words), self._start_ms, end_ms)


class WavHeaderStripper:
    """Drops a RIFF/WAVE header at the start of a stream of audio chunks (clients stream whole WAV files).

    Audio that does not start with ``RIFF`` passes unchanged; a header split across chunks is held until it
    ends. ``problem`` says why a header could not be parsed (the bytes then pass as audio).
    """

    def __init__(self) -> None:
        self._head = b""
        self._done = False
        self.stripped = 0
        self.problem: str | None = None

    def feed(self, data: bytes) -> bytes:
        if self._done:
            return data
        head = self._head + data
        if len(head) < 12 and b"RIFF".startswith(head[:4]):
            self._head = head
            return b""
        self._head = b""
        if head[:4] != b"RIFF":
            self._done = True
            return head
        try:
            parsed = parse_wav_header(head)
        except AudioFormatError as exc:
            self._done, self.problem = True, str(exc)
            return head
        if parsed is None:
            self._head = head
            return b""
        self._done, self.stripped = True, parsed[1]
        return head[parsed[1] :]

    def flush(self) -> bytes:
        """Bytes held back when the stream ended inside what looked like a header."""
        head, self._head, self._done = self._head, b"", True
        return head


def _rms(frame: bytes) -> float:
    count = len(frame) // 2
    if count == 0:
        return 0.0
    samples = memoryview(frame).cast("h")
    return math.sqrt(sum(s * s for s in samples) / count)


# ---------------------------------------------------------------------------------------------------------
# What a vendor's own client sends beyond RFC 6455


@dataclass(frozen=True)
class ClientTolerance:
    """Departures from RFC 6455 that a vendor's own client makes; that vendor's emulator accepts each one
    and notes it on the stream (every other emulator refuses them, as the ``websockets`` server does)."""

    # Who makes these departures, for the notes ("AmiVoice's Wrp library sends them").
    client: str = ""
    # An upgrade request without ``Sec-WebSocket-Version`` (taken as version 13).
    missing_version: bool = False
    # Client frames without a mask.
    unmasked_frames: bool = False
    # Binary payloads in text frames (taken as binary, without the UTF-8 check).
    text_as_binary: bool = False

    @property
    def rewrites_frames(self) -> bool:
        return self.unmasked_frames or self.text_as_binary


class ClientFrameRewriter:
    """Turns the client's byte stream into what an RFC 6455 server parses, per a ``ClientTolerance``: an
    unmasked frame gets an all-zero mask (which leaves its payload as it is), a text frame becomes binary.
    Only frame headers are touched; the HTTP request before them passes unchanged."""

    def __init__(self, tolerance: ClientTolerance) -> None:
        self._tolerance = tolerance
        self._in_request = True
        self._tail = b""
        self._header = bytearray()
        self._payload_left = 0
        self.unmasked = 0
        self.text_frames = 0

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        position = 0
        while position < len(data):
            if self._in_request:
                seen = self._tail + data[position:]
                end = seen.find(b"\r\n\r\n")
                if end == -1:
                    self._tail = seen[-3:]
                    out += data[position:]
                    break
                consumed = end + 4 - len(self._tail)
                out += data[position : position + consumed]
                position += consumed
                self._in_request = False
            elif self._payload_left:
                take = min(self._payload_left, len(data) - position)
                out += data[position : position + take]
                position += take
                self._payload_left -= take
            else:
                self._header.append(data[position])
                position += 1
                out += self._complete_header()
        return bytes(out)

    def _complete_header(self) -> bytes:
        header = self._header
        if len(header) < 2:
            return b""
        masked = bool(header[1] & 0x80)
        short_length = header[1] & 0x7F
        extended = 2 if short_length == 126 else 8 if short_length == 127 else 0
        if len(header) < 2 + extended + (4 if masked else 0):
            return b""
        length = int.from_bytes(header[2 : 2 + extended], "big") if extended else short_length
        if self._tolerance.text_as_binary and header[0] & 0x0F == 0x1:
            header[0] = (header[0] & 0xF0) | 0x2
            self.text_frames += 1
        if not masked and self._tolerance.unmasked_frames:
            header[1] |= 0x80
            header += b"\0\0\0\0"
            self.unmasked += 1
        self._payload_left = length
        rewritten = bytes(header)
        header.clear()
        return rewritten


class EmulatorConnection(ServerConnection):
    """A server connection that applies its emulator's ``ClientTolerance`` to what the client sends."""

    tolerance: ClassVar[ClientTolerance] = ClientTolerance()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Departures seen in the upgrade request, for the stream's record.
        self.handshake_notes: list[str] = []
        self.frames = ClientFrameRewriter(self.tolerance) if self.tolerance.rewrites_frames else None

    def data_received(self, data: bytes) -> None:
        if self.frames is not None:
            data = self.frames.feed(data)
        super().data_received(data)


# ---------------------------------------------------------------------------------------------------------
# The server


class Emulator(ABC):
    """A vendor emulator: a WebSocket server on loopback with scripted recognition and fault modes."""

    # Registry name (``asr-daemon emulate <vendor>``).
    vendor: ClassVar[str]
    # Script used when none is configured, in the vendor's language.
    default_script: ClassVar[tuple[str, ...]] = ("hello world",)
    # The vendor's own idle cut in seconds (None: the vendor has none).
    vendor_idle_timeout: ClassVar[float | None] = None
    # What the vendor's own client sends beyond RFC 6455 (accepted and noted).
    client_tolerance: ClassVar[ClientTolerance] = ClientTolerance()

    def __init__(self, options: EmulatorOptions | None = None) -> None:
        self.options = options or EmulatorOptions()
        self.streams: list[StreamRecord] = []
        self._book = SentenceBook()
        self._server: Server | None = None
        self._logger = logging.getLogger(f"asr_daemon.emulators.{self.vendor}")

    # -- lifecycle ----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Emulator]:
        """Serve until the block exits."""
        await self.start(host, port)
        try:
            yield self
        finally:
            await self.stop()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        tolerance = self.client_tolerance

        class Connection(EmulatorConnection):
            pass

        Connection.tolerance = tolerance
        self._server = await serve(
            self._connection,
            host,
            port,
            process_request=self._process_request,
            create_connection=Connection,
            ssl=self.options.tls,
            ping_interval=None,
            max_size=4 << 20,
            compression=None,
            server_header=f"{self.vendor}-emulator",
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    @property
    def port(self) -> int:
        assert self._server is not None, "emulator not started"
        sockname = next(iter(self._server.sockets)).getsockname()
        return int(sockname[1])

    @property
    def open_connections(self) -> int:
        """Client connections currently open (tests check that a client's stream was let go)."""
        return len(self._server.connections) if self._server is not None else 0

    @property
    def base_url(self) -> str:
        scheme = "wss" if self.options.tls is not None else "ws"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    @abstractmethod
    def url(self) -> str:
        """The endpoint a client configures (``vendors.<name>.url``)."""

    # -- per-stream helpers for subclasses -------------------------------------------------------------

    @property
    def script(self) -> list[str]:
        return list(self.options.script) or list(self.default_script)

    @property
    def idle_timeout(self) -> float | None:
        if self.options.fault is Fault.IDLE_TIMEOUT:
            return self.options.idle_timeout if self.options.idle_timeout is not None else 1.0
        return self.options.idle_timeout if self.options.idle_timeout is not None else self.vendor_idle_timeout

    def idle_timeout_for(self, record: StreamRecord) -> float | None:
        """The idle limit of one stream: the IDLE_TIMEOUT fault's short limit only where the fault applies."""
        if self.options.fault is Fault.IDLE_TIMEOUT and not self.fault_active(record, Fault.IDLE_TIMEOUT):
            return self.vendor_idle_timeout
        return self.idle_timeout

    def new_record(self, connection: ServerConnection | None = None) -> StreamRecord:
        record = StreamRecord(index=len(self.streams), pcm=bytearray() if self.options.keep_pcm else None)
        if connection is not None and connection.request is not None:
            record.headers = {k.lower(): v for k, v in connection.request.headers.raw_items()}
        if isinstance(connection, EmulatorConnection):
            for text in connection.handshake_notes:
                self.note(record, text)
        self.streams.append(record)
        return record

    def fault_active(self, record: StreamRecord, fault: Fault) -> bool:
        """Whether ``fault`` applies to this stream."""
        if self.options.fault is not fault:
            return False
        return self.options.fault_streams == 0 or record.index < self.options.fault_streams

    def violation(self, record: StreamRecord, text: str) -> None:
        """Log a protocol violation by the client and keep it for the tests."""
        record.violations.append(text)
        self._logger.warning("protocol violation in stream %d: %s", record.index, text)

    def note(self, record: StreamRecord, text: str) -> None:
        """Keep (once) a departure from the written protocol that the vendor's own client makes."""
        if text not in record.notes:
            record.notes.append(text)
            self._logger.info("stream %d departs from the written protocol as accepted: %s", record.index, text)

    def new_recognizer(self, record: StreamRecord | None = None) -> ScriptedRecognizer:
        script = self.script
        if self.options.stream_scripts:
            index = record.index if record is not None else max(len(self.streams) - 1, 0)
            script = self.options.stream_scripts[index % len(self.options.stream_scripts)]
        return self.scripted_recognizer(script)

    def scripted_recognizer(self, script: Sequence[str]) -> ScriptedRecognizer:
        """A recognizer for ``script`` that follows ``recognise_by_audio``."""
        return ScriptedRecognizer(self.options, script, self._book if self.options.recognise_by_audio else None)

    async def receive(self, connection: ServerConnection, record: StreamRecord) -> str | bytes:
        """Next client message; raises ``TimeoutError`` after the idle limit, ``ConnectionClosed`` at close."""
        timeout = self.idle_timeout_for(record)
        message = await asyncio.wait_for(connection.recv(), timeout) if timeout else await connection.recv()
        record.messages_in += 1
        self.note_frames(connection, record)
        return message

    def note_frames(self, connection: ServerConnection, record: StreamRecord) -> None:
        """Note the tolerated frame departures the client made so far."""
        frames = connection.frames if isinstance(connection, EmulatorConnection) else None
        if frames is None:
            return
        client = self.client_tolerance.client
        if frames.unmasked:
            self.note(record, f"client frames without a mask ({client})")
        if frames.text_frames:
            self.note(record, f"binary payloads in WebSocket text frames ({client})")

    async def after_audio(self, connection: ServerConnection, record: StreamRecord) -> bool:
        """Apply DROP/STALL once enough PCM arrived. Returns False when the stream must stop responding."""
        if record.pcm_bytes < self.options.fault_after_bytes:
            return True
        if self.fault_active(record, Fault.DROP):
            record.fault_applied = True
            self._logger.info("fault: dropping stream %d after %d bytes", record.index, record.pcm_bytes)
            connection.transport.abort()
            return False
        if self.fault_active(record, Fault.STALL):
            if not record.fault_applied:
                self._logger.info("fault: stalling stream %d after %d bytes", record.index, record.pcm_bytes)
            record.fault_applied = True
            return False
        return True

    async def before_final(self, record: StreamRecord) -> None:
        """Apply SLOW_FINAL and DROP_AT_END (called when the end of audio arrived, before the final answer)."""
        if self.fault_active(record, Fault.SLOW_FINAL):
            record.fault_applied = True
            await asyncio.sleep(self.options.slow_final_seconds)
        if self.fault_active(record, Fault.DROP_AT_END):
            record.fault_applied = True
            connection = _CONNECTION.get(None)
            if connection is not None:
                self._logger.info("fault: dropping stream %d at the end of audio", record.index)
                connection.transport.abort()
                raise ConnectionClosed(None, None)

    async def drain_stalled(self, connection: ServerConnection) -> None:
        """A stalled vendor: read and discard everything, answer nothing, until the client gives up."""
        with contextlib.suppress(ConnectionClosed):
            async for _ in connection:
                pass

    # -- the vendor-specific part ----------------------------------------------------------------------

    def authorize(self, request: Request) -> Response | None:
        """Check the upgrade request; return a response to refuse it. Default: accept."""
        return None

    @abstractmethod
    async def handle(self, connection: ServerConnection) -> None:
        """Serve one client connection."""

    # -- plumbing --------------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.tolerate_handshake(connection, request)
        return self.authorize(request)

    def tolerate_handshake(self, connection: ServerConnection, request: Request) -> None:
        """Complete an upgrade request the way the vendor's own client leaves it incomplete."""
        if self.client_tolerance.missing_version and "Sec-WebSocket-Version" not in request.headers:
            request.headers["Sec-WebSocket-Version"] = "13"
            if isinstance(connection, EmulatorConnection):
                note = f"upgrade request without Sec-WebSocket-Version ({self.client_tolerance.client})"
                connection.handshake_notes.append(note)

    async def _connection(self, connection: ServerConnection) -> None:
        _CONNECTION.set(connection)
        try:
            await self.handle(connection)
        except ConnectionClosed:
            pass
        except Exception:
            self._logger.exception("emulator failed serving a connection")
            raise
