"""Framing Wyoming events as bytes arrive: the same events as the ``wyoming`` package's stream reader, however
the bytes are split, with the size limits checked before anything is buffered for a claimed size."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event, async_read_event
from wyoming.info import Describe

from asr_daemon.sources.wyoming_reader import MAX_HEADER_LINE, MAX_QUEUED_EVENTS, EventBuffer, EventStreamReader
from tests.support.streams import FakeTransport
from tests.support.wyoming import wire


async def library_events(data: bytes) -> list[Event]:
    """What the ``wyoming`` package's own stream reader makes of ``data``."""
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    events = []
    while (event := await async_read_event(reader)) is not None:
        events.append(event)
    return events


def framed(pieces: list[bytes], max_block: int = 1 << 20) -> list[Event]:
    buffer = EventBuffer(max_block)
    events: list[Event] = []
    for piece in pieces:
        buffer.feed(piece)
        for event in buffer.events():
            assert event is not None
            events.append(event)
    assert len(buffer) == 0
    return events


def as_tuples(events: list[Event]) -> list[tuple[str, dict[str, Any], bytes | None]]:
    return [(e.type, e.data, e.payload) for e in events]


SAMPLE = wire(
    Event("transcribe", {"language": "ja", "name": "明かり"}),
    AudioStart(rate=16000, width=2, channels=1).event(),
    AudioChunk(rate=16000, width=2, channels=1, audio=bytes(range(256)) * 4).event(),
    Describe().event(),
    AudioChunk(rate=16000, width=2, channels=1, audio=b"\n\n{}\n").event(),
    AudioStop().event(),
)


async def test_events_are_the_wyoming_packages_wherever_the_bytes_are_split() -> None:
    expected = as_tuples(await library_events(SAMPLE))
    types = ["transcribe", "audio-start", "audio-chunk", "describe", "audio-chunk", "audio-stop"]
    assert [t for t, _, _ in expected] == types
    assert as_tuples(framed([SAMPLE])) == expected
    assert as_tuples(framed([bytes([b]) for b in SAMPLE])) == expected
    for cut in range(1, len(SAMPLE)):
        assert as_tuples(framed([SAMPLE[:cut], SAMPLE[cut:]])) == expected, cut


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
events_strategy = st.lists(
    st.builds(
        Event,
        type=st.text(min_size=1, max_size=12),
        data=st.dictionaries(st.text(max_size=6), json_values, max_size=4),
        payload=st.none() | st.binary(min_size=1, max_size=300),
    ),
    min_size=1,
    max_size=6,
)


# Audio chunks repeat their header line and data block: these events are read without parsing them again.
repeating_events = st.lists(
    st.builds(
        Event,
        type=st.sampled_from(["audio-chunk", "x"]),
        data=st.sampled_from(
            [
                {"rate": 16000, "width": 2, "channels": 1},
                {"rate": 16000, "width": 2, "channels": 1, "timestamp": None},
                {"rate": 16000, "width": 2, "channels": 1, "timestamp": 10},
                {"rate": 48000, "width": 2, "channels": 2},
                {"names": ["a", "b"]},
                {},
            ]
        ),
        payload=st.none() | st.sampled_from([b"\n", b"ab", b"{}\n", bytes(320), bytes(range(256))]),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.one_of(events_strategy, repeating_events),
    cuts=st.lists(st.integers(min_value=0, max_value=6000), max_size=10),
)
async def test_any_events_split_anywhere_frame_as_the_wyoming_package_reads_them(
    events: list[Event], cuts: list[int]
) -> None:
    data = wire(*events)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    assert as_tuples(framed(pieces)) == as_tuples(await library_events(data))


async def test_a_stream_of_chunks_is_the_wyoming_packages_when_only_the_payload_changes() -> None:
    chunks = [
        AudioChunk(rate=16000, width=2, channels=1, audio=bytes([n]) * 320, timestamp=None).event() for n in range(50)
    ]
    data = wire(*chunks)
    expected = as_tuples(await library_events(data))
    assert as_tuples(framed([data])) == expected
    assert as_tuples(framed([data[i : i + 100] for i in range(0, len(data), 100)])) == expected
    assert [payload for _, _, payload in expected] == [bytes([n]) * 320 for n in range(50)]


def test_a_repeated_event_gets_its_own_data() -> None:
    buffer = EventBuffer(4096)
    chunk = AudioChunk(rate=16000, width=2, channels=1, audio=b"\0\0").event()
    buffer.feed(wire(chunk))
    [first] = list(buffer.events())
    assert first is not None
    first.data["rate"] = 8000  # what one handler does with its event never reaches the next one
    buffer.feed(wire(chunk))
    [second] = list(buffer.events())
    assert second is not None and second.data["rate"] == 16000 and second.data is not first.data
    second.data["rate"] = 8000
    buffer.feed(wire(chunk))
    [third] = list(buffer.events())
    assert third is not None and third.data["rate"] == 16000


def test_a_claimed_size_over_the_limit_is_refused_before_its_bytes_arrive() -> None:
    header = b'{"type": "audio-chunk", "payload_length": 100000000}\n'
    buffer = EventBuffer(max_block=4096)
    buffer.feed(header)  # only the header: nothing of the claimed 100 MB is waited for
    assert list(buffer.events()) == [None]
    assert buffer.violation == "event claims 100000000 bytes; the limit is 4096"


def test_a_data_block_over_the_limit_is_refused() -> None:
    buffer = EventBuffer(max_block=10)
    buffer.feed(b'{"type": "transcribe", "data_length": 11}\n')
    assert list(buffer.events()) == [None]
    assert buffer.violation is not None and "11 bytes" in buffer.violation


def test_a_header_line_over_the_limit_is_refused_without_its_end() -> None:
    buffer = EventBuffer(max_block=4096)
    buffer.feed(b'{"type": "' + b"x" * MAX_HEADER_LINE)
    assert list(buffer.events()) == [None]
    assert buffer.violation == f"event header longer than {MAX_HEADER_LINE} bytes"


def test_an_unfinished_event_waits_for_its_bytes() -> None:
    buffer = EventBuffer(max_block=4096)
    buffer.feed(SAMPLE[:20])
    assert list(buffer.events()) == []
    assert len(buffer) == 20 and buffer.violation is None


def test_malformed_headers_are_reported_as_the_wyoming_reader_reports_them() -> None:
    not_json = EventBuffer(4096)
    not_json.feed(b"hello\n")
    assert list(not_json.events()) == [None] and not_json.violation is None
    not_an_object = EventBuffer(4096)
    not_an_object.feed(b"[1, 2]\n")
    with pytest.raises(AttributeError):
        list(not_an_object.events())
    no_type = EventBuffer(4096)
    no_type.feed(b'{"data": {}}\n')
    with pytest.raises(KeyError):
        list(no_type.events())


# -- the connection's reader ----------------------------------------------------------------------------


async def test_reader_gives_events_in_order_then_none_at_the_end() -> None:
    reader = EventStreamReader(4096)
    reader.feed_data(SAMPLE[:100])
    reader.feed_data(SAMPLE[100:])
    reader.feed_eof()
    types = []
    while (event := await reader.read_event()) is not None:
        types.append(event.type)
    assert types == ["transcribe", "audio-start", "audio-chunk", "describe", "audio-chunk", "audio-stop"]
    assert not reader.malformed and reader.violation is None


async def test_reader_fed_one_event_per_read_gives_the_wyoming_packages_events() -> None:
    """The usual shape at real time: each read is exactly one chunk, most of them repeating the last header."""
    fmt = {"rate": 16000, "width": 2, "channels": 1}
    events = [AudioChunk(**fmt, audio=bytes([n]) * 320).event() for n in range(20)]
    events += [Event("audio-chunk", {**fmt, "timestamp": 5}, b"xy"), AudioChunk(**fmt, audio=b"z" * 320).event()]
    events += [Event("audio-chunk", fmt, bytes(319)), AudioStop().event()]
    reader = EventStreamReader(4096)
    for event in events:
        reader.feed_data(wire(event))
    reader.feed_eof()
    read = []
    while (event := await reader.read_event()) is not None:
        read.append(event)
    assert as_tuples(read) == as_tuples(await library_events(wire(*events)))


async def test_reader_raises_a_malformed_event_in_order_after_the_good_ones() -> None:
    reader = EventStreamReader(4096)
    reader.feed_data(wire(Describe().event()) + b'{"no": "type"}\n' + wire(Describe().event()))
    first = await reader.read_event()
    assert first is not None and first.type == "describe"
    with pytest.raises(KeyError):
        await reader.read_event()
    assert await reader.read_event() is None


async def test_reader_reports_bad_json_as_malformed() -> None:
    reader = EventStreamReader(4096)
    reader.feed_data(b"{not json}\n")
    assert await reader.read_event() is None
    assert reader.malformed and reader.violation is None


async def test_take_now_takes_events_only_while_the_handler_waits_and_keeps_order() -> None:
    taken: list[str] = []
    reader = EventStreamReader(4096)

    def take_now(event: Event) -> bool:
        if event.type == "audio-chunk":
            taken.append(event.type)
            return True
        return False

    reader.take_now = take_now
    chunk = AudioChunk(rate=16000, width=2, channels=1, audio=b"\0\0").event()
    # Nobody waits yet: everything is queued, in order.
    reader.feed_data(wire(AudioStart(rate=16000, width=2, channels=1).event(), chunk))
    assert taken == []
    first = await reader.read_event()
    second = await reader.read_event()
    assert (first and first.type, second and second.type) == ("audio-start", "audio-chunk")
    # The handler waits: chunks are taken on the spot, other events wake it.
    waiting = asyncio.create_task(reader.read_event())
    await asyncio.sleep(0)
    reader.feed_data(wire(chunk, chunk))
    assert taken == ["audio-chunk", "audio-chunk"] and not waiting.done()
    # An event the handler must see queues the chunks behind it until it has been read.
    reader.feed_data(wire(AudioStop().event(), chunk))
    stop = await waiting
    assert stop is not None and stop.type == "audio-stop"
    after = await reader.read_event()
    assert after is not None and after.type == "audio-chunk" and taken == ["audio-chunk", "audio-chunk"]


async def test_idle_limit_counts_events_taken_on_the_spot() -> None:
    reader = EventStreamReader(4096, idle_timeout=0.3)
    reader.take_now = lambda event: True
    loop = asyncio.get_running_loop()
    waiting = asyncio.create_task(reader.read_event())
    started = loop.time()
    for _ in range(8):  # 0.8 s of events, each within the limit of the one before
        await asyncio.sleep(0.1)
        reader.feed_data(wire(Describe().event()))
    assert not waiting.done()
    with pytest.raises(TimeoutError):
        await waiting
    assert 1.0 < loop.time() - started < 2.5
    reader.close()


async def test_reading_pauses_while_too_many_events_wait_and_resumes_as_they_are_read() -> None:
    reader = EventStreamReader(1 << 20)  # room for the bytes: the number of events is what pauses
    transport = FakeTransport()
    reader.set_transport(transport)  # type: ignore[arg-type]
    reader.feed_data(wire(*[Describe().event()] * (MAX_QUEUED_EVENTS + 1)))
    assert transport.paused
    for _ in range(MAX_QUEUED_EVENTS // 2 + 1):
        assert await reader.read_event() is not None
    assert not transport.paused


async def test_close_wakes_the_handler_with_the_end_and_drops_what_waits() -> None:
    reader = EventStreamReader(4096, idle_timeout=30)
    waiting = asyncio.create_task(reader.read_event())
    await asyncio.sleep(0)
    reader.close()
    assert await waiting is None
    reader.feed_data(wire(Describe().event()))
    assert await reader.read_event() is None
