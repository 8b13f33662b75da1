"""Satellites in the daemon, without the real satellite: configuration, an address that never answers, the
events a satellite's commands produce on the sinks (Wyoming forwarding, the MQTT state topic)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from wyoming.event import Event, async_read_event

from asr_daemon.events import AsrEvent, EventKind
from asr_daemon.settings import ConfigError, MqttSettings, load_settings
from asr_daemon.sinks.mqtt import Topics
from asr_daemon.sinks.wyoming_forward import WyomingForwardSink
from asr_daemon.vendors.local.grammar import missing_reason
from tests.support.daemon import running_daemon
from tests.support.speech import have_speech_tools, utterance
from tests.support.wyoming import transcribe
from tests.test_wyoming_forward import free_port


def test_satellites_are_configured_by_uri_name_and_language() -> None:
    settings = load_settings(
        None,
        {
            "satellites": {
                "devices": [{"uri": "tcp://kitchen-sat.local:10700", "name": "kitchen", "language": "en"}],
                "wake_uri": "tcp://127.0.0.1:10400",
            }
        },
    )
    device = settings.satellites.devices[0]
    assert (device.uri, device.name, device.language) == ("tcp://kitchen-sat.local:10700", "kitchen", "en")
    assert settings.satellites.wake_uri == "tcp://127.0.0.1:10400"


@pytest.mark.parametrize(
    ("satellites", "complaint"),
    [
        ({"devices": [{"uri": "kitchen:10700", "name": "kitchen"}]}, "tcp://HOST:PORT"),
        ({"devices": [{"uri": "tcp://a:1", "name": "kitchen/1"}]}, "letters, digits"),
        ({"devices": [{"uri": "tcp://a:1", "name": "k"}, {"uri": "tcp://b:1", "name": "k"}]}, "must differ"),
        ({"wake_uri": "http://wake:10400"}, "tcp://HOST:PORT"),
    ],
)
def test_bad_satellite_settings_name_the_key(satellites: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigError, match="satellites") as caught:
        load_settings(None, {"satellites": satellites})
    assert complaint in str(caught.value)


def test_a_satellite_state_is_retained_on_its_own_topic() -> None:
    topics = Topics(MqttSettings(host="broker", node_id="pi"))
    assert topics.state_topic("satellite:kitchen") == "asr-daemon/pi/satellite/kitchen/state"
    assert topics.state_topic("mic:default") == "asr-daemon/pi/mic/state"
    assert topics.state_topic("daemon") == "asr-daemon/pi/state"


async def test_every_local_sources_events_are_forwarded_not_wyoming_callers() -> None:
    port = free_port()
    received: list[Event] = []
    arrived = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (event := await async_read_event(reader)) is not None:
            received.append(event)
            arrived.set()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    try:
        async with WyomingForwardSink([f"tcp://127.0.0.1:{port}"], min_delay=0.05, max_delay=0.2) as sink:
            for source, text in (("wyoming:127.0.0.1:5000", "caller"), ("satellite:kitchen", "light on")):
                await sink.handle(AsrEvent(EventKind.TRANSCRIPT, source, session="s", vendor="local", text=text))
            async with asyncio.timeout(10):
                while not received:
                    await arrived.wait()
            await asyncio.sleep(0.2)
    finally:
        server.close()
    assert [(e.type, e.data["source"], e.data["text"]) for e in received] == [
        ("transcript", "satellite:kitchen", "light on")
    ]


@pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")
@pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")
async def test_a_satellite_that_never_answers_delays_neither_start_up_nor_other_sources(tmp_path: Path) -> None:
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Accepts, reads, never answers (a hung satellite, or something else on its port).
        held.append(writer)
        accepted.set()
        await reader.read()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = {
        "vendors": {"local": {"phrases": ["turn on the kitchen light"]}},
        "events": {"jsonl": str(tmp_path / "events.jsonl")},
        "satellites": {
            "devices": [{"uri": f"tcp://127.0.0.1:{port}", "name": "hung", "language": "en"}],
            "connect_timeout": 60,
        },
    }
    try:
        started = time.monotonic()
        async with running_daemon(config) as daemon:
            start_seconds = time.monotonic() - started
            async with asyncio.timeout(10):
                await accepted.wait()
            assert daemon.port is not None
            result = await transcribe(daemon.port, utterance("turn on the kitchen light", speed=125), language="en")
            assert result.text == "turn on the kitchen light"
            assert daemon.satellites is not None and daemon.satellites.links[0].state == "starting"
            stopping = time.monotonic()
        stop_seconds = time.monotonic() - stopping
    finally:
        server.close()
        for writer in held:
            writer.close()
    # Generous bounds: the hung satellite would hold start-up and stop for its 60 s connect timeout.
    assert start_seconds < 10, start_seconds
    assert stop_seconds < 10, stop_seconds
