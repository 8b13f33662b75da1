"""Connections to satellites and wake-word services (Wyoming over TCP or a Unix socket)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from urllib.parse import urlparse

from wyoming.event import Event

from .wyoming_reader import EventStreamReader

# Dead peers are found by the kernel, at no cost to the daemon while a satellite is idle.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3

# The largest data + payload a satellite or wake-word service event may carry (what the Wyoming server takes by
# default): a peer that claims more is cut off before anything is buffered for it.
MAX_EVENT_BYTES = 1 << 20

Stream = tuple[EventStreamReader, asyncio.StreamWriter]


async def open_wyoming(uri: str, timeout: float) -> Stream:
    """A connection to a Wyoming ``tcp://`` or ``unix://`` address, with TCP keepalive on.

    Events are framed as the bytes arrive, with the Wyoming server's limits (``EventStreamReader``): one task
    step per event instead of three reads, and no buffer grows past ``MAX_EVENT_BYTES`` for a peer gone wrong.
    """
    parsed = urlparse(uri)
    loop = asyncio.get_running_loop()
    events = EventStreamReader(MAX_EVENT_BYTES)

    def protocol() -> asyncio.StreamReaderProtocol:
        return asyncio.StreamReaderProtocol(events)

    async with asyncio.timeout(timeout):
        if parsed.scheme == "unix":
            transport, stream_protocol = await loop.create_unix_connection(protocol, parsed.path)
        elif parsed.hostname and parsed.port is not None:
            transport, stream_protocol = await loop.create_connection(protocol, parsed.hostname, parsed.port)
        else:
            raise ValueError(f"{uri!r} is not tcp://host:port or unix://path")
    writer = asyncio.StreamWriter(transport, stream_protocol, events, loop)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    return events, writer


async def next_event(events: EventStreamReader) -> Event | None:
    """The peer's next event; None when it closed the connection. Raises ``ConnectionError`` for an event over
    the limits or not JSON (the connection is of no further use)."""
    event = await events.read_event()
    if event is None and (events.violation or events.malformed):
        raise ConnectionError(events.violation or "it sent an event that is not JSON")
    return event
