"""Reading Wyoming events as bytes arrive, inside the socket's callback, within bounds.

The stream reader of the ``asyncio`` streams API wakes the connection's task for every audio chunk, and the
task then reads the header line, the data block and the payload in three awaits. Here the bytes are framed
where they arrive (the protocol's ``data_received``): :class:`EventBuffer` holds them and reads events the way
the ``wyoming`` package's ``read_event`` does (the tests hold it to that reader, fed by the package's writer).
Each header line and data block is parsed once: an event that is not all there yet waits, parsed as far as it
goes, until the bytes it claims have arrived, so a peer sending one byte at a time costs one length check per
byte, not a parse.

:class:`EventStreamReader` is the connection's reader. Events go to the handler's task in order; while that
task is waiting for its next event, the handler may take an event on the spot instead (``take_now``: audio
chunks of an utterance that is streaming), which costs no task switch. The sizes a peer claims are checked
before anything is buffered for them, and what a connection holds is bounded: reading pauses while the events
waiting for the handler weigh more than ``max_block`` bytes (or number more than ``MAX_QUEUED_EVENTS``). A
connection idle for ``idle_timeout`` gets a ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, cast

from wyoming.event import Event

from ..quiet_timer import QuietTimer

_LOGGER = logging.getLogger(__name__)

# Longest JSON header line a peer may send.
MAX_HEADER_LINE = 64 * 1024
# Largest data block (the JSON after the header line). Clients send a few short fields (a language, a name, an
# audio format); JSON takes ~25 times its size once parsed, so this is much smaller than the payload limit.
MAX_DATA_BLOCK = 64 * 1024
# Events received but not yet handled before reading from the socket pauses (a client that outruns us).
MAX_QUEUED_EVENTS = 64
# What a waiting event weighs besides its payload: its objects, and its data JSON as parsed (per byte sent).
EVENT_WEIGHT = 512
DATA_WEIGHT = 32


class RefusedEvent(ValueError):
    """The peer sent an event the limits or the JSON parser refuse; ``violation`` says which limit, if one."""


class _Repeat(NamedTuple):
    """An event with a payload whose header line and data block the next events may repeat byte for byte."""

    line: bytes
    block: bytes
    payload_size: int
    type: str
    data: dict[str, Any]
    # What such an event weighs while it waits (see ``EventBuffer.last_weight``).
    weight: int

    def payload_at(self, data: bytes | bytearray, start: int) -> int | None:
        """Where the payload starts when ``data`` repeats this header line and data block at ``start``."""
        block_at = start + len(self.line)
        if data.startswith(self.line, start) and data.startswith(self.block, block_at):
            return block_at + len(self.block)
        return None

    def event(self, payload: bytes) -> Event:
        # A copy of the data: what one handler does with its event never reaches the next one.
        return Event(self.type, dict(self.data), payload)


class _Header(NamedTuple):
    """A parsed header line whose data block and payload may still be on their way."""

    line: bytes
    fields: dict[str, Any]
    data_length: int
    payload_length: int


class EventBuffer:
    """Received bytes, framed into events as ``read_event`` of the ``wyoming`` package frames a file.

    :meth:`next_event` gives whole events; a header line is parsed once it has ended, its data block and payload
    once all of their bytes are buffered. Until then, more bytes cost a length check (and a newline search in
    the new bytes only).

    Audio chunks repeat their header line and data block byte for byte (only the payload changes), and parsing
    both as JSON again is most of what reading a chunk costs. So the last event with a payload is kept: when the
    next bytes repeat its header line and data block exactly, parsing them would give the same type and data,
    so that event is built from them and the next ``payload_length`` bytes without parsing again.
    """

    __slots__ = ("_data", "_header", "_position", "_repeat", "_scanned", "last_weight", "max_block", "violation")

    def __init__(self, max_block: int) -> None:
        self._data = bytearray()
        self._position = 0
        # Where the search for the end of the header line resumes (the bytes before it have no newline).
        self._scanned = 0
        self.max_block = max_block
        # Why framing stopped, when the peer claimed more than the limits allow.
        self.violation: str | None = None
        # The parsed header of the event whose blocks are still arriving.
        self._header: _Header | None = None
        # The last event with a payload, when another event can repeat its reads.
        self._repeat: _Repeat | None = None
        # What the last event given weighs while it waits for the handler (see ``DATA_WEIGHT``).
        self.last_weight = 0

    def __len__(self) -> int:
        return len(self._data) - self._position

    def feed(self, data: bytes) -> None:
        self._data += data

    def repeated(self, data: bytes) -> Event | None:
        """``data`` as one event, when it is exactly one that repeats the last header line and data block.

        The common case (one audio chunk per read, nothing left over) then skips the buffer altogether.
        """
        repeat = self._repeat
        if repeat is None or self._position < len(self._data) or self._header is not None:
            return None
        # _Repeat.payload_at and .event, written out: this runs for every chunk, and a call costs more here.
        line, block, size, event_type, event_data, weight = repeat
        head = len(line) + len(block)
        if len(data) != head + size or not data.startswith(line) or not data.startswith(block, len(line)):
            return None
        self.last_weight = weight
        return Event(event_type, dict(event_data), data[head:])

    def events(self) -> Iterator[Event | None]:
        """Every whole event in the buffer; ``None`` (last) for one the limits or the JSON parser refused.

        Other malformed input (a header that is not an object, no ``type``) raises what ``read_event`` raises.
        """
        try:
            while (event := self.next_event()) is not None:
                yield event
        except RefusedEvent:
            yield None
        finally:
            self.compact()

    def compact(self) -> None:
        """Drop the bytes of the events given so far (the rest is the start of the next event)."""
        if self._position:
            del self._data[: self._position]
            self._scanned = max(0, self._scanned - self._position)
            self._position = 0

    def next_event(self) -> Event | None:
        """The next whole event, or ``None`` until more bytes arrive.

        Raises :class:`RefusedEvent` for what ``read_event`` would answer with ``None`` (not JSON) or a size the
        limits refuse, or a nesting deeper than the parser takes; other malformed input raises what ``read_event``
        raises (``AttributeError`` for a header that is not an object, ``KeyError`` without a ``type``).
        """
        data = self._data
        header = self._header
        if header is None:
            start = self._position
            if start >= len(data):
                return None
            repeat = self._repeat
            if repeat is not None and (at := repeat.payload_at(data, start)) is not None:
                end = at + repeat.payload_size
                if end > len(data):
                    return None  # the same header: wait for its payload
                self._position = end
                self.last_weight = repeat.weight
                return repeat.event(bytes(data[at:end]))
            header = self._read_header(start)
            if header is None:
                return None
        start = self._position
        block_end = start + header.data_length
        end = block_end + header.payload_length
        if end > len(data):
            return None
        self._header = None
        self._position = end
        fields = header.fields
        block = b""
        if header.data_length:
            block = bytes(data[start:block_end])
            data_dict = fields.get("data", {})
            try:
                data_dict.update(json.loads(block))
            except ValueError as exc:
                raise RefusedEvent("the data block is not JSON") from exc
            except RecursionError as exc:
                raise RefusedEvent("the data block nests too deep") from exc
            fields["data"] = data_dict
        payload = bytes(data[block_end:end]) if header.payload_length else None
        event = Event(type=fields["type"], data=fields.get("data", {}), payload=payload)
        self.last_weight = header.payload_length + EVENT_WEIGHT + DATA_WEIGHT * header.data_length
        if payload is not None:
            self._remember(event, header.line, block)
        return event

    def _read_header(self, start: int) -> _Header | None:
        """Parse the header line starting at ``start`` once it has ended; check the sizes it claims."""
        data = self._data
        end = data.find(b"\n", max(start, self._scanned), start + MAX_HEADER_LINE + 1)
        if end < 0:
            if len(data) - start > MAX_HEADER_LINE:
                self._refuse(f"event header longer than {MAX_HEADER_LINE} bytes")
            self._scanned = len(data)
            return None
        line = bytes(data[start : end + 1])
        self._scanned = end + 1
        try:
            fields = json.loads(line)
        except ValueError as exc:
            raise RefusedEvent("the header is not JSON") from exc
        except RecursionError as exc:
            raise RefusedEvent("the header nests too deep") from exc
        # What read_event does with the claimed sizes: skipped unless above 0 (comparing raises for non-numbers).
        data_length = fields.get("data_length")
        data_length = data_length if data_length is not None and data_length > 0 else 0
        payload_length = fields.get("payload_length")
        payload_length = payload_length if payload_length is not None and payload_length > 0 else 0
        if type(data_length) not in (int, bool) or type(payload_length) not in (int, bool):
            raise TypeError("data_length and payload_length must be integers")
        data_limit = min(MAX_DATA_BLOCK, self.max_block)
        if data_length > data_limit:
            self._refuse(f"event claims a data block of {data_length} bytes; the limit is {data_limit}")
        if data_length + payload_length > self.max_block:
            self._refuse(f"event claims {data_length + payload_length} bytes; the limit is {self.max_block}")
        header = self._header = _Header(line, fields, int(data_length), int(payload_length))
        self._position = end + 1
        return header

    def _refuse(self, violation: str) -> None:
        self.violation = violation
        raise RefusedEvent(violation)

    def _remember(self, event: Event, line: bytes, block: bytes) -> None:
        """Keep an event with a payload, when its data is one another event can repeat."""
        self._repeat = None
        if type(event.type) is not str or type(event.data) is not dict:
            return
        if not all(value is None or type(value) in (int, float, str, bool) for value in event.data.values()):
            return  # nested data: a repeat would share it with this event
        self._repeat = _Repeat(line, block, len(event.payload or b""), event.type, dict(event.data), self.last_weight)


class EventStreamReader(asyncio.StreamReader):
    """A connection's events, framed as bytes arrive (fed by ``asyncio.StreamReaderProtocol``).

    Only :meth:`read_event` reads from it; the byte-level reads of ``asyncio.StreamReader`` are not used.
    """

    def __init__(self, max_block: int, idle_timeout: float | None = None) -> None:
        super().__init__(limit=MAX_HEADER_LINE)
        self._event_loop = asyncio.get_running_loop()
        self._buffer = EventBuffer(max_block)
        # Events waiting for the handler, with what each weighs (see ``EventBuffer.last_weight``).
        self._queue: collections.deque[tuple[Event, int]] = collections.deque()
        self._queued_weight = 0
        # Reading pauses while the waiting events weigh more than this.
        self.max_queued_weight = max_block
        # What ends the stream once the queue is empty: the peer's end, or input the framing refused.
        self._ended = False
        # The framing refused an event (not JSON, nested too deep, or a size over the limits).
        self._refused = False
        # Nothing more is framed: the framing refused or failed, or the handler is done.
        self._framing_stopped = False
        self._failure: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._socket: asyncio.ReadTransport | None = None
        # Takes an event on the spot while the handler waits (returns False to have it queued instead).
        self.take_now: Callable[[Event], bool] | None = None
        self.idle_timeout = idle_timeout
        self._idle: QuietTimer | None = None

    @property
    def violation(self) -> str | None:
        """Why reading stopped, when the peer claimed a size over the limits."""
        return self._buffer.violation

    @property
    def malformed(self) -> bool:
        """Reading stopped at an event whose header or data is not JSON (or nests deeper than it may)."""
        return self._refused and self._buffer.violation is None

    def hold_one(self, max_block: int) -> None:
        """Frame one event of at most ``max_block`` bytes, then pause (a connection only asked who we are)."""
        self._buffer.max_block = max_block
        self.max_queued_weight = 0

    @property
    def held_bytes(self) -> int:
        """What this connection holds: the bytes of events still arriving and the weight of those waiting."""
        return len(self._buffer) + self._queued_weight

    # -- fed by the protocol ----------------------------------------------------------------------------

    def set_transport(self, transport: asyncio.BaseTransport) -> None:
        super().set_transport(transport)
        # uvloop's transports are not registered as asyncio.ReadTransport, but have its methods.
        self._socket = cast("asyncio.ReadTransport", transport)

    def feed_data(self, data: bytes) -> None:  # type: ignore[override]  # the protocol feeds bytes
        if self._ended:
            return
        buffer = self._buffer
        if self._reading_paused:
            buffer.feed(data)  # read before the pause took effect: framed once the queue has room
            return
        event = buffer.repeated(data)
        if event is None:
            buffer.feed(data)
            self._frame()
            return
        # One whole audio chunk: nothing else is buffered, so it needs no framing.
        if self._idle is not None:
            self._idle.mark()
        take_now = self.take_now
        if take_now is not None and self._waiter is not None and not self._queue:
            # _hand_over's first step, written out: this runs for every chunk.
            try:
                if take_now(event):
                    return
            except Exception:
                _LOGGER.exception("taking a %s event on the spot failed; handling events in order", event.type)
                self.take_now = None
        if not self._enqueue(event, buffer.last_weight):
            self._pause()
        self._wake()

    def _frame(self) -> None:
        """Hand over the buffered whole events, until the queue is full (reading pauses then)."""
        if self._framing_stopped:
            return
        buffer = self._buffer
        received = False
        try:
            while (event := buffer.next_event()) is not None:
                received = True
                if not self._hand_over(event, buffer.last_weight):
                    self._pause()
                    break
        except RefusedEvent:
            self._ended = self._refused = self._framing_stopped = True
        except Exception as exc:  # the peer's malformed event: raised again in the handler's task
            self._failure = exc
            self._ended = self._framing_stopped = True
        finally:
            buffer.compact()
        if received and self._idle is not None:
            self._idle.mark()
        if self._queue or self._ended:
            self._wake()

    def _hand_over(self, event: Event, weight: int) -> bool:
        """Take ``event`` on the spot or queue it; whether the queue has room for more."""
        queue = self._queue
        take_now = self.take_now
        if take_now is not None and self._waiter is not None and not queue:
            try:
                if take_now(event):
                    return True
            except Exception:
                # Our fault, not the peer's: the event goes the ordered way, which reports failures as ours.
                _LOGGER.exception("taking a %s event on the spot failed; handling events in order", event.type)
                self.take_now = None
        return self._enqueue(event, weight)

    def _enqueue(self, event: Event, weight: int) -> bool:
        """Queue ``event`` for the handler's task; whether the queue has room for more."""
        queue = self._queue
        queue.append((event, weight))
        self._queued_weight += weight
        return len(queue) <= MAX_QUEUED_EVENTS and self._queued_weight <= self.max_queued_weight

    def _pause(self) -> None:
        self._reading_paused = True
        if self._socket is not None:
            self._socket.pause_reading()

    def feed_eof(self) -> None:
        self._ended = True
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        # The connection broke: for the handler that is the end of the stream.
        self._ended = True
        self._wake()

    # -- read by the handler ----------------------------------------------------------------------------

    async def read_event(self) -> Event | None:
        """The next event; ``None`` at the end of the stream or after an event the framing refused.

        Raises what the ``wyoming`` reader raises for a malformed event, and ``TimeoutError`` once no event
        came for ``idle_timeout`` seconds.
        """
        queue = self._queue
        if not queue:
            if self._reading_paused:
                self._resume()
            if not queue and not self._ended:
                await self._wait()
            if not queue:
                failure, self._failure = self._failure, None
                if failure is not None:
                    raise failure
                return None
        event, weight = queue.popleft()
        self._queued_weight -= weight
        if (
            self._reading_paused
            and len(queue) <= MAX_QUEUED_EVENTS // 2
            and self._queued_weight <= self.max_queued_weight // 2
        ):
            self._resume()
        return event

    def _resume(self) -> None:
        # Whole events may wait in the buffer since the pause: they come first, and may pause reading again.
        self._reading_paused = False
        self._frame()
        if not self._reading_paused and self._socket is not None and not self._ended:
            self._socket.resume_reading()

    def close(self) -> None:
        """The handler is done: stop the idle timer and take no more events."""
        self._ended = self._framing_stopped = True
        self._queue.clear()
        self._queued_weight = 0
        self.take_now = None
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None  # it calls back into this reader: a reference cycle once the connection is gone
        self._wake()

    async def _wait(self) -> None:
        waiter = self._waiter = self._event_loop.create_future()
        if self.idle_timeout is not None:
            idle = self._idle
            if idle is None:
                idle = self._idle = QuietTimer(self.idle_timeout, self._on_idle)
            idle.mark()
            idle.start()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_idle(self) -> None:
        waiter = self._waiter
        if waiter is None:
            # The budget runs while the handler waits: time spent handling an event does not count.
            assert self._idle is not None
            self._idle.mark()
            self._idle.start()
        elif not waiter.done():
            waiter.set_exception(TimeoutError())
