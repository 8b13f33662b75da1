"""One Wyoming connection driven in-process: the bytes a client sends go to the connection's event reader the way
the server's protocol hands them over (one ``feed_data`` per TCP segment, then the end of the stream), the real
handler reads and answers, and a stub vendor answers every utterance at once. No socket, no timer to wait for:
a case costs about a millisecond, so a long run reaches hundreds of thousands of connections.

``run_connection`` checks what a client depends on: the handler ends by itself (no exception escapes it) within
bounded steps, everything it writes is well-formed Wyoming, an ``error`` carries a short code and message and is
never an internal error, and every vendor stream and task the connection started is gone once it ends.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hypothesis import strategies as st
from wyoming.event import Event, read_event

from asr_daemon.info import build_info
from asr_daemon.resilience.policy import ResiliencePolicy
from asr_daemon.routing import Router
from asr_daemon.session import SessionLimits
from asr_daemon.settings import VendorSettings
from asr_daemon.sources.wyoming_handler import HandlerContext, WyomingAsrHandler
from asr_daemon.sources.wyoming_reader import EventStreamReader
from asr_daemon.vendors.base import (
    BaseStream,
    FinalResult,
    Outgoing,
    PartialResult,
    StreamCodec,
    StreamCompleted,
    StreamOptions,
    VendorAdapter,
    VendorEvent,
)

# The daemon's default limit on the data + payload sizes an event may claim.
MAX_EVENT_BYTES = 1 << 20
# Loop turns a connection may take after its last byte before it must have ended (each turn runs every ready
# callback; a handler that needs more is stuck, not slow).
MAX_TURNS_AFTER_EOF = 2000
# An error code is a short word, and its text a line or two, whatever the client sent.
ERROR_CODE = re.compile(r"^[a-z][a-z-]{1,40}$")
MAX_ERROR_TEXT = 2000


class StubCodec(StreamCodec):
    def start(self) -> list[Outgoing]:
        self.ready = True
        return []

    def send_audio(self, pcm: bytes) -> list[Outgoing]:
        return []

    def end_of_stream(self) -> list[Outgoing]:
        return []

    def receive(self, message: str | bytes) -> list[VendorEvent]:
        return []


class StubStream(BaseStream):
    """A vendor that accepts at once, says one partial per audio chunk and answers the end of audio at once."""

    adapter: StubAdapter

    async def connect(self) -> None:
        self.adapter.open_streams += 1
        self.codec.ready = True
        self._ready.set()

    async def send_audio(self, pcm: bytes) -> None:
        self._emit([PartialResult("hello")])

    async def end(self) -> None:
        self.codec.end()
        self.end_sent.set()
        self._emit([FinalResult("hello world"), StreamCompleted()])

    async def aclose(self) -> None:
        if not self._closed.is_set():
            self.adapter.open_streams -= 1
        self._closed.set()


class StubAdapter(VendorAdapter):
    name: ClassVar[str] = "stub"
    settings_model: ClassVar[type[VendorSettings]] = VendorSettings
    default_url: ClassVar[str] = "ws://127.0.0.1:9/unused"
    codec_class: ClassVar[type[StreamCodec]] = StubCodec
    stream_class: ClassVar[type[StubStream]] = StubStream
    prewarms_connections: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__(VendorSettings(languages=["en", "ja"]))
        self.open_streams = 0

    def new_codec(self, options: StreamOptions) -> StreamCodec:
        return StubCodec()

    def open_stream(self, options: StreamOptions, policy: ResiliencePolicy) -> StubStream:
        return StubStream(self, options, policy)


class FakeTransport(asyncio.Transport):
    """The socket's side of a connection: collects what the handler writes, obeys pause/resume of reading."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed:
            self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_reading(self) -> bool:
        return not self.paused

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.7", 40000) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0


@dataclass
class Outcome:
    answers: list[Event] = field(default_factory=list)
    # Segments the reader never took because the connection had ended (or paused for good).
    unread_segments: int = 0


class ConnectionFailure(AssertionError):
    """A promise of the Wyoming side was broken for one connection."""


# Failures already reported and tracked by their own (strict xfail) tests in tests/test_fuzz_wyoming.py: a long
# run counts them and goes on looking for new ones. Remove an entry once its test passes.
KNOWN_FAILURES: dict[str, tuple[str, ...]] = {}


def known_failure(failure: ConnectionFailure) -> str | None:
    """The name of the known failure ``failure`` is, if it is one."""
    text = str(failure)
    return next((name for name, signs in KNOWN_FAILURES.items() if any(sign in text for sign in signs)), None)


async def run_connection(segments: Iterable[bytes], *, lost: bool = False) -> Outcome:
    """Send ``segments`` (one TCP segment each) on one connection, then close it (``lost``: it breaks instead)."""
    loop = asyncio.get_running_loop()
    adapter = StubAdapter()
    router = Router({"stub": adapter})
    limits = SessionLimits(max_audio_seconds=5.0, final_timeout=2.0)
    context = HandlerContext(build_info(router).event(), router, limits, idle_timeout=30.0)
    transport = FakeTransport()
    reader = EventStreamReader(MAX_EVENT_BYTES)
    protocol = asyncio.StreamReaderProtocol(reader)
    reader.set_transport(transport)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    handler = WyomingAsrHandler(context, reader, writer)
    before = asyncio.all_tasks()
    task = loop.create_task(handler.run())
    outcome = Outcome()
    pending = list(segments)
    for index, segment in enumerate(pending):
        turns = 0
        while transport.paused and not task.done() and turns < MAX_TURNS_AFTER_EOF:
            await asyncio.sleep(0)  # a socket delivers nothing while reading is paused
            turns += 1
        if task.done() or transport.closed or transport.paused:
            outcome.unread_segments = len(pending) - index
            break
        reader.feed_data(segment)
        await asyncio.sleep(0)
    if not task.done():
        if lost:
            reader.set_exception(ConnectionResetError())
        else:
            reader.feed_eof()
    for _ in range(MAX_TURNS_AFTER_EOF):
        if task.done():
            break
        await asyncio.sleep(0)
    if not task.done():
        task.cancel()
        raise ConnectionFailure(f"the handler did not end within {MAX_TURNS_AFTER_EOF} loop turns of the last byte")
    if task.exception() is not None:
        raise ConnectionFailure(f"an exception escaped the handler: {task.exception()!r}") from task.exception()
    if not transport.closed:
        raise ConnectionFailure("the handler ended without closing the connection")
    outcome.answers = _events(bytes(transport.written))
    for answer in outcome.answers:
        if answer.type == "error":
            _check_error(answer)
    if context.sessions:
        raise ConnectionFailure(f"{len(context.sessions)} session(s) still registered after the connection ended")
    if adapter.open_streams:
        raise ConnectionFailure(f"{adapter.open_streams} vendor stream(s) still open after the connection ended")
    leaked = [t for t in asyncio.all_tasks() - before if t is not task and not t.done()]
    if leaked:
        for extra in leaked:
            extra.cancel()
        raise ConnectionFailure(f"tasks outlived the connection: {[t.get_name() for t in leaked]}")
    return outcome


def _events(written: bytes) -> list[Event]:
    stream = io.BytesIO(written)
    events = []
    while stream.tell() < len(written):
        try:
            event = read_event(stream)  # type: ignore[arg-type]
        except Exception as exc:
            raise ConnectionFailure(f"the handler wrote something that is not Wyoming: {exc!r}") from exc
        if event is None:
            raise ConnectionFailure("the handler wrote a truncated event")
        events.append(event)
    return events


def _check_error(event: Event) -> None:
    code, text = event.data.get("code"), event.data.get("text")
    if not isinstance(code, str) or not ERROR_CODE.match(code):
        raise ConnectionFailure(f"error event without a known code: {code!r}")
    if code == "internal":
        raise ConnectionFailure(f"the handler failed on the client's input: {text!r}")
    if not isinstance(text, str) or not text or len(text) > MAX_ERROR_TEXT or "Traceback" in text:
        raise ConnectionFailure(f"error text not fit for a client: {str(text)[:300]!r}")


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` as TCP segments cut at ``cuts`` (offsets, any order, out-of-range ones ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


def run(loop: asyncio.AbstractEventLoop, segments: list[bytes], *, lost: bool = False) -> Outcome:
    """``run_connection`` on ``loop`` (the long run reuses one loop for every case)."""
    return loop.run_until_complete(run_connection(segments, lost=lost))


# -- what clients send -------------------------------------------------------------------------------------

EVENT_TYPES = ["describe", "transcribe", "audio-start", "audio-chunk", "audio-stop", "ping", "synthesize",
               "transcript", "error", "x" * 300, ""]  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
audio_fields = st.fixed_dictionaries(
    {
        "rate": st.sampled_from([16000] * 6 + [8000, 48000, 0, -1, 10**9, 7, "16000", None, 1.5, True]),
        "width": st.sampled_from([2] * 6 + [1, 4, 3, 0, 8, None, "2"]),
        "channels": st.sampled_from([1] * 6 + [2, 0, 64, None]),
    },
    optional={"timestamp": st.one_of(st.none(), st.integers())},
) | st.dictionaries(st.sampled_from(["rate", "width", "channels", "timestamp"]), st.integers(-5, 10**6), max_size=3)
transcribe_fields = st.fixed_dictionaries(
    {},
    optional={
        "language": st.sampled_from(["en", "ja", "ja-JP", "de", "", None, 5, ["ja"], "x\nforged", "e" * 5000]),
        "name": st.text(max_size=8) | json_values,
        "transcript_names": st.lists(st.text(max_size=6), max_size=3) | st.just("abc") | json_values,
        "transcript_terms": st.lists(st.text(max_size=6), max_size=3) | json_values,
    },
)


def frame(header: dict[str, Any], data: bytes = b"", payload: bytes = b"") -> bytes:
    return json.dumps(header).encode() + b"\n" + data + payload


@st.composite
def good_event(draw: st.DrawFn) -> bytes:
    """An event as a client library frames it (data inline or as a block, sizes true)."""
    event_type = draw(
        st.sampled_from(["describe", "transcribe", "audio-start", "audio-chunk", "audio-chunk", "audio-stop"])
    )
    data: dict[str, Any]
    if event_type == "transcribe":
        data = draw(transcribe_fields)
    elif event_type.startswith("audio-") and event_type != "audio-stop":
        data = draw(audio_fields)
    else:
        data = {}
    payload = draw(st.binary(max_size=700)) if event_type == "audio-chunk" else b""
    header: dict[str, Any] = {"type": event_type, "version": "1.5.2"}
    block = b""
    if data and draw(st.booleans()):
        block = json.dumps(data).encode()
        header["data_length"] = len(block)
    elif data:
        header["data"] = data
    if payload:
        header["payload_length"] = len(payload)
    return frame(header, block, payload)


@st.composite
def hostile_event(draw: st.DrawFn) -> bytes:
    """Framing a client library would never send: lying sizes, bad JSON, deep nesting, huge claims."""
    kind = draw(st.sampled_from(["garbage", "lying-length", "bad-json", "deep", "not-object", "no-type", "huge",
                                 "wrong-types", "long-line", "any-data"]))  # fmt: skip
    if kind == "garbage":
        return draw(st.binary(max_size=200)) + b"\n"
    if kind == "bad-json":
        return b'{"type": "describe", "data_length": 5}\n{nope' if draw(st.booleans()) else b'{"type": "desc\n'
    if kind == "deep":
        depth = draw(st.sampled_from([100, 999, 5000, 50_000]))
        inner = b"[" * depth + b"]" * depth
        where = draw(st.sampled_from(["header", "data", "data-block"]))
        if where == "header":
            return inner + b"\n"
        if where == "data":
            return b'{"type": "transcribe", "data": ' + inner + b"}\n"
        return frame({"type": "transcribe", "data_length": len(inner)}, inner)
    if kind == "not-object":
        return draw(
            st.sampled_from([b"[]\n", b'"describe"\n', b"null\n", b"5\n", b'{"type": "describe", "data": []}\n'])
        )
    if kind == "no-type":
        return frame(draw(st.dictionaries(st.sampled_from(["data", "version", "typ"]), json_values, max_size=3)))
    if kind == "huge":
        claim = draw(st.sampled_from(["data_length", "payload_length"]))
        size = draw(st.sampled_from([MAX_EVENT_BYTES, MAX_EVENT_BYTES + 1, 2**40, 10**30, -1, 2**63]))
        header: dict[str, Any] = {
            "type": "audio-chunk",
            "data": {"rate": 16000, "width": 2, "channels": 1},
            claim: size,
        }
        if draw(st.booleans()):
            header["data_length" if claim == "payload_length" else "payload_length"] = MAX_EVENT_BYTES // 2 + 1
        return frame(header, draw(st.binary(max_size=64)))
    if kind == "wrong-types":
        field_name = draw(st.sampled_from(["type", "data", "data_length", "payload_length", "version"]))
        value = draw(json_values | st.sampled_from(["ten", 1.5, True, [], {}]))
        return frame({"type": "audio-chunk", field_name: value}, draw(st.binary(max_size=16)))
    if kind == "long-line":
        return b'{"type": "describe", "x": "' + b"a" * draw(st.sampled_from([65_000, 70_000])) + b'"}\n'
    data = draw(json_values) if kind == "any-data" else {}
    payload = draw(st.binary(max_size=64))
    lying: dict[str, Any] = {"type": draw(st.sampled_from(EVENT_TYPES)), "data": data}
    if payload or kind == "lying-length":
        lying["payload_length"] = draw(st.sampled_from([len(payload), len(payload) + 7, max(len(payload) - 1, 0), "7"]))
    return frame(lying, b"", payload)


@st.composite
def utterance(draw: st.DrawFn) -> bytes:
    """What Home Assistant sends for one utterance, mostly right."""
    language = draw(st.sampled_from(["en", "ja", "de", None]))
    fmt = {"rate": 16000, "width": 2, "channels": 1}
    parts = [frame({"type": "transcribe", "data": {"language": language} if language else {}})]
    if draw(st.booleans()):
        parts.append(frame({"type": "audio-start", "data": fmt}))
    for _ in range(draw(st.integers(0, 6))):
        pcm = draw(st.binary(min_size=0, max_size=640))
        parts.append(frame({"type": "audio-chunk", "data": fmt, "payload_length": len(pcm)}, b"", pcm))
    if draw(st.booleans()):
        parts.append(frame({"type": "audio-stop"}))
    return b"".join(parts)


@st.composite
def client_streams(draw: st.DrawFn) -> tuple[list[bytes], bool]:
    """Everything one client sends, cut into TCP segments at arbitrary points, and whether the link breaks."""
    pieces = draw(st.lists(utterance() | good_event() | good_event() | hostile_event(), min_size=1, max_size=6))
    data = b"".join(pieces)
    if draw(st.integers(0, 5)) == 0:
        data = data[: draw(st.integers(0, len(data)))]  # the client stops mid-event
    if draw(st.booleans()):
        cuts: list[int] = []  # one segment per event, as a client writes them
        offset = 0
        for piece in pieces:
            offset += len(piece)
            cuts.append(offset)
    else:
        cuts = draw(st.lists(st.integers(0, len(data)), max_size=12))
    return split(data, cuts), draw(st.integers(0, 7)) == 0
