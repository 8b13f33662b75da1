"""The Wyoming listener: accepts connections and runs one handler per connection, within limits.

Events are framed by the ``wyoming`` package as bytes arrive (``wyoming_reader``), within bounds: the header
line is limited, and the ``data_length``/``payload_length`` a peer claims are checked before any byte is
buffered for them (the library would otherwise read whatever size is claimed). Past
``max_sessions`` a new connection gets an ``error`` event and is closed, so a flood costs the flooder only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from wyoming.error import Error
from wyoming.event import async_write_event
from wyoming.server import AsyncEventHandler

from .wyoming_reader import EventStreamReader

_LOGGER = logging.getLogger(__name__)

HandlerFactory = Callable[[EventStreamReader, asyncio.StreamWriter], AsyncEventHandler]


class WyomingServer:
    """Listens on a ``tcp://`` or ``unix://`` URI and serves each connection with a fresh handler."""

    def __init__(self, uri: str, handler_factory: HandlerFactory, *, max_sessions: int, max_event_bytes: int) -> None:
        self.uri = uri
        self._factory = handler_factory
        self.max_sessions = max_sessions
        self.max_event_bytes = max_event_bytes
        self._server: asyncio.Server | None = None
        self.handlers: dict[asyncio.Task[None], AsyncEventHandler] = {}
        self.connections_total = 0
        self.rejected_total = 0

    @property
    def active(self) -> int:
        return len(self.handlers)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        parsed = urlparse(self.uri)

        def protocol() -> asyncio.StreamReaderProtocol:
            return _WyomingProtocol(EventStreamReader(self.max_event_bytes), self._on_connection)

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

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        if len(self.handlers) >= self.max_sessions:
            self.rejected_total += 1
            _LOGGER.warning(
                "refusing a connection from %s: %d sessions are running (max_sessions)",
                _peer(writer),
                len(self.handlers),
            )
            with contextlib.suppress(Exception):
                busy = Error(text=f"server busy: {self.max_sessions} sessions are running", code="busy")
                async with asyncio.timeout(2):
                    await async_write_event(busy.event(), writer)
            writer.close()
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


class _WyomingProtocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, handing received bytes straight to the connection's event reader."""

    def __init__(self, events: EventStreamReader, connected: Callable[..., Any]) -> None:
        super().__init__(events, connected)
        self._events = events

    def data_received(self, data: bytes) -> None:
        self._events.feed_data(data)


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer or "local socket")
