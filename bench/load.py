"""The two kinds of client: a Home Assistant-like Wyoming client (through the daemon) and a direct vendor client.

Both send the same utterance in the same pieces at the same real-time pace, and time the same two moments:
the first partial (from the first audio sent) and the answer (from the end of audio). The Wyoming client
times ``audio-stop`` → ``transcript``; the direct client times the vendor's end-of-stream message → the
codec's ``StreamCompleted``, i.e. the moment the daemon itself could know the final transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Describe, Info

from asr_daemon.text import join_segments
from asr_daemon.vendors.base import (
    FinalResult,
    PartialResult,
    StreamCompleted,
    StreamOptions,
    VendorError,
    VendorFailure,
)
from asr_daemon.vendors.transport import VendorStream, WebSocketAdapter

from .scenario import BYTES_PER_SECOND, CHANNELS, RATE, WIDTH, VendorCase

# How long one stream may take beyond its audio before it counts as failed.
STREAM_TIMEOUT = 30.0


@dataclass
class StreamResult:
    path: str  # "daemon" or "direct"
    vendor: str
    slot: int
    iteration: int
    audio_seconds: float
    # Seconds from the first audio sent to the first partial (None: no partial came).
    first_partial: float | None = None
    # Seconds from the end of audio to the final answer (None: failed); felt-latency streams: from the moment
    # the piece holding the last voiced frame was sent.
    latency: float | None = None
    text: str | None = None
    error: str | None = None
    # The text the emulator was scripted with; a different answer is counted as wrong.
    expected: str = ""
    # Felt-latency streams: whether the answer came before the client ended its audio (audio-stop, or the
    # direct client's end-of-stream), i.e. the end of speech was found for it.
    early: bool | None = None
    # Felt-latency streams: the audio seconds actually sent (an early answer stops the upload).
    sent_seconds: float | None = None
    # Satellite mode: seconds from the last voiced piece to the transcript on the satellite's own connection
    # (``latency`` is to its arrival on MQTT).
    link_latency: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.text == self.expected

    def to_json(self) -> dict[str, object]:
        return asdict(self)


async def _pace(started: float, sent_bytes: int, pace: float) -> None:
    """Sleep until ``sent_bytes`` of audio have been 'spoken' since ``started`` (pace 1 = real time)."""
    due = started + sent_bytes / BYTES_PER_SECOND / pace
    # A client running late still lets its reader run between pieces (an answer stops the upload).
    await asyncio.sleep(max(0.0, due - time.monotonic()))


class _Collect:
    """A stand-in stream writer that keeps what ``async_write_event`` writes."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writelines(self, parts: Iterable[bytes]) -> None:
        self.parts.extend(parts)

    def write(self, part: bytes) -> None:
        self.parts.append(part)

    async def drain(self) -> None:
        return None


def encode(event: Event) -> bytes:
    """The exact bytes the ``wyoming`` library sends for ``event`` (as Home Assistant's client does)."""
    collect = _Collect()
    coroutine = async_write_event(event, collect)  # type: ignore[arg-type]
    try:
        coroutine.send(None)  # nothing in it waits: it runs to the end at once
    except StopIteration:
        pass
    else:
        coroutine.close()
        raise RuntimeError("wyoming's async_write_event waited on something")
    return b"".join(collect.parts)


_AUDIO_STOP = encode(AudioStop().event())


def encode_utterance(pcm: bytes, piece_bytes: int) -> list[bytes]:
    """Each audio piece as its encoded ``audio-chunk`` event, made once so the load costs the client little."""
    return [
        encode(AudioChunk(rate=RATE, width=WIDTH, channels=CHANNELS, audio=pcm[offset : offset + piece_bytes]).event())
        for offset in range(0, len(pcm), piece_bytes)
    ]


async def daemon_stream(
    port: int,
    case: VendorCase,
    pcm: bytes,
    *,
    piece_bytes: int,
    pace: float,
    slot: int,
    iteration: int,
    encoded: list[bytes] | None = None,
) -> StreamResult:
    """One utterance through the daemon, the way Home Assistant's Wyoming STT sends it."""
    result = StreamResult("daemon", case.vendor, slot, iteration, len(pcm) / BYTES_PER_SECOND, expected=case.text)
    chunks = encoded if encoded is not None else encode_utterance(pcm, piece_bytes)
    started = stop_at = 0.0
    answered = asyncio.Event()
    try:
        async with asyncio.timeout(result.audio_seconds / pace + STREAM_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:

                async def read() -> None:
                    while True:
                        event = await async_read_event(reader)
                        now = time.monotonic()
                        if event is None:
                            if not answered.is_set():
                                result.error = "connection closed without an answer"
                                answered.set()
                            return
                        if TranscriptChunk.is_type(event.type):
                            if result.first_partial is None:
                                result.first_partial = now - started
                        elif Transcript.is_type(event.type):
                            if not answered.is_set():
                                result.latency = now - stop_at if stop_at else None
                                result.text = Transcript.from_event(event).text
                                answered.set()
                        elif Error.is_type(event.type):
                            error = Error.from_event(event)
                            result.error = f"{error.code}: {error.text}"
                            answered.set()
                            return
                        elif TranscriptStop.is_type(event.type):
                            return

                receiver = asyncio.create_task(read())
                try:
                    writer.write(encode(Transcribe(language=case.language).event()))
                    writer.write(encode(AudioStart(rate=RATE, width=WIDTH, channels=CHANNELS).event()))
                    await writer.drain()
                    started = time.monotonic()
                    for index, chunk in enumerate(chunks):
                        await _pace(started, min((index + 1) * piece_bytes, len(pcm)), pace)
                        writer.write(chunk)
                        await writer.drain()
                    stop_at = time.monotonic()
                    writer.write(_AUDIO_STOP)
                    await writer.drain()
                    await answered.wait()
                    # Read on to transcript-stop or the close, as a client does, so the daemon finishes cleanly.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(receiver), 2.0)
                finally:
                    receiver.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await receiver
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except TimeoutError:
        result.error = result.error or "timeout"
    except OSError as exc:
        result.error = result.error or f"connection failed: {exc}"
    return result


async def felt_daemon_stream(
    port: int,
    case: VendorCase,
    pcm: bytes,
    *,
    path: str,
    voiced_end: int,
    stop_after: int | None,
    piece_bytes: int,
    pace: float,
    slot: int,
    iteration: int,
    encoded: list[bytes],
) -> StreamResult:
    """One request as Home Assistant 2026.11 makes it: audio uploaded at real-time pace while events are read,
    the upload stopped (and the connection closed) at the first ``transcript`` or ``error``. Without an early
    answer the client sends ``audio-stop`` after ``stop_after`` bytes (its own VAD), or at the end of its audio.

    The latency runs from sending the piece that holds the last voiced frame to reading the transcript."""
    result = StreamResult(path, case.vendor, slot, iteration, len(pcm) / BYTES_PER_SECOND, expected=case.text)
    end = len(pcm) if stop_after is None else min(len(pcm), stop_after)
    voiced_at = answered_at = 0.0
    answered = asyncio.Event()
    try:
        async with asyncio.timeout(result.audio_seconds / pace + STREAM_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:

                async def read() -> None:
                    nonlocal answered_at
                    while not answered.is_set():
                        event = await async_read_event(reader)
                        if event is None:
                            result.error = "connection closed without an answer"
                        elif Transcript.is_type(event.type):
                            answered_at = time.monotonic()
                            result.text = Transcript.from_event(event).text
                        elif Error.is_type(event.type):
                            error = Error.from_event(event)
                            result.error = f"{error.code}: {error.text}"
                        else:
                            continue
                        answered.set()

                receiver = asyncio.create_task(read())
                try:
                    writer.write(encode(Transcribe(language=case.language).event()))
                    writer.write(encode(AudioStart(rate=RATE, width=WIDTH, channels=CHANNELS).event()))
                    await writer.drain()
                    started = time.monotonic()
                    for index, chunk in enumerate(encoded):
                        offset = index * piece_bytes
                        if offset >= end:
                            break
                        await _pace(started, min(offset + piece_bytes, len(pcm)), pace)
                        if answered.is_set():
                            break
                        writer.write(chunk)
                        await writer.drain()
                        result.sent_seconds = min(offset + piece_bytes, len(pcm)) / BYTES_PER_SECOND
                        if not voiced_at and offset + piece_bytes >= voiced_end:
                            voiced_at = time.monotonic()
                    result.early = answered.is_set()
                    if not answered.is_set():
                        writer.write(_AUDIO_STOP)
                        await writer.drain()
                    await answered.wait()
                finally:
                    receiver.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await receiver
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except TimeoutError:
        result.error = result.error or "timeout"
    except OSError as exc:
        # A server that closes right after its answer may break a write still under way: the answer counts.
        if not answered_at:
            result.error = result.error or f"connection failed: {exc}"
    if answered_at and voiced_at and result.error is None:
        result.latency = answered_at - voiced_at
    return result


class _Upload:
    """Audio to a vendor stream as the daemon sends it: whole codec messages as soon as the stream is ready, the
    rest and the end-of-stream message at the end. Connecting starts at once, beside the first pieces."""

    def __init__(self, stream: VendorStream) -> None:
        self.stream = stream
        self.size = stream.codec.chunk_bytes
        self.buffer = bytearray()
        self.connecting = asyncio.create_task(stream.connect())

    async def push(self, piece: bytes) -> None:
        self.buffer += piece
        if self.connecting.done() and self.stream.ready:
            self.connecting.result()
            while len(self.buffer) >= self.size:
                await self.stream.send_audio(bytes(self.buffer[: self.size]))
                del self.buffer[: self.size]

    async def end(self) -> None:
        await self.connecting
        await self.stream.wait_ready()
        while self.buffer:
            await self.stream.send_audio(bytes(self.buffer[: self.size]))
            del self.buffer[: self.size]
        await self.stream.end()

    async def cancel(self) -> None:
        if not self.connecting.done():
            self.connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.connecting


@contextlib.asynccontextmanager
async def _direct_run(
    stream: VendorStream, receiver: asyncio.Task[None], result: StreamResult, seconds: float
) -> AsyncIterator[None]:
    """One direct stream's run within ``seconds``: a vendor failure or the time running out becomes the
    result's error; the receiver and the stream are closed however it ends."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except VendorFailure as failure:
        result.error = f"vendor: {failure.error.message}"
    except TimeoutError:
        result.error = result.error or "timeout"
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
        await stream.aclose()


async def felt_direct_stream(
    adapter: WebSocketAdapter,
    case: VendorCase,
    pcm: bytes,
    *,
    voiced_end: int,
    piece_bytes: int,
    pace: float,
    slot: int,
    iteration: int,
) -> StreamResult:
    """The same audio straight to the vendor: the moment the vendor's own final covers the whole command.

    Pieces are passed on in the codec's message size as they are "spoken"; the upload stops once the finals
    so far make up the command (the vendor found the end of speech itself). A vendor that waits for the end of
    audio gets the end-of-stream message after the last piece, and its completion ends the stream."""
    result = StreamResult("vendor", case.vendor, slot, iteration, len(pcm) / BYTES_PER_SECOND, expected=case.text)
    options = StreamOptions(language=case.language, session_id=f"felt-{slot}-{iteration}")
    stream = VendorStream(adapter, options)
    voiced_at = final_at = 0.0
    segments: list[str] = []
    answered = asyncio.Event()

    async def receive() -> None:
        nonlocal final_at
        while not answered.is_set():
            event = await stream.events.get()
            if isinstance(event, FinalResult):
                segments.append(event.text)
                final_at = time.monotonic()
                if join_segments(case.language, segments) != case.text:
                    continue
            elif isinstance(event, VendorError):
                result.error = f"vendor: {event.message}"
            elif not isinstance(event, StreamCompleted):
                continue
            answered.set()

    receiver = asyncio.create_task(receive())
    async with _direct_run(stream, receiver, result, result.audio_seconds / pace + STREAM_TIMEOUT):
        started = time.monotonic()
        upload = _Upload(stream)
        try:
            for offset in range(0, len(pcm), piece_bytes):
                piece = pcm[offset : offset + piece_bytes]
                await _pace(started, offset + len(piece), pace)
                if answered.is_set():
                    break
                result.sent_seconds = (offset + len(piece)) / BYTES_PER_SECOND
                if not voiced_at and offset + piece_bytes >= voiced_end:
                    voiced_at = time.monotonic()
                await upload.push(piece)
            result.early = answered.is_set()
            if not answered.is_set():
                await upload.end()
                await answered.wait()
            result.text = join_segments(case.language, segments)
            if final_at and voiced_at and result.error is None:
                result.latency = final_at - voiced_at
        finally:
            await upload.cancel()
    return result


async def chunk_stream(
    port: int, chunks: list[bytes], audio_bytes: list[int], *, pace: float, seconds: float, delay: float
) -> float:
    """Encoded audio chunks sent to ``port`` round and round, at ``pace`` for ``seconds`` after ``delay``, the
    way ``daemon_stream`` sends them; nothing is read back (the wake-up floor's load). Returns the audio seconds
    sent."""
    await asyncio.sleep(delay)
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = index = 0
    try:
        started = time.monotonic()
        while sent < seconds * pace * BYTES_PER_SECOND:
            await _pace(started, sent + audio_bytes[index], pace)
            writer.write(chunks[index])
            await writer.drain()
            sent += audio_bytes[index]
            index = (index + 1) % len(chunks)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return sent / BYTES_PER_SECOND


async def direct_stream(
    adapter: WebSocketAdapter,
    case: VendorCase,
    pcm: bytes,
    *,
    piece_bytes: int,
    pace: float,
    slot: int,
    iteration: int,
) -> StreamResult:
    """The same utterance sent straight to the vendor emulator: its codec over the shared transport, no session.

    Audio arrives in the same pieces at the same pace as the Wyoming client sends it; it is passed on in the
    codec's preferred message size as soon as a message is full (and the stream is ready), and the rest plus
    the end-of-stream message at the end, as the daemon does.
    """
    result = StreamResult("direct", case.vendor, slot, iteration, len(pcm) / BYTES_PER_SECOND, expected=case.text)
    options = StreamOptions(language=case.language, session_id=f"direct-{slot}-{iteration}")
    stream = VendorStream(adapter, options)
    started = stop_at = 0.0
    segments: list[str] = []

    async def receive() -> None:
        while True:
            event = await stream.events.get()
            now = time.monotonic()
            if isinstance(event, PartialResult):
                if result.first_partial is None and event.text:
                    result.first_partial = now - started
            elif isinstance(event, FinalResult):
                segments.append(event.text)
            elif isinstance(event, StreamCompleted):
                result.latency = now - stop_at if stop_at else None
                result.text = join_segments(case.language, segments)
                return
            elif isinstance(event, VendorError):
                result.error = f"vendor: {event.message}"
                return

    receiver = asyncio.create_task(receive())
    async with _direct_run(stream, receiver, result, result.audio_seconds / pace + STREAM_TIMEOUT):
        started = time.monotonic()
        upload = _Upload(stream)
        try:
            for offset in range(0, len(pcm), piece_bytes):
                piece = pcm[offset : offset + piece_bytes]
                await _pace(started, offset + len(piece), pace)
                await upload.push(piece)
            stop_at = time.monotonic()
            await upload.end()
            await receiver
        finally:
            await upload.cancel()
    return result


async def describe_round_trip(port: int, timeout: float = 5.0) -> float:
    """Seconds from opening a connection to having the parsed ``info`` (what Home Assistant waits for)."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await async_write_event(Describe().event(), writer)
            while True:
                event = await async_read_event(reader)
                if event is None:
                    raise ConnectionError("connection closed before info")
                if Info.is_type(event.type):
                    Info.from_event(event)
                    return time.monotonic() - started
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


StreamRunner = Callable[[VendorCase, int, int], Awaitable[StreamResult]]


async def run_slot(
    runner: StreamRunner, cases: tuple[VendorCase, ...], slot: int, iterations: int, delay: float
) -> list[StreamResult]:
    """One client: waits ``delay`` (slots start spread out), then streams ``iterations`` utterances back to back,
    rotating through the vendors."""
    await asyncio.sleep(delay)
    results = []
    for iteration in range(iterations):
        case = cases[(slot + iteration) % len(cases)]
        results.append(await runner(case, slot, iteration))
    return results


class Periodic:
    """Runs ``tick()`` every ``interval`` seconds between ``start()`` and ``stop()``."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def tick(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            await self.tick()


class LoopLag(Periodic):
    """How late this process's event loop wakes up (a saturated load generator would distort both paths)."""

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(interval)
        self.samples: list[float] = []

    async def tick(self) -> None:
        before = time.monotonic()
        await asyncio.sleep(self.interval)
        self.samples.append(max(0.0, time.monotonic() - before - self.interval))
