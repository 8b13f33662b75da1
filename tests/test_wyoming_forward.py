"""Forwarding microphone events to a Wyoming event URI: the connection is re-opened with bounded, jittered
backoff while the peer is away, and a successful connection starts the backoff over."""

from __future__ import annotations

import asyncio
import socket

from wyoming.event import Event, async_read_event

from asr_daemon.events import AsrEvent, EventKind
from asr_daemon.sinks.wyoming_forward import WyomingForwardSink

MIN_DELAY = 0.05
MAX_DELAY = 0.4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def transcript(text: str) -> AsrEvent:
    return AsrEvent(EventKind.TRANSCRIPT, "mic:test", session="s1", vendor="amivoice", language="ja", text=text)


async def test_an_absent_peer_is_retried_within_the_delay_bounds_and_a_connection_resets_the_backoff() -> None:
    port = free_port()
    received: list[Event] = []
    arrived = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (event := await async_read_event(reader)) is not None:
            received.append(event)
            arrived.set()
        writer.close()

    async with WyomingForwardSink([f"tcp://127.0.0.1:{port}"], min_delay=MIN_DELAY, max_delay=MAX_DELAY) as sink:
        await sink.handle(transcript("一つ目"))
        # Long enough for several refused attempts to push the ceiling to MAX_DELAY.
        await asyncio.sleep(6 * MAX_DELAY)
        forwarder = sink._forwarders[0]
        assert forwarder.backoff.attempt >= 3 and not received
        server = await asyncio.start_server(serve, "127.0.0.1", port)
        try:
            # The next attempt comes within MAX_DELAY (plus a generous margin for a busy machine).
            async with asyncio.timeout(MAX_DELAY + 5.0):
                await arrived.wait()
            assert [e.data["text"] for e in received] == ["一つ目"]
            assert forwarder.backoff.attempt == 0  # connected: the next failure starts from MIN_DELAY again
        finally:
            server.close()
