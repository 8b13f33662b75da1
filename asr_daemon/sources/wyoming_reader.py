"""Reading Wyoming events as bytes arrive: the ``wyoming`` package frames them, inside the socket's callback.

The stream reader of the ``asyncio`` streams API wakes the connection's task for every audio chunk, and the
task then reads the header line, the data block and the payload in three awaits. Here the bytes are framed
where they arrive (the protocol's ``data_received``): :class:`EventBuffer` holds them and gives them to the
``wyoming`` package's own synchronous ``read_event``, which reads the header line and exactly the sizes it
claims. An event that is not all there yet is left in the buffer until more bytes come.

:class:`EventStreamReader` is the connection's reader. Events go to the handler's task in order; while that
task is waiting for its next event, the handler may take an event on the spot instead (``take_now``: audio
chunks of an utterance that is streaming), which costs no task switch. The sizes a peer claims are checked
before anything is buffered for them; a connection idle for ``idle_timeout`` gets a ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, cast

from wyoming.event import Event, read_event

from ..quiet_timer import QuietTimer

_LOGGER = logging.getLogger(__name__)

# Longest JSON header line a peer may send.
MAX_HEADER_LINE = 64 * 1024
# Events received but not yet handled before reading from the socket pauses (a client that outruns us).
MAX_QUEUED_EVENTS = 64


class _Incomplete(Exception):
    """The buffer ends inside an event (not a ``ValueError``: ``read_event`` must let it through)."""


class RefusedSize(ValueError):
    """A peer claimed more than it may send; ``read_event`` turns it into ``None``, ``violation`` says why."""


class _Repeat(NamedTuple):
    """The reads ``read_event`` made for an event with a payload, and what it returned for them."""

    line: bytes
    block: bytes
    payload_size: int
    type: str
    data: dict[str, Any]

    def payload_at(self, data: bytes | bytearray, start: int) -> int | None:
        """Where the payload starts when ``data`` repeats this header line and data block at ``start``."""
        block_at = start + len(self.line)
        if data.startswith(self.line, start) and data.startswith(self.block, block_at):
            return block_at + len(self.block)
        return None

    def event(self, payload: bytes) -> Event:
        # A copy of the data: what one handler does with its event never reaches the next one.
        return Event(self.type, dict(self.data), payload)


class EventBuffer:
    """Received bytes, read the way the ``wyoming`` package's ``read_event`` reads a file.

    ``readline`` and ``read`` give whole lines and exact sizes or raise :class:`_Incomplete`, so a partial event
    is read again, whole, once the rest has arrived.

    Audio chunks repeat their header line and data block byte for byte (only the payload changes), and parsing
    both as JSON again is most of what reading a chunk costs. So the reads ``read_event`` made for the last event
    with a payload are kept: when the next bytes repeat its header line and data block exactly, ``read_event``
    would make the same reads and return the same type and data, so that event is built from them and the next
    ``payload_length`` bytes without parsing again.
    """

    __slots__ = ("_blocks", "_data", "_line", "_position", "_repeat", "max_block", "violation")

    def __init__(self, max_block: int) -> None:
        self._data = bytearray()
        self._position = 0
        self.max_block = max_block
        # Why framing stopped, when it was the peer's fault.
        self.violation: str | None = None
        # What ``read_event`` read for the event being read: its header line, then (size, bytes) per block.
        self._line = b""
        self._blocks: list[tuple[int, bytes]] = []
        # The last event with a payload, when another event can repeat its reads.
        self._repeat: _Repeat | None = None

    def __len__(self) -> int:
        return len(self._data) - self._position

    def feed(self, data: bytes) -> None:
        self._data += data

    def repeated(self, data: bytes) -> Event | None:
        """``data`` as one event, when it is exactly one that repeats the last header line and data block.

        The common case (one audio chunk per read, nothing left over) then skips the buffer altogether.
        """
        repeat = self._repeat
        if repeat is None or self._position < len(self._data):
            return None
        # _Repeat.payload_at and .event, written out: this runs for every chunk, and a call costs more here.
        line, block, size, event_type, event_data = repeat
        head = len(line) + len(block)
        if len(data) != head + size or not data.startswith(line) or not data.startswith(block, len(line)):
            return None
        return Event(event_type, dict(event_data), data[head:])

    def events(self) -> Iterator[Event | None]:
        """Every whole event in the buffer; ``None`` for one the ``wyoming`` reader refused (bad JSON, a size).

        Other malformed input (a header that is not an object, no ``type``) raises what ``read_event`` raises.
        """
        data = self._data
        while self._position < len(data):
            start = self._position
            repeat = self._repeat
            at = repeat.payload_at(data, start) if repeat is not None else None
            if repeat is not None and at is not None:
                end = at + repeat.payload_size
                if end > len(data):
                    break  # the same reads would stop at the payload: wait for it
                self._position = end
                yield repeat.event(bytes(data[at:end]))
                continue
            self._blocks.clear()
            try:
                event = read_event(self)  # type: ignore[arg-type]
            except _Incomplete:
                self._position = start
                break
            if event is not None and event.payload is not None:
                self._remember(event)
            yield event
            if event is None:
                return
        # Drop what was read; the rest is the start of the next event.
        if self._position:
            del data[: self._position]
            self._position = 0

    def _remember(self, event: Event) -> None:
        """Keep the reads of an event with a payload, when they are ones another event can repeat."""
        self._repeat = None
        if not all(value is None or type(value) in (int, float, str, bool) for value in event.data.values()):
            return  # nested data: a repeat would share it with this event
        blocks = self._blocks
        if len(blocks) == 1:
            block, payload = (0, b""), blocks[0]
        elif len(blocks) == 2:
            block, payload = blocks
        else:
            return
        if payload[1] is event.payload:
            self._repeat = _Repeat(self._line, block[1], payload[0], event.type, dict(event.data))

    # -- what ``read_event`` calls ----------------------------------------------------------------------

    def readline(self) -> bytes:
        data, start = self._data, self._position
        end = data.find(b"\n", start, start + MAX_HEADER_LINE + 1)
        if end < 0:
            if len(data) - start > MAX_HEADER_LINE:
                self.violation = f"event header longer than {MAX_HEADER_LINE} bytes"
                raise RefusedSize(self.violation)
            raise _Incomplete
        self._position = end + 1
        line = self._line = bytes(data[start : end + 1])
        return line

    def read(self, size: int) -> bytes:
        if size < 0 or size > self.max_block:
            self.violation = f"event claims {size} bytes; the limit is {self.max_block}"
            raise RefusedSize(self.violation)
        start = self._position
        end = start + size
        if end > len(self._data):
            raise _Incomplete
        self._position = end
        block = bytes(self._data[start:end])
        self._blocks.append((size, block))
        return block


class EventStreamReader(asyncio.StreamReader):
    """A connection's events, framed as bytes arrive (fed by ``asyncio.StreamReaderProtocol``).

    Only :meth:`read_event` reads from it; the byte-level reads of ``asyncio.StreamReader`` are not used.
    """

    def __init__(self, max_block: int, idle_timeout: float | None = None) -> None:
        super().__init__(limit=MAX_HEADER_LINE)
        self._event_loop = asyncio.get_running_loop()
        self._buffer = EventBuffer(max_block)
        self._queue: collections.deque[Event] = collections.deque()
        # What ends the stream once the queue is empty: the peer's end, or input the framing refused.
        self._ended = False
        # The ``wyoming`` reader refused an event (not JSON, or a size over the limits).
        self._refused = False
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
        """Reading stopped at an event whose header or data is not JSON."""
        return self._refused and self._buffer.violation is None

    # -- fed by the protocol ----------------------------------------------------------------------------

    def set_transport(self, transport: asyncio.BaseTransport) -> None:
        super().set_transport(transport)
        # uvloop's transports are not registered as asyncio.ReadTransport, but have its methods.
        self._socket = cast("asyncio.ReadTransport", transport)

    def feed_data(self, data: bytes) -> None:  # type: ignore[override]  # the protocol feeds bytes
        if self._ended:
            return
        buffer = self._buffer
        repeated = buffer.repeated(data)
        if repeated is not None:
            events: Iterable[Event | None] = (repeated,)
        else:
            buffer.feed(data)
            events = buffer.events()
        queue = self._queue
        received = False
        try:
            for event in events:
                if event is None:
                    self._ended = self._refused = True
                    break
                received = True
                take_now = self.take_now
                if take_now is not None and self._waiter is not None and not queue:
                    try:
                        if take_now(event):
                            continue
                    except Exception:
                        # Our fault, not the peer's: the event goes the ordered way, which reports failures as ours.
                        _LOGGER.exception("taking a %s event on the spot failed; handling events in order", event.type)
                        self.take_now = None
                queue.append(event)
        except Exception as exc:  # the peer's malformed event: raised again in the handler's task
            self._failure = exc
            self._ended = True
        if received and self._idle is not None:
            self._idle.mark()
        if queue or self._ended:
            self._wake()
        if len(queue) > MAX_QUEUED_EVENTS and not self._reading_paused and self._socket is not None:
            self._reading_paused = True
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
        """The next event; ``None`` at the end of the stream or after a size the limits refuse.

        Raises what the ``wyoming`` reader raised for a malformed event, and ``TimeoutError`` once no event
        came for ``idle_timeout`` seconds.
        """
        queue = self._queue
        if not queue:
            if not self._ended:
                await self._wait()
            if not queue:
                failure, self._failure = self._failure, None
                if failure is not None:
                    raise failure
                return None
        event = queue.popleft()
        if self._reading_paused and len(queue) <= MAX_QUEUED_EVENTS // 2 and self._socket is not None:
            self._reading_paused = False
            self._socket.resume_reading()
        return event

    def close(self) -> None:
        """The handler is done: stop the idle timer and take no more events."""
        self._ended = True
        self._queue.clear()
        self.take_now = None
        if self._idle is not None:
            self._idle.cancel()
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
