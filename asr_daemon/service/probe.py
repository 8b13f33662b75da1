"""Ask a running daemon ``describe``: the health command's check and the add-on's readiness wait.

A daemon with every session slot busy still answers ``describe`` with ``info`` before its ``busy`` error, so
this probe reports a loaded daemon as alive.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlparse

from wyoming.client import AsyncClient
from wyoming.info import Describe, Info


def local_uri(uri: str) -> str:
    """The address to probe a listener on: a wildcard bind is reached on loopback."""
    parsed = urlparse(uri)
    if parsed.scheme == "tcp" and parsed.hostname in ("0.0.0.0", "::"):
        return f"tcp://127.0.0.1:{parsed.port}"
    return uri


async def describe(uri: str, timeout: float) -> Info:
    """The daemon's ``info``; raises OSError, TimeoutError or ConnectionError when it does not answer."""
    async with asyncio.timeout(timeout):
        async with AsyncClient.from_uri(local_uri(uri)) as client:
            await client.write_event(Describe().event())
            while True:
                event = await client.read_event()
                if event is None:
                    raise ConnectionError("connection closed before info")
                if Info.is_type(event.type):
                    return Info.from_event(event)
