"""Connections to satellites and wake-word services (Wyoming over TCP or a Unix socket)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from urllib.parse import urlparse

# Dead peers are found by the kernel, at no cost to the daemon while a satellite is idle.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_wyoming(uri: str, timeout: float) -> Stream:
    """A connection to a Wyoming ``tcp://`` or ``unix://`` address, with TCP keepalive on."""
    parsed = urlparse(uri)
    async with asyncio.timeout(timeout):
        if parsed.scheme == "unix":
            return await asyncio.open_unix_connection(parsed.path)
        reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    return reader, writer
