"""The contract every vendor implements.

A vendor is two pieces:

* a ``StreamCodec``: a sans-I/O state machine for one recognition stream. It turns the daemon's intent
  (start, audio, end) into WebSocket messages and the vendor's messages into typed ``VendorEvent``s. It
  never touches a socket, so it is tested byte for byte and fuzzed.
* a ``VendorAdapter``: the vendor's settings, the languages it serves, its secrets, and how to open a
  ``Stream``: one recognition stream as the session drives it. It names its codec and stream classes.

Streams come in two kinds: ``VendorStream`` (``vendors/transport.py``) drives a codec over one WebSocket for
every cloud vendor (their adapters are ``WebSocketAdapter``s, which add the connection recipe: URL, headers,
pings, any pre-connection step such as a token request); ``LocalStream`` (``vendors/local/``) decodes on this
machine. Both keep their events alike through ``BaseStream``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

# The vendor contract speaks in these: importable from here too.
from ..audio.format import PCM16K as PCM16K
from ..audio.format import AudioFormat as AudioFormat
from ..settings import VendorSettings

if TYPE_CHECKING:
    from ..resilience.policy import ResiliencePolicy
    from ..resilience.replay import ConnectionTimeline

_LOGGER = logging.getLogger(__name__)

# A WebSocket message: ``str`` goes out as a text frame, ``bytes`` as a binary frame.
Outgoing = str | bytes


# ---------------------------------------------------------------------------------------------------------
# Events a codec produces


@dataclass(frozen=True, slots=True)
class StreamReady:
    """The vendor accepted the stream; audio may flow."""


@dataclass(frozen=True, slots=True)
class PartialResult:
    """Current hypothesis of the open segment; replaces the previous partial of that segment."""

    text: str


@dataclass(frozen=True, slots=True)
class FinalResult:
    """One segment (sentence/utterance) is final. Times are ms from the start of the stream's audio."""

    text: str
    start_ms: int | None = None
    end_ms: int | None = None


@dataclass(frozen=True, slots=True)
class StreamCompleted:
    """Everything the vendor will say about this stream has been said."""


@dataclass(frozen=True, slots=True)
class VendorError:
    """The vendor reported an error or broke the protocol.

    ``fatal`` marks errors that retrying cannot fix (bad key, rejected configuration): they are reported
    at once and never retried. ``code`` is the vendor's own code, kept for logs and error events.
    """

    message: str
    code: str | None = None
    fatal: bool = False


VendorEvent = StreamReady | PartialResult | FinalResult | StreamCompleted | VendorError


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """What the caller asked for, for one stream."""

    language: str
    # Names and terms that should bias recognition (Wyoming ``transcribe`` since 1.10).
    phrases: tuple[str, ...] = ()
    # Correlates vendor-side logs with ours (e.g. SAUC's X-Api-Connect-Id, AmiVoice's utteranceid).
    session_id: str = ""


class StreamCodec(ABC):
    """Sans-I/O state machine for one recognition stream.

    The transport calls ``start()`` right after the WebSocket opens and sends what it returns. Audio is sent
    only once ``ready`` is true (a codec that needs the vendor's acknowledgement emits ``StreamReady`` when
    it arrives). ``send_audio()`` receives PCM in ``audio_format``, already re-chunked to ``chunk_bytes``
    (the last chunk may be shorter). ``end()`` returns the end-of-stream messages. Every received message
    goes through ``receive()``; the close of the connection through ``connection_closed()``.
    """

    # What the vendor wants; the session normalises and re-chunks to it.
    audio_format: ClassVar[AudioFormat] = PCM16K
    # Preferred audio bytes per message (100 ms of 16 kHz s16le mono by default).
    chunk_bytes: ClassVar[int] = 3200
    # The fastest the vendor accepts audio, as a multiple of real time (None: no limit). Audio replayed after
    # a reconnection is paced to it after an initial one-second burst.
    max_send_speed: ClassVar[float | None] = None
    # Send silence after this many seconds without client audio, for vendors that cut idle streams and
    # have no keepalive message (None: the vendor needs none).
    keepalive_seconds: ClassVar[float | None] = None

    def __init__(self) -> None:
        self.ready = False
        self.ended = False
        self.completed = False

    @abstractmethod
    def start(self) -> list[Outgoing]:
        """Messages to send once the connection is open."""

    @abstractmethod
    def send_audio(self, pcm: bytes) -> list[Outgoing]:
        """Messages that carry one chunk of audio."""

    def end(self) -> list[Outgoing]:
        """Messages that tell the vendor no more audio follows (once: later calls send nothing)."""
        if self.ended:
            return []
        self.ended = True
        return self.end_of_stream()

    @abstractmethod
    def end_of_stream(self) -> list[Outgoing]:
        """The vendor's end-of-stream messages (called once, by ``end``)."""

    @abstractmethod
    def receive(self, message: str | bytes) -> list[VendorEvent]:
        """Parse one message from the vendor. Never raises: malformed input becomes a ``VendorError``."""

    def connection_closed(self, code: int | None, reason: str) -> list[VendorEvent]:
        """The connection closed (``code`` None when it closed without a close frame)."""
        if self.completed:
            return []
        shown = "no close frame" if code is None else f"code {code}"
        detail = f": {reason}" if reason else ""
        return [VendorError(f"vendor closed the connection before completing ({shown}{detail})")]


class PcmFrameCodec(StreamCodec):
    """A codec whose audio messages are the PCM itself, one binary frame per chunk, and whose end of stream is
    one ``end_message`` (iApp, Yating)."""

    end_message: ClassVar[Outgoing]

    def send_audio(self, pcm: bytes) -> list[Outgoing]:
        # Audio after the end is a protocol error, and an empty frame says nothing (or, to Yating, ends the stream).
        if self.ended or not pcm:
            return []
        return [pcm]

    def end_of_stream(self) -> list[Outgoing]:
        return [self.end_message]


# ---------------------------------------------------------------------------------------------------------
# Parsing helpers shared by the codecs

# How much of a vendor's own words an error message quotes.
QUOTE_CHARS = 200


def quote_vendor_text(text: str) -> str:
    """Vendor text fit for an error message: one line, bounded, secrets masked (it may echo the key)."""
    from ..redact import redact

    flat = redact(" ".join(text.split()))
    return flat if len(flat) <= QUOTE_CHARS else flat[: QUOTE_CHARS - 1] + "…"


# The most text one result may carry. A minute of fast speech is ~1,500 characters; a longer result is a vendor
# misbehaving, and the daemon keeps no more of it than this.
RESULT_CHARS = 10_000
TRUNCATED = "…[truncated]"


def bounded_result(text: str) -> str:
    """``text`` cut to ``RESULT_CHARS``, ending in ``TRUNCATED`` when it was cut."""
    return text if len(text) <= RESULT_CHARS else text[: RESULT_CHARS - len(TRUNCATED)] + TRUNCATED


def json_object(text: str | bytes) -> dict[str, Any] | None:
    """``text`` as a JSON object, or None when it is not one."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def json_message(vendor: str, message: str | bytes) -> dict[str, Any] | VendorError:
    """A vendor's text message as a JSON object, or the error that says what was wrong with it."""
    if isinstance(message, bytes):
        return VendorError(f"{vendor} sent an unexpected binary message ({len(message)} bytes)")
    document = json_object(message)
    if document is not None:
        return document
    if json_object(f'{{"v": {message}}}') is None:
        return VendorError(f"{vendor} sent a message that is not JSON: {quote_vendor_text(message)}")
    return VendorError(f"{vendor} sent an unexpected message: {quote_vendor_text(message)}")


# ---------------------------------------------------------------------------------------------------------
# Adapters


class VendorAdapter(ABC):
    """One vendor: its settings model, the languages it serves, its secrets, and how to open a stream."""

    # Registry name, also the key under ``vendors.`` in the config.
    name: ClassVar[str]
    settings_model: ClassVar[type[VendorSettings]]
    # The vendor's public endpoint, used when ``url`` is not set.
    default_url: ClassVar[str]
    # The codec ``new_codec`` makes: the session reads what the vendor wants (audio format, chunk size, pacing,
    # keepalive) from its class attributes before any stream exists.
    codec_class: ClassVar[type[StreamCodec]]
    # The stream ``open_stream`` makes.
    stream_class: ClassVar[type[Stream]]
    # Whether a stream is a network connection worth holding open ahead of time (``prewarm``).
    prewarms_connections: ClassVar[bool] = True
    # Whether its audio costs money, and so counts against the audio budget (``budget``).
    paid: ClassVar[bool] = True

    def __init__(self, settings: VendorSettings) -> None:
        if not isinstance(settings, self.settings_model):
            # Settings validated as another model (e.g. the base one, built by hand): this vendor's keys get their
            # defaults, so an adapter reads its own settings model, typed, as ``self.settings``.
            settings = self.settings_model.model_validate(settings.model_dump())
        self.settings = settings

    @property
    def languages(self) -> list[str]:
        return list(self.settings.languages)

    @property
    def endpoint(self) -> str:
        return self.settings.url or self.default_url

    async def preload(self) -> None:
        """Prepare ahead of the first stream (an engine loading its model); default: nothing to do."""
        return None

    def secrets(self) -> list[str]:
        """Values that must never appear in logs or error messages."""
        key = self.settings.key()
        return [key] if key else []

    def has_credentials(self) -> bool:
        """Whether a key is configured (the vendor refuses every stream without one)."""
        return bool(self.settings.key())

    def secret_carrying_urls(self) -> dict[str, str]:
        """Setting name under ``vendors.<name>`` → the URL it resolves to, for every URL a secret travels to."""
        return {"url": self.endpoint}

    @abstractmethod
    def new_codec(self, options: StreamOptions) -> StreamCodec:
        """A fresh codec (a ``codec_class``) for one stream."""

    @abstractmethod
    def open_stream(self, options: StreamOptions, policy: ResiliencePolicy) -> Stream:
        """A new, not yet connected stream (a ``stream_class``); the session and the pre-warm pool only use this."""

    def stream_variant(self, options: StreamOptions) -> object:
        """What makes two streams' set-up differ: a pre-warmed connection serves only requests of its variant.

        By default the phrase hints (vendors that send them at the start); vendors whose set-up depends on the
        language (a Yating pipeline) add that.
        """
        return options.phrases


# ---------------------------------------------------------------------------------------------------------
# Streams

# A stream's undelivered events; a vendor flooding results costs only its own stream.
MAX_QUEUED_EVENTS = 1024


class Stream(Protocol):
    """One recognition stream, as the session and the pre-warm pool drive it, whatever carries it.

    ``connect()`` raises ``VendorFailure``; from then on everything the vendor says (results, errors, the end of
    the connection) arrives in ``events``, as the codec's ``VendorEvent``s. ``send_audio`` takes PCM in the
    codec's ``audio_format``; ``end()`` sends the end of audio once; ``aclose()`` lets everything go.
    """

    # The audio clock of this connection, kept by whoever sends audio (keepalive silence included).
    timeline: ConnectionTimeline | None
    # Offered each received event before it is queued in ``events`` (while nothing waits there): True, taken.
    consumer: Callable[[VendorEvent], bool] | None

    @property
    def codec(self) -> StreamCodec: ...

    @property
    def events(self) -> asyncio.Queue[VendorEvent]: ...

    @property
    def end_sent(self) -> asyncio.Event:
        """Set once the end of audio went out: from then on the vendor owes its final answer."""
        ...

    @property
    def connect_seconds(self) -> float | None:
        """How long ``connect()`` took (None until it succeeded)."""
        ...

    @property
    def ready(self) -> bool: ...

    @property
    def closed(self) -> bool: ...

    async def connect(self) -> None: ...

    async def wait_ready(self) -> None:
        """Wait until the vendor accepted the stream (or the stream closed, which the events report)."""
        ...

    async def send_audio(self, pcm: bytes) -> None: ...

    def send_audio_now(self, pcm: bytes) -> bool:
        """``send_audio`` without waiting, where the stream can take it at once; False (nothing sent): it cannot."""
        ...

    async def end(self) -> None: ...

    async def aclose(self) -> None: ...


class _Flag(asyncio.Event):
    """An ``asyncio.Event`` that also wakes the one future ``BaseStream.wait_ready`` waits on, if any."""

    def __init__(self) -> None:
        super().__init__()
        self.waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        super().set()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class BaseStream:
    """What every ``Stream`` keeps alike: its codec, its queue of events, whether it is ready and closed.

    Implementations pass what their codec returns to ``_emit``, set ``_ready`` when audio may flow and
    ``_closed`` once nothing more will arrive.
    """

    def __init__(self, adapter: VendorAdapter, options: StreamOptions, policy: ResiliencePolicy) -> None:
        self.adapter = adapter
        self.options = options
        self.policy = policy
        self.codec: StreamCodec = adapter.new_codec(options)
        self.timeline: ConnectionTimeline | None = None
        self.events: asyncio.Queue[VendorEvent] = asyncio.Queue(MAX_QUEUED_EVENTS)
        self.consumer: Callable[[VendorEvent], bool] | None = None
        self.connect_seconds: float | None = None
        self.end_sent = asyncio.Event()
        self._ready = _Flag()
        self._closed = _Flag()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def send_audio_now(self, pcm: bytes) -> bool:
        """Streams that have no way to send without waiting take their audio through ``send_audio`` only."""
        return False

    async def wait_ready(self) -> None:
        # One future either flag resolves: no task per flag, no asyncio.wait.
        ready, closed = self._ready, self._closed
        if ready.is_set() or closed.is_set():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ready.waiter = closed.waiter = waiter
        try:
            await waiter
        finally:
            ready.waiter = closed.waiter = None

    def _emit(self, events: Iterable[VendorEvent]) -> None:
        """Hand over what the codec made of a received message: to ``consumer`` at once where it takes it (the hot
        path: no queue, no task switch), else to ``events``. An event never overtakes one still queued."""
        queue = self.events
        for event in events:
            if isinstance(event, StreamReady):
                self._ready.set()
            consumer = self.consumer
            if consumer is not None and queue.empty() and consumer(event):
                continue
            if queue.full():
                _LOGGER.warning("%s: dropping a result; the stream is not being read", self.adapter.name)
                continue
            queue.put_nowait(event)


class VendorFailure(Exception):
    """A stream failed; carries the ``VendorError`` that says why."""

    def __init__(self, error: VendorError) -> None:
        super().__init__(error.message)
        self.error = error
