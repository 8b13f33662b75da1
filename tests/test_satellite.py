"""Satellites in the daemon, without the real satellite: configuration, an address that never answers, the
events a satellite's commands produce on the sinks (Wyoming forwarding, the MQTT state topic)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Attribution, Info, Satellite
from wyoming.ping import Ping, Pong
from wyoming.pipeline import PipelineStage, RunPipeline

from asr_daemon.config import load_settings
from asr_daemon.events import AsrEvent, EventKind
from asr_daemon.settings import ConfigError, MqttSettings
from asr_daemon.sinks.mqtt import Topics
from asr_daemon.sinks.wyoming_forward import WyomingForwardSink
from asr_daemon.sources import satellite as satellite_module
from asr_daemon.vendors.local.grammar import missing_reason
from tests.support.daemon import running_daemon
from tests.support.netns import Peer, adopt_interface, emit, netns_unavailable, next_command, run_in_netns, veth
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


class FakeSatellite:
    """A satellite as wyoming-satellite 1.1+ behaves on the wire: answers describe and pings, records the rest."""

    def __init__(
        self,
        *,
        answer_pings: bool = True,
        after_run: list[Event] | None = None,
        raw_after_run: bytes = b"",
        name: str = "fake",
        host: str = "",
    ) -> None:
        self.name = name
        # Bytes written as they are after run-satellite (a satellite gone wrong).
        self.raw_after_run = raw_after_run
        self.host = host or "127.0.0.1"
        self.answer_pings = answer_pings
        self.after_run = after_run or []
        self.connections = 0
        self.received: list[str] = []
        self.changed = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while (event := await async_read_event(reader)) is not None:
                self.received.append(event.type)
                self.changed.set()
                if event.type == "describe":
                    await async_write_event(satellite_info(self.name), writer)
                elif event.type == "ping" and self.answer_pings:
                    await async_write_event(Pong(text=Ping.from_event(event).text).event(), writer)
                elif event.type == "run-satellite":
                    for answer in self.after_run:
                        await async_write_event(answer, writer)
                    if self.raw_after_run:
                        writer.write(self.raw_after_run)
                        await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.changed.set()

    async def __aenter__(self) -> FakeSatellite:
        self.server = await asyncio.start_server(self.serve, self.host, 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    @property
    def uri(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    async def wait(self, check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.2):
                        await self.changed.wait()


def satellite_info(name: str = "fake") -> Event:
    satellite = Satellite(
        name=name, attribution=Attribution(name="", url=""), installed=True, description=name, version="1.4.1"
    )
    return Info(satellite=satellite).event()


def fake_config(fake: FakeSatellite, **satellites: object) -> dict[str, object]:
    return {
        "vendors": {"local": {"phrases": ["turn on the kitchen light"]}},
        "health": {"port": 0},
        "satellites": {
            "devices": [{"uri": fake.uri, "name": "fake", "language": "en"}],
            "retry_min_delay": 0.05,
            "retry_max_delay": 0.2,
            **satellites,
        },
    }


async def test_a_satellite_that_pings_is_dropped_when_it_falls_silent_and_paused_when_the_daemon_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(satellite_module, "PING_SILENCE_SECONDS", 0.5)
    async with FakeSatellite() as fake, running_daemon(fake_config(fake)) as daemon:
        assert daemon.satellites is not None and daemon.metrics is not None
        link = daemon.satellites.links[0]
        await fake.wait(lambda: link.state == "connected", "connected")
        assert fake.received[:3] == ["describe", "run-satellite", "ping"]
        assert 'asr_satellite_state{satellite="fake",state="connected"} 1.0' in daemon.metrics.render().decode()
        # It answered the ping but never pings back: after PING_SILENCE_SECONDS it is taken for gone, and retried.
        await fake.wait(lambda: fake.connections >= 2, "a reconnection")
        await fake.wait(lambda: link.state == "connected", "connected again")
        fake.received.clear()
    # Stopping: a satellite that knows pause-satellite stops streaming at once.
    assert "pause-satellite" in fake.received


async def test_a_satellite_claiming_a_huge_event_is_cut_off_and_reconnected(caplog: pytest.LogCaptureFixture) -> None:
    # A 2 GiB audio chunk announced, then a trickle: nothing is buffered for it, the connection is dropped with
    # the reason, and the satellite is reconnected with backoff like any other failure.
    header = b'{"type": "audio-chunk", "data_length": 0, "payload_length": 2147483648}\n'
    async with FakeSatellite(raw_after_run=header + bytes(4096)) as fake, running_daemon(fake_config(fake)) as daemon:
        assert daemon.satellites is not None
        link = daemon.satellites.links[0]
        await fake.wait(lambda: fake.connections >= 2, "a reconnection")
        await fake.wait(lambda: link.state == "connected", "connected again")
    cut = [r.message for r in caplog.records if r.levelname == "WARNING" and "satellite fake" in r.message]
    assert any("2147483648" in message for message in cut), cut


async def test_a_satellite_wanting_remote_wake_without_a_wake_service_is_refused_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = RunPipeline(start_stage=PipelineStage.WAKE, end_stage=PipelineStage.HANDLE).event()
    async with FakeSatellite(after_run=[run]) as fake, running_daemon(fake_config(fake)) as daemon:
        assert daemon.satellites is not None
        link = daemon.satellites.links[0]
        await fake.wait(lambda: link.state == "unavailable", "refused")
    refusals = [r for r in caplog.records if r.levelname == "ERROR" and "satellites.wake_uri is not set" in r.message]
    assert len(refusals) == 1, [r.message for r in caplog.records]


@pytest.mark.skipif(netns_unavailable() is not None, reason=netns_unavailable() or "")
def test_zeroconf_discovery_claims_only_the_listed_satellite() -> None:
    result = run_in_netns("tests.test_satellite:_scenario_discovery", timeout=90)[-1]["result"]
    assert result["state"] == "connected", result
    # The listed satellite was described, then claimed; the other one at most asked who it is, never claimed.
    assert result["kitchen"][-3:] == ["describe", "run-satellite", "ping"], result
    assert set(result["hall"]) <= {"describe"}, result


async def _scenario_discovery() -> dict[str, Any]:
    veth("v0", "192.0.2.1/24", peer="v1")
    async with Peer("tests.test_satellite:_peer_satellites", {"address": "192.0.2.2"}, link="v1") as peer:
        await peer.expect("announced", within=20)
        config = {
            "vendors": {"local": {"phrases": ["turn on the kitchen light"]}},
            "satellites": {
                "discover": True,
                "devices": [{"name": "kitchen", "language": "en"}],
                "retry_min_delay": 0.1,
                "retry_max_delay": 0.5,
            },
        }
        async with running_daemon(config) as daemon:
            assert daemon.satellites is not None
            link = daemon.satellites.links[0]
            async with asyncio.timeout(30):
                while link.state != "connected":
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            peer.send({"command": "report"})
            report = await peer.expect("report", within=10)
            state = link.state
    return {"state": state, "kitchen": report["kitchen"], "hall": report["hall"]}


async def _peer_satellites(address: str) -> None:
    """Two satellites on another host, both announced; only "kitchen" is listed in the daemon's config."""
    from asr_daemon.discovery import ZeroconfAdvertiser

    await adopt_interface("v1", f"{address}/24")
    async with (
        FakeSatellite(name="kitchen", host="0.0.0.0") as kitchen,
        FakeSatellite(name="hall", host="0.0.0.0") as hall,
        ZeroconfAdvertiser("kitchen-sat", kitchen.port, "0.0.0.0", refresh_interval=None) as one,
        ZeroconfAdvertiser("hall-sat", hall.port, "0.0.0.0", refresh_interval=None) as other,
    ):
        async with asyncio.timeout(15):
            await one.wait_announced()
            await other.wait_announced()
        emit({"event": "announced"})
        while (command := await next_command()) is not None:
            if command["command"] == "report":
                emit({"event": "report", "kitchen": kitchen.received, "hall": hall.received})
