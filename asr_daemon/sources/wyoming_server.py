"""The Wyoming listener: accepts connections and runs one handler per connection, within limits.

Events are framed as bytes arrive (``wyoming_reader``), within bounds: the header line is limited, the
``data_length``/``payload_length`` a peer claims are checked before any byte is buffered for them, and reading
pauses while a connection holds more than its share. A TCP peer outside ``allow`` is closed as it is accepted
(logged at most once a minute, counted). Past ``max_sessions`` a new connection is refused: if its first event
(read for at most ``REFUSED_READ_SECONDS`` and ``REFUSED_READ_BYTES``) is a ``describe``, it gets ``info`` first,
so Home Assistant keeps the entity while the house is busy; then it gets a ``busy`` error and is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import Describe
from wyoming.server import AsyncEventHandler

from ..networks import Network, address_in, peer_address
from .wyoming_reader import EventStreamReader

_LOGGER = logging.getLogger(__name__)

HandlerFactory = Callable[[EventStreamReader, asyncio.StreamWriter], AsyncEventHandler]

# A refused connection's first event is read within these bounds (a describe is ~100 bytes).
REFUSED_READ_SECONDS = 1.0
REFUSED_READ_BYTES = 4096
# Refused connections read at once; past this, they get the busy error without a read.
MAX_REFUSED_READING = 8
# At most one log line per this many seconds about refused connections of each kind (a flood must not fill
# the journal); the line says how many were refused since the last one.
REFUSED_LOG_INTERVAL = 60.0


class WyomingServer:
    """Listens on a ``tcp://`` or ``unix://`` URI and serves each connection with a fresh handler."""

    def __init__(
        self,
        uri: str,
        handler_factory: HandlerFactory,
        *,
        max_sessions: int,
        max_event_bytes: int,
        allow: Sequence[Network] | None = None,
        info: Event | None = None,
    ) -> None:
        self.uri = uri
        self._factory = handler_factory
        self.max_sessions = max_sessions
        self.max_event_bytes = max_event_bytes
        # TCP peers allowed to connect (None: any); unix socket peers always are.
        self.allow = list(allow) if allow is not None else None
        # What a describe on a refused connection is answered with (None: only the busy error).
        self.info = info
        self._server: asyncio.Server | None = None
        self.handlers: dict[asyncio.Task[None], AsyncEventHandler] = {}
        self.connections_total = 0
        self.rejected_total = 0
        self.denied_total = 0
        self._denied_log = _Sparse("refused %d connection(s) from outside wyoming.allow (the latest from %s)")
        self._refused_log = _Sparse("refused %d connection(s): %d sessions are running (max_sessions; the latest: %s)")
        self._refused_reading = 0
        # Local ports of our own liveness checks, let in whatever ``allow`` says.
        self._probe_ports: set[int] = set()

    @property
    def active(self) -> int:
        return len(self.handlers)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        parsed = urlparse(self.uri)

        def protocol() -> asyncio.StreamReaderProtocol:
            return _WyomingProtocol(EventStreamReader(self.max_event_bytes), self._on_connection, self.admits, loop)

        if parsed.scheme == "unix":
            path = Path(parsed.path)
            path.unlink(missing_ok=True)  # noqa: ASYNC240 - a stale socket from a previous run, once at start
            self._server = await loop.create_unix_server(protocol, path=str(path))
        else:
            self._server = await loop.create_server(
                protocol, host=parsed.hostname, port=parsed.port or 0, reuse_address=True
            )

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._server.sockets) if self._server is not None else []

    @property
    def port(self) -> int | None:
        for sock in self.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return int(sock.getsockname()[1])
        return None

    @contextlib.asynccontextmanager
    async def probe(self, host: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """A connection of our own to ``host`` on our port (the liveness check), let in whatever ``allow`` says."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind((host, 0))
            local_port = int(sock.getsockname()[1])
        except BaseException:
            sock.close()
            raise
        self._probe_ports.add(local_port)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, self.port))
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            self._probe_ports.discard(local_port)
            sock.close()
            raise
        try:
            yield reader, writer
        finally:
            self._probe_ports.discard(local_port)
            writer.close()

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for running connections to end, then stop the rest."""
        # Connections between utterances have nothing to finish: close them now.
        for handler in list(self.handlers.values()):
            if not getattr(handler, "in_utterance", False):
                await handler.stop()
        tasks = list(self.handlers)
        if tasks:
            _LOGGER.info("waiting up to %g s for %d connection(s) to finish", timeout, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                running = self.handlers.get(task)
                if running is not None:
                    await running.stop()
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
        if urlparse(self.uri).scheme == "unix":
            Path(urlparse(self.uri).path).unlink(missing_ok=True)  # noqa: ASYNC240 - once, at shutdown

    def admits(self, peer: Any) -> bool:
        """Whether a peer (``getpeername()``) may connect; one outside ``allow`` is counted and logged."""
        if self.allow is None or not isinstance(peer, tuple) or not peer:
            return True  # a unix socket peer (or no allow-list)
        if len(peer) >= 2 and peer[1] in self._probe_ports:
            return True
        if address_allowed(str(peer[0]), self.allow):
            return True
        self.denied_total += 1
        self._denied_log.warn(peer[0])
        return False

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        if len(self.handlers) >= self.max_sessions:
            assert isinstance(reader, EventStreamReader)
            await self._refuse(reader, writer)
            return
        task = asyncio.current_task()
        assert task is not None and isinstance(reader, EventStreamReader)
        handler = self._factory(reader, writer)
        self.handlers[task] = handler
        try:
            await handler.run()
        except Exception:
            _LOGGER.exception("connection handler failed")
        finally:
            self.handlers.pop(task, None)
            writer.close()

    async def _refuse(self, reader: EventStreamReader, writer: asyncio.StreamWriter) -> None:
        """Every slot is taken: answer a first ``describe`` (within bounds), then the busy error, and close."""
        self.rejected_total += 1
        self._refused_log.warn(len(self.handlers), _peer(writer))
        reader.hold_one(REFUSED_READ_BYTES)
        try:
            if self.info is not None and self._refused_reading < MAX_REFUSED_READING:
                self._refused_reading += 1
                try:
                    async with asyncio.timeout(REFUSED_READ_SECONDS):
                        first = await reader.read_event()
                    if first is not None and Describe.is_type(first.type):
                        async with asyncio.timeout(2):
                            await async_write_event(self.info, writer)
                except Exception:  # a slow, malformed or closed peer: the busy error says enough
                    pass
                finally:
                    self._refused_reading -= 1
            busy = Error(text=f"server busy: {self.max_sessions} sessions are running", code="busy")
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await async_write_event(busy.event(), writer)
        finally:
            reader.close()
            writer.close()


class _Sparse:
    """A warning logged at most once per ``REFUSED_LOG_INTERVAL``, with the count of what it stands for."""

    def __init__(self, message: str) -> None:
        self._message = message
        self._unlogged = 0
        self._logged_at: float | None = None

    def warn(self, *args: object) -> None:
        self._unlogged += 1
        now = time.monotonic()
        if self._logged_at is None or now - self._logged_at >= REFUSED_LOG_INTERVAL:
            _LOGGER.warning(self._message, self._unlogged, *args)
            self._logged_at = now
            self._unlogged = 0


def address_allowed(host: str, allow: Sequence[Network]) -> bool:
    """Whether ``host`` (as ``getpeername`` gives it) is in one of the ``allow`` networks."""
    address = peer_address(host)
    return address is not None and address_in(address, allow)


class _WyomingProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, handing received bytes straight to the connection's event reader."""

    def __init__(
        self,
        events: EventStreamReader,
        connected: Callable[..., Any],
        admits: Callable[[Any], bool],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        # The loop given, not looked up (a getpid() system call per connection on Python 3.11).
        super().__init__(events, connected, loop=loop)
        self._events = events
        self._admits = admits

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._admits(transport.get_extra_info("peername")):
            # Closed before any task, buffer or byte read is spent on it.
            self._events.close()
            cast("asyncio.Transport", transport).abort()
            return
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._events.feed_data(data)


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "local socket")
