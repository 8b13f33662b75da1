"""The handler's reading loop over a socket: events framed as they arrive, the idle limit that cuts off a silent
peer but never an event being handled, and the event type names the dispatch compares against."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event, async_read_event
from wyoming.info import Describe

from asr_daemon.info import build_info
from asr_daemon.routing import Router
from asr_daemon.session import SessionLimits
from asr_daemon.sources import wyoming_handler
from asr_daemon.sources.wyoming_handler import HandlerContext, WyomingAsrHandler
from asr_daemon.sources.wyoming_server import WyomingServer
from tests.support.wyoming import wire


class SlowHandler(WyomingAsrHandler):
    """Takes ``seconds`` over a ``slow`` event, to show the idle timer leaves event handling alone."""

    async def handle_event(self, event: Event) -> bool:
        if event.type == "slow":
            await asyncio.sleep(event.data["seconds"])
            await self._write(Event("done"))
            return True
        return await super().handle_event(event)


@asynccontextmanager
async def serving(
    idle_timeout: float = 5.0, max_event_bytes: int = 4096, handler: type[WyomingAsrHandler] = SlowHandler
) -> AsyncIterator[WyomingServer]:
    router = Router({})
    context = HandlerContext(build_info(router).event(), router, SessionLimits(), idle_timeout=idle_timeout)
    server = WyomingServer(
        "tcp://127.0.0.1:0", partial(handler, context), max_sessions=4, max_event_bytes=max_event_bytes
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop_accepting()
        await server.drain(1)


async def exchange(port: int | None, data: bytes, timeout: float = 5.0) -> list[Event]:
    """Send ``data`` and read until the server closes."""
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    events = []
    try:
        async with asyncio.timeout(timeout):
            while (event := await async_read_event(reader)) is not None:
                events.append(event)
    finally:
        writer.close()
    return events


async def test_many_events_in_one_write_are_all_handled() -> None:
    async with serving() as server:
        events = await exchange(server.port, wire(*[Describe().event()] * 20, AudioStop().event()))
    assert [e.type for e in events] == ["info"] * 20 + ["error"]


async def test_a_header_that_is_not_json_gets_a_bad_event_error_then_a_close() -> None:
    async with serving() as server:
        events = await exchange(server.port, wire(Describe().event()) + b"this is not json\n")
    assert [(e.type, e.data.get("code")) for e in events] == [("info", None), ("error", "bad-event")]


async def test_idle_connection_gets_an_idle_error_then_a_close() -> None:
    async with serving(idle_timeout=0.3) as server:
        loop = asyncio.get_running_loop()
        started = loop.time()
        events = await exchange(server.port, b"")
        assert 0.25 < loop.time() - started < 2
    assert [(e.type, e.data.get("code")) for e in events] == [("error", "idle")]


async def test_an_event_trickled_slower_than_the_idle_timeout_is_cut_off() -> None:
    """The budget is per event, as before: bytes that never complete an event do not keep a connection."""
    async with serving(idle_timeout=0.4) as server:
        assert server.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        answer = asyncio.create_task(async_read_event(reader))
        line = wire(Describe().event())
        async with asyncio.timeout(3):
            for byte in line[:-1]:
                if answer.done():
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)
            event = await answer
        writer.close()
    assert event is not None and event.data.get("code") == "idle"


async def test_idle_timer_does_not_interrupt_event_handling_and_restarts_after_it() -> None:
    async with serving(idle_timeout=0.3) as server:
        loop = asyncio.get_running_loop()
        started = loop.time()
        events = await exchange(server.port, wire(Event("slow", {"seconds": 0.8})))
        elapsed = loop.time() - started
    assert [(e.type, e.data.get("code")) for e in events] == [("done", None), ("error", "idle")]
    assert 1.05 < elapsed < 3  # the handling (0.8 s), then a whole idle budget (0.3 s)


async def test_events_keep_a_connection_alive_past_the_idle_timeout() -> None:
    async with serving(idle_timeout=0.5) as server:
        assert server.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for _ in range(8):
            writer.write(wire(Describe().event()))
            await asyncio.sleep(0.1)
        writer.write(wire(AudioStop().event()))
        async with asyncio.timeout(3):
            seen = [e.type for e in [await async_read_event(reader) for _ in range(9)] if e is not None]
        writer.close()
    assert seen == ["info"] * 8 + ["error"]


async def test_a_real_cancellation_is_not_taken_for_idleness() -> None:
    async with serving(idle_timeout=5) as server:
        assert server.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        async with asyncio.timeout(3):
            while not server.handlers:
                await asyncio.sleep(0.01)
        [task] = server.handlers
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await reader.read() == b""  # closed without an idle error
        writer.close()


async def test_events_written_in_one_piece_read_back_with_the_wyoming_packages_reader() -> None:
    event = Event("transcript", {"text": "明かりをつけて。", "language": "ja"}, payload=b"\x00\n\x01")
    reader = asyncio.StreamReader()
    reader.feed_data(wyoming_handler._framed(event) * 2)
    reader.feed_eof()
    for _ in range(2):
        read = await async_read_event(reader)
        assert read is not None and (read.type, read.data, read.payload) == (event.type, event.data, event.payload)
    assert await async_read_event(reader) is None


def test_event_type_names_are_wyomings() -> None:
    assert AudioChunk.is_type(wyoming_handler.AUDIO_CHUNK)
    assert AudioStart.is_type(wyoming_handler.AUDIO_START)
    assert AudioStop.is_type(wyoming_handler.AUDIO_STOP)
    assert Transcribe.is_type(wyoming_handler.TRANSCRIBE)
    assert Describe.is_type(wyoming_handler.DESCRIBE)


async def test_shutdown_closes_a_connection_between_utterances_at_once() -> None:
    """drain() asks idle connections to stop: they close now, not when the drain timeout runs out."""
    async with serving(idle_timeout=30) as server:
        assert server.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(wire(Describe().event()))
        info = await asyncio.wait_for(async_read_event(reader), 3)
        assert info is not None and info.type == "info"
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.stop_accepting()  # as the daemon does on SIGTERM
        await server.drain(10)
        assert loop.time() - started < 1
        assert server.active == 0
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed, without an error event
        writer.close()


class BuggyHandler(SlowHandler):
    """A handler with a bug: taking a chunk on the spot raises, and so does handling a ``boom`` event."""

    def _take_chunk(self, event: Event) -> bool:
        raise RuntimeError("a bug on the spot")

    async def handle_event(self, event: Event) -> bool:
        if event.type == "audio-chunk":
            await self._write(Event("handled"))
            return True
        if event.type == "boom":
            raise RuntimeError("a bug in order")
        return await super().handle_event(event)


async def test_a_bug_in_taking_a_chunk_on_the_spot_is_ours_not_the_clients(caplog: pytest.LogCaptureFixture) -> None:
    chunk = AudioChunk(rate=16000, width=2, channels=1, audio=b"\0" * 640).event()
    async with serving(handler=BuggyHandler) as server:
        assert server.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            answers = []
            for _ in range(3):
                # One at a time, so that each arrives while the handler waits (where chunks are taken on the spot).
                writer.write(wire(chunk))
                async with asyncio.timeout(5):
                    answers.append(await async_read_event(reader))
            writer.write(wire(Describe().event()))
            async with asyncio.timeout(5):
                answers.append(await async_read_event(reader))
        finally:
            writer.close()
    # Every chunk is still handled, in order, and the client is not told its events were malformed.
    assert [e.type for e in answers if e is not None] == ["handled", "handled", "handled", "info"]
    spot_failures = [r for r in caplog.records if "on the spot failed" in r.getMessage()]
    assert len(spot_failures) == 1 and spot_failures[0].exc_info is not None


async def test_a_bug_in_handling_an_event_answers_an_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    async with serving(handler=BuggyHandler) as server:
        events = await exchange(server.port, wire(Event("boom"), Describe().event()))
    assert [e.type for e in events] == ["error"]
    assert events[0].data["code"] == "internal"
    assert "a bug in order" in events[0].data["text"]
    assert any(r.exc_info is not None and "failed to handle a boom event" in r.getMessage() for r in caplog.records)
