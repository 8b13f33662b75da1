"""A client on the LAN must not take the daemon down: slow bytes, memory, a full house, strangers, deep nesting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

from asr_daemon.config import load_settings
from asr_daemon.sources import wyoming_reader
from asr_daemon.sources.wyoming_reader import EventBuffer, EventStreamReader
from asr_daemon.sources.wyoming_server import address_allowed
from tests import hostile
from tests.support.daemon import running_daemon
from tests.support.streams import FakeTransport
from tests.support.wyoming import wire

# -- slow bytes -----------------------------------------------------------------------------------------


def test_an_event_sent_a_byte_at_a_time_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    block = json.dumps({"name": "x" * 60_000}).encode()
    payload = bytes(range(256)) * 40
    header = json.dumps({"type": "audio-chunk", "data_length": len(block), "payload_length": len(payload)})
    data = header.encode() + b"\n" + block + payload
    parses = 0
    real_loads = json.loads

    def counting_loads(text: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal parses
        parses += 1
        return real_loads(text, *args, **kwargs)

    monkeypatch.setattr(json, "loads", counting_loads)
    buffer = EventBuffer(1 << 20)
    events = []
    for index in range(len(data)):
        buffer.feed(data[index : index + 1])
        events.extend(buffer.events())
    assert [(e.type, e.data["name"], e.payload) for e in events if e is not None] == [
        ("audio-chunk", "x" * 60_000, payload)
    ]
    # The header line and the data block, once each (the whole event was re-parsed on every byte before).
    assert parses == 2


# -- memory ---------------------------------------------------------------------------------------------


def test_data_and_payload_are_counted_together_against_the_limit() -> None:
    buffer = EventBuffer(max_block=100_000)
    buffer.feed(b'{"type": "audio-chunk", "data_length": 60000, "payload_length": 60000}\n')
    assert list(buffer.events()) == [None]
    assert buffer.violation == "event claims 120000 bytes; the limit is 100000"


def test_a_data_block_is_held_to_its_own_much_smaller_limit() -> None:
    buffer = EventBuffer(max_block=1 << 20)
    buffer.feed(json.dumps({"type": "describe", "data_length": 256 * 1024}).encode() + b"\n")
    assert list(buffer.events()) == [None]
    assert buffer.violation is not None and f"the limit is {wyoming_reader.MAX_DATA_BLOCK}" in buffer.violation


async def test_reading_pauses_once_waiting_events_hold_a_megabyte_not_after_64_of_them() -> None:
    reader = EventStreamReader(1 << 20)
    transport = FakeTransport()
    reader.set_transport(transport)  # type: ignore[arg-type]
    flooding = hostile.flood_event(60 * 1024)  # a data block within the limits that parses ~25-fold
    for _ in range(8):
        reader.feed_data(flooding)
    assert transport.paused
    # What the connection holds stays near a megabyte (the data counted as parsed), not 64 such events.
    assert reader.held_bytes < 4 * (1 << 20)
    while await asyncio.wait_for(reader.read_event(), 1) is not None and transport.paused:
        pass
    assert not transport.paused


@pytest.mark.timeout(120)
async def test_four_flooding_connections_leave_the_daemon_within_150_mb() -> None:
    figures = await hostile.measure("flood", connections=4, seconds=6.0, data_bytes=256 * 1024)
    assert figures.rss_peak_growth < 150 * 2**20, figures.report()
    assert figures.describe_seconds, "describe went unanswered during the flood"


# -- deep nesting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attack",
    [
        b"[" * 5000 + b"\n",
        b'{"type": "describe", "data_length": 5000}\n' + b"[" * 5000,
    ],
    ids=["header", "data"],
)
async def test_deep_nesting_is_answered_as_a_bad_event(attack: bytes) -> None:
    async with running_daemon({}) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write(attack)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        header = json.loads(answer.split(b"\n", 1)[0])
        assert header["type"] == "error"
        assert b"bad-event" in answer
        assert await _describe(daemon.port) is not None  # and the daemon carries on


# -- a full house ---------------------------------------------------------------------------------------


async def _describe(port: int) -> list[Event] | None:
    """Every event a describe gets, until the daemon closes the connection."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        answers = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while (event := await client.read_event()) is not None:
                    answers.append(event)
                    if Info.is_type(event.type):
                        break
                else:
                    return answers
                while (event := await client.read_event()) is not None:
                    answers.append(event)
        return answers


@contextlib.asynccontextmanager
async def full_house(port: int, slots: int) -> Any:
    """``slots`` idle-but-valid clients: each asked who we are, and holds its connection."""
    clients = []
    try:
        for _ in range(slots):
            client = AsyncTcpClient("127.0.0.1", port)
            await client.connect()
            await client.write_event(Describe().event())
            event = await asyncio.wait_for(client.read_event(), 5)
            assert event is not None and Info.is_type(event.type)
            clients.append(client)
        yield clients
    finally:
        for client in clients:
            await client.disconnect()


async def test_describe_is_answered_when_every_slot_is_taken() -> None:
    async with running_daemon({"wyoming": {"max_sessions": 2}}) as daemon, full_house(daemon.port, 2):
        assert daemon.port is not None
        answers = await _describe(daemon.port)
        assert answers is not None
        types = [event.type for event in answers]
        assert types[0] == "info", types  # Home Assistant keeps the entity
        assert Error.from_event(answers[-1]).code == "busy"


async def test_the_watchdog_and_healthz_stay_alive_with_every_slot_taken(watchdog_socket: socket.socket) -> None:
    from tests.test_service import datagrams, http_get

    sock = watchdog_socket
    config = {"wyoming": {"max_sessions": 2}, "health": {"port": 0}}
    async with running_daemon(config) as daemon, full_house(daemon.port, 2):
        assert daemon.port is not None and daemon.health is not None
        await datagrams(sock, time.monotonic() + 0.3)  # what was sent before the house was full
        pings = [m for _, m in await datagrams(sock, time.monotonic() + 2.0) if m.startswith("WATCHDOG=1")]
        assert len(pings) >= 3, "no watchdog ping with every slot taken"
        status, body = await http_get(daemon.health.port, "/healthz")
        assert status == 200, body


# -- who may connect ------------------------------------------------------------------------------------


async def test_a_peer_outside_the_allow_list_is_closed_at_accept_counted_and_logged_sparingly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = {"wyoming": {"allow": ["10.0.0.0/8"]}, "health": {"port": 0}}
    async with running_daemon(config) as daemon:
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            writer.write(wire(Describe().event()))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 5) == b""  # no info for a stranger
            writer.close()
        assert daemon.server.denied_total == 5
        assert len([r for r in caplog.records if "wyoming.allow" in r.getMessage()]) == 1  # not one per attempt
        assert await daemon.listener_answers()  # our own liveness check still gets in
        assert daemon.health is not None
        from tests.test_service import http_get

        _, metrics = await http_get(daemon.health.port, "/metrics")
        assert "asr_connections_denied_total 5.0" in metrics


async def test_a_unix_socket_peer_is_always_allowed(tmp_path: Path) -> None:
    from wyoming.client import AsyncClient

    path = tmp_path / "wyoming.sock"
    async with running_daemon({"wyoming": {"uri": f"unix://{path}", "allow": ["10.0.0.0/8"]}}) as daemon:
        async with AsyncClient.from_uri(f"unix://{path}") as client:
            await client.write_event(Describe().event())
            event = await asyncio.wait_for(client.read_event(), 5)
        assert event is not None and Info.is_type(event.type)
        assert daemon.server.denied_total == 0
        assert await daemon.listener_answers()


def test_the_allow_list_matches_ipv4_mapped_and_scoped_addresses() -> None:
    networks = load_settings(None, {}).wyoming.allowed_networks()
    assert address_allowed("192.168.1.20", networks)
    assert address_allowed("::ffff:192.168.1.20", networks)  # an IPv4 peer of a dual-stack socket
    assert address_allowed("fe80::1%eth0", networks)
    assert address_allowed("::1", networks)
    assert not address_allowed("8.8.8.8", networks)
    assert not address_allowed("::ffff:8.8.8.8", networks)
    assert not address_allowed("2001:db8::1", networks)


def test_allow_entries_are_networks_and_a_bad_one_is_a_clear_config_error() -> None:
    allowed = load_settings(None, {"wyoming": {"allow": ["192.168.1.0/24", "fd00::/8"]}}).wyoming
    assert [str(network) for network in allowed.allowed_networks()] == ["192.168.1.0/24", "fd00::/8"]
    with pytest.raises(Exception, match=r"wyoming\.allow.*'192\.168\.1\.0/33'"):
        load_settings(None, {"wyoming": {"allow": ["192.168.1.0/33"]}})


# -- the framing against the wyoming package's reader ---------------------------------------------------


def _outcome(read: Any) -> tuple[Any, ...]:
    try:
        event = read()
    except Exception as exc:
        return ("raises", type(exc))
    if event is None:
        return ("refused",)
    return ("event", event.type, event.data, event.payload)


@pytest.mark.parametrize(
    "data",
    [
        b'{"type": "x", "data_length": "5"}\n',
        b'{"type": "x", "payload_length": -3}\n',
        b'{"type": "x", "payload_length": -1.5}\n',
        b'{"type": "x", "payload_length": 1.5}\nab',
        b'{"type": "x", "payload_length": true}\na',
        b'{"type": 5, "payload_length": 2}\nab',
        b'{"type": "x", "data": {"a": 1}, "data_length": 8}\n{"b": 2}',
        b'{"type": "x", "data": [1], "data_length": 8}\n{"b": 2}',
        b'{"type": "x", "data_length": 3}\n[1]',
        b'{"type": "x", "data_length": 5}\n[[1]]',
        b'{"type": "x", "data_length": 8}\n[["a",1]]',
        b'{"type": "x", "data_length": 2}\n\xff\xfe',
        b'{"type": "x", "data": 3}\n',
        b'{"data": {}}\n',
        b"null\n",
        b"\n",
        b'{"type": "x"} trailing\n',
    ],
)
def test_odd_events_come_out_as_the_wyoming_packages_reader_makes_them(data: bytes) -> None:
    import io

    from wyoming.event import read_event

    def ours() -> Event | None:
        buffer = EventBuffer(1 << 20)
        buffer.feed(data)
        events = list(buffer.events())
        assert len(events) == 1, events
        return events[0]

    assert _outcome(ours) == _outcome(lambda: read_event(io.BytesIO(data)))  # type: ignore[arg-type]
