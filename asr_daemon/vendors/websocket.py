"""The vendor WebSocket itself: websockets' sans-I/O client protocol run by an asyncio ``Protocol``.

``WebSocketLink`` is the hot path. It hands each received message to a callback straight from the socket's read
callback, keeps the connection alive with loop timers and writes audio frames without awaiting anything. A 2 s
command opens and closes one vendor connection: websockets' own asyncio client spends a reader task, a keepalive
task, a message assembler and a send context per message on it, which cost more than the audio itself at 10 ms
chunks (bench/RESULTS.md). ``PlainLink`` is websockets' asyncio client behind the same interface: it serves
connections through a proxy and redirects, and it is the reference tests/test_vendor_links.py compares the hot
path against. The framing, the handshake's checks and the close handshake are websockets' in both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol, cast

from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidState, ProtocolError
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    from websockets.utils import apply_mask

Message = str | bytes
OnMessage = Callable[[Message], None]
OnClosed = Callable[[Close | None, Close | None], None]  # the close frames received and sent, when there were


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """How to open one vendor link, whichever client opens it."""

    url: str
    headers: Mapping[str, str]
    user_agent: str
    max_size: int  # the largest message accepted
    ping_interval: float | None  # None: no pings
    ping_timeout: float | None
    close_timeout: float  # how long the vendor gets to finish the closing handshake
    on_message: OnMessage
    on_closed: OnClosed


class Link(Protocol):
    """One open vendor WebSocket, whichever client runs it."""

    @property
    def response(self) -> Response | None: ...

    @property
    def transport(self) -> asyncio.BaseTransport | None: ...

    async def send(self, message: Message) -> None:
        """Send one message; on a closed link nothing is sent (the close reaches ``on_closed``)."""

    def can_send_now(self) -> bool:
        """Whether ``send_now`` may be called: nothing would have to wait."""

    def send_now(self, messages: Iterable[Message]) -> None:
        """Write whole messages at once (only after ``can_send_now``)."""

    async def close(self) -> None:
        """Close the link (closing handshake, bounded by the close timeout); returns once it is closed."""

    def abort(self) -> None:
        """Drop the connection at once."""


@lru_cache(maxsize=4)
def _default_tls(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    # Loading the system's certificates costs milliseconds on a Pi: once per process, not per utterance. Keyed by
    # the variables OpenSSL reads them from, so a changed SSL_CERT_FILE is still honoured.
    return ssl.create_default_context()


def default_tls() -> ssl.SSLContext:
    return _default_tls(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


class _MaskSource:
    """Client frames' masking keys (RFC 6455 5.3), read from the system's CSPRNG 4 KiB at a time, not per frame."""

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> bytes:
        at = self._at
        if at + 4 > len(self._pool):
            self._pool, at = os.urandom(4096), 0
        self._at = at + 4
        return self._pool[at : at + 4]


_MASKS = _MaskSource()
_HEAD_SHORT = struct.Struct("!BB")
_HEAD_MEDIUM = struct.Struct("!BBH")
_HEAD_LONG = struct.Struct("!BBQ")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One whole, masked client data frame: the bytes ``Frame(opcode, payload).serialize(mask=True)`` gives."""
    mask = _MASKS.next()
    length = len(payload)
    head1 = 0x80 | opcode
    if length < 126:
        head = _HEAD_SHORT.pack(head1, 0x80 | length)
    elif length < 65536:
        head = _HEAD_MEDIUM.pack(head1, 0x80 | 126, length)
    else:
        head = _HEAD_LONG.pack(head1, 0x80 | 127, length)
    return head + mask + apply_mask(payload, mask)


def _ignore_message(message: Message) -> None:
    return None


def _ignore_close(received: Close | None, sent: Close | None) -> None:
    return None


class WebSocketLink(asyncio.Protocol):
    """A client WebSocket on websockets' ``ClientProtocol``; open one with ``open_link``."""

    def __init__(
        self,
        protocol: ClientProtocol,
        on_message: OnMessage,
        on_closed: OnClosed,
        *,
        ping_interval: float | None,
        ping_timeout: float | None,
        close_timeout: float,
    ) -> None:
        self.protocol = protocol
        self.response: Response | None = None
        self.transport: asyncio.Transport | None = None
        self._on_message = on_message
        self._on_closed = on_closed
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        self._loop = asyncio.get_running_loop()
        self._handshake: asyncio.Future[None] = self._loop.create_future()
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._paused = False
        self._drain: asyncio.Future[None] | None = None
        self._sending = 0
        self._fragments: list[bytes] = []
        self._fragmented_text = False
        self._timer: asyncio.TimerHandle | None = None  # the next ping, or the pong's deadline
        self._ping: bytes | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._opened = False

    # -- asyncio.Protocol --------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport.set_write_buffer_limits(high=1 << 15)

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        self._flush()
        if protocol.close_expected():
            self._expect_close()
        for event in events:
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Response) and not self._handshake.done():
                self.response = event
                self._handshake.set_result(None)

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        protocol = self.protocol
        protocol.receive_eof()  # idempotent; the state is CLOSED from here on
        for timer in (self._timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._close_timer = None
        if not self._handshake.done():
            self._handshake.set_result(None)  # handshake_exc says why
        self._lost.set_result(None)
        self._wake_senders()
        if self._opened:
            self._on_closed(protocol.close_rcvd, protocol.close_sent)
        # Nothing more arrives: dropping the callbacks and the transport ends the reference cycles through them,
        # so a closed link is freed at once instead of by the cyclic collector's next pass.
        self._on_message = _ignore_message
        self._on_closed = _ignore_close
        self.transport = None
        if protocol.parser_exc is not None:  # its traceback holds the parser's frame, which holds the protocol
            protocol.parser_exc.__traceback__ = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_senders()

    # -- sending -----------------------------------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        if self.protocol.state is not State.OPEN:
            return
        self._sending += 1
        try:
            self._write_message(message)
            while self._paused and not self._lost.done():
                if self._drain is None:
                    self._drain = self._loop.create_future()
                await asyncio.shield(self._drain)
        finally:
            self._sending -= 1

    def can_send_now(self) -> bool:
        return not self._paused and not self._sending and self.protocol.state is State.OPEN

    def send_now(self, messages: Iterable[Message]) -> None:
        """Hot path of ``send``: whole frames straight to the socket while it takes them and no send is waiting."""
        for message in messages:
            self._write_message(message)

    def _write_message(self, message: Message) -> None:
        transport = self.transport
        assert transport is not None
        if self.protocol.writes:  # a pong or a close reply goes first
            self._flush()
        if isinstance(message, str):
            transport.write(client_frame(Opcode.TEXT, message.encode()))
        else:
            transport.write(client_frame(Opcode.BINARY, message))

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                with contextlib.suppress(Exception):  # uvloop raises RuntimeError on a closing transport
                    transport.write_eof()
            else:
                transport.close()

    def _wake_senders(self) -> None:
        if self._drain is not None:
            if not self._drain.done():
                self._drain.set_result(None)
            self._drain = None

    # -- receiving ---------------------------------------------------------------------------------------------

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.BINARY or opcode is Opcode.TEXT:
            if frame.fin:
                self._deliver(opcode is Opcode.TEXT, bytes(frame.data))
            else:
                self._fragments = [bytes(frame.data)]
                self._fragmented_text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            # websockets' protocol has checked the sequence and bounds the whole message by max_size.
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), []
                self._deliver(self._fragmented_text, data)
        elif opcode is Opcode.PONG and self._ping is not None and bytes(frame.data) == self._ping:
            self._ping = None
            self._schedule_ping()

    def _deliver(self, text: bool, data: bytes) -> None:
        if not text:
            self._on_message(data)
            return
        try:
            message = data.decode()
        except UnicodeDecodeError:
            self.fail(CloseCode.INVALID_DATA, "invalid UTF-8")
            return
        self._on_message(message)

    # -- keepalive and closing ---------------------------------------------------------------------------------

    def _schedule_ping(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        if self._ping_interval is not None and self.protocol.state is State.OPEN:
            self._timer = self._loop.call_later(self._ping_interval, self._send_ping)

    def _send_ping(self) -> None:
        self._timer = None
        if self.protocol.state is not State.OPEN:
            return
        self._ping = _MASKS.next()
        self.protocol.send_ping(self._ping)
        self._flush()
        if self._ping_timeout is not None:
            self._timer = self._loop.call_later(
                self._ping_timeout, self.fail, CloseCode.INTERNAL_ERROR, "keepalive ping timeout"
            )
        else:
            self._schedule_ping()

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): a close frame if it is still open, then drop it."""
        with contextlib.suppress(InvalidState, ProtocolError):
            self.protocol.fail(code, reason)
        self._flush()
        self._expect_close()

    def _expect_close(self) -> None:
        # The other side closes TCP after the closing handshake; a vendor that does not is dropped.
        if self._close_timer is None and not self._lost.done():
            self._close_timer = self._loop.call_later(self._close_timeout, self.abort)

    async def close(self) -> None:
        if self.protocol.state is State.OPEN:
            with contextlib.suppress(InvalidState, ProtocolError):
                self.protocol.send_close(CloseCode.NORMAL_CLOSURE)
            self._flush()
            self._expect_close()
        elif not self._lost.done():
            self._expect_close()
        await asyncio.shield(self._lost)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_link(options: LinkOptions) -> WebSocketLink:
    """Connect and complete the opening handshake (the caller bounds the time); raises what websockets raises.

    A refused upgrade raises ``InvalidStatus`` carrying the response, as websockets' ``connect`` does.
    """
    uri = parse_uri(options.url)
    loop = asyncio.get_running_loop()
    protocol = ClientProtocol(uri, max_size=options.max_size)
    link = WebSocketLink(
        protocol,
        options.on_message,
        options.on_closed,
        ping_interval=options.ping_interval,
        ping_timeout=options.ping_timeout,
        close_timeout=options.close_timeout,
    )
    tls = default_tls() if uri.secure else None
    try:
        await loop.create_connection(
            lambda: link, uri.host, uri.port, ssl=tls, server_hostname=uri.host if tls is not None else None
        )
        request = protocol.connect()
        request.headers.update(options.headers)
        request.headers.setdefault("User-Agent", options.user_agent)
        protocol.send_request(request)
        link._flush()
        await asyncio.shield(link._handshake)
    except BaseException:
        link.abort()
        raise
    if protocol.handshake_exc is not None or link.response is None:
        link.abort()
        raise protocol.handshake_exc or ConnectionError("the connection closed during the opening handshake")
    link._opened = True
    link._schedule_ping()
    return link


class PlainLink:
    """websockets' asyncio client behind ``Link``: proxies, redirects, and the reference for ``WebSocketLink``."""

    def __init__(self, connection: ClientConnection, on_message: OnMessage, on_closed: OnClosed) -> None:
        self._ws = connection
        self._on_message = on_message
        self._on_closed = on_closed
        self._reader = asyncio.create_task(self._read(), name="vendor link reader")

    @classmethod
    async def open(cls, options: LinkOptions, *, proxy: str | None, open_timeout: float) -> PlainLink:
        # Imported here: only proxied and redirected connections load websockets' asyncio client.
        from websockets.asyncio.client import connect

        connection = await connect(
            options.url,
            proxy=proxy,
            additional_headers=dict(options.headers),
            open_timeout=open_timeout,
            ping_interval=options.ping_interval,
            ping_timeout=options.ping_timeout,
            close_timeout=options.close_timeout,
            max_size=options.max_size,
            max_queue=64,
            compression=None,
            user_agent_header=options.user_agent,
        )
        return cls(connection, options.on_message, options.on_closed)

    @property
    def response(self) -> Response | None:
        return self._ws.response

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        return self._ws.transport

    async def send(self, message: Message) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(message)

    def can_send_now(self) -> bool:
        return False

    def send_now(self, messages: Iterable[Message]) -> None:
        raise RuntimeError("websockets' client sends through send()")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    def abort(self) -> None:
        self._ws.transport.abort()

    async def _read(self) -> None:
        ws = self._ws
        try:
            async for message in ws:
                self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            self._on_closed(ws.protocol.close_rcvd, ws.protocol.close_sent)
