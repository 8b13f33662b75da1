"""Real wyoming-satellite 1.0.0 devices driven by the daemon, with no Home Assistant: espeak-ng says "okay nabu"
and a command into each satellite's microphone, a real wake-word detector (pymicro-wakeword) finds the wake
word, the offline engine transcribes, and the transcripts arrive on a real mosquitto broker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from asr_daemon.daemon import Daemon
from asr_daemon.vendors.local.grammar import missing_reason
from tests.support.daemon import running_daemon
from tests.support.mosquitto import Mosquitto, have_mosquitto
from tests.support.speech import have_speech_tools, silence, speech, wav
from tests.support.venvs import VenvUnavailable
from tests.support.wyoming_satellite import Satellite, WakeService, satellite_python

pytestmark = [
    pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox"),
    pytest.mark.skipif(not have_mosquitto(), reason="needs mosquitto"),
    pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or ""),
    pytest.mark.timeout(240),
    # Real processes speaking in real time (about two minutes in all): once per CI run, not per Python version.
    pytest.mark.realpart,
]

NODE = "sat-test"
# Phrases the offline engine recognises whatever silence surrounds them (measured; "play some music" is not one).
COMMANDS = [
    "turn on the kitchen light",
    "set a timer for ten minutes",
    "what is the weather like today",
    "turn on the living room light",
    "turn on the bedroom light",
]


def spoken(command: str) -> bytes:
    """The wake word, a short pause, the command (slow and clear, for the offline engine), then silence."""
    return wav(
        silence(400) + speech("okay nabu", speed=150) + silence(700) + speech(command, speed=125) + silence(2500)
    )


@pytest.fixture(scope="module")
def sat_python() -> Path:
    """The satellite's interpreter (its own environment, built once per machine)."""
    try:
        return satellite_python()
    except VenvUnavailable as exc:
        pytest.skip(f"wyoming-satellite 1.0.0: {exc}")


class Broker:
    """Everything the daemon publishes under its base topic, as (topic suffix, payload), in arrival order."""

    def __init__(self, mosquitto: Mosquitto) -> None:
        self.mosquitto = mosquitto
        self.messages: list[tuple[str, dict[str, Any]]] = []
        # When each message arrived (wall clock), for latencies.
        self.arrivals: list[float] = []
        self._changed = asyncio.Event()

    async def run(self, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(self.mosquitto.host, self.mosquitto.port, identifier="satellite-test") as client:
            await client.subscribe(f"asr-daemon/{NODE}/#", qos=1)
            ready.set()
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                suffix = str(message.topic).removeprefix(f"asr-daemon/{NODE}/")
                try:
                    data = json.loads(payload)
                except ValueError:
                    data = {"raw": payload.decode(errors="replace")}
                self.messages.append((suffix, data if isinstance(data, dict) else {"raw": data}))
                self.arrivals.append(time.time())
                self._changed.set()

    def on(self, suffix: str) -> list[dict[str, Any]]:
        return [data for topic, data in self.messages if topic == suffix]

    async def wait_for(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {self.messages}")
            self._changed.clear()
            with __import__("contextlib").suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 0.5)):
                    await self._changed.wait()


@asynccontextmanager
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    with Mosquitto(tmp_path / "mqtt") as mosquitto:
        watcher = Broker(mosquitto)
        ready = asyncio.Event()
        task = asyncio.create_task(watcher.run(ready))
        async with asyncio.timeout(10):
            await ready.wait()
        try:
            yield watcher
        finally:
            task.cancel()
            with __import__("contextlib").suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


def config(tmp_path: Path, mosquitto: Mosquitto, satellites: list[Satellite], **extra: Any) -> dict[str, Any]:
    return {
        "vendors": {"local": {"phrases": COMMANDS}},
        "mqtt": {
            "host": mosquitto.host,
            "port": mosquitto.port,
            "node_id": NODE,
            "discovery": False,
            "partials": False,
            "spool_dir": str(tmp_path / "spool"),
            "reconnect_min_delay": 0.1,
        },
        "satellites": {
            "devices": [{"uri": s.uri, "name": s.name, "language": "en"} for s in satellites],
            "retry_min_delay": 0.2,
            "retry_max_delay": 1.0,
            **extra,
        },
    }


def link_state(daemon: Daemon, name: str) -> str:
    assert daemon.satellites is not None
    return next(link.state for link in daemon.satellites.links if link.settings.name == name)


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def transcripts(watcher: Broker) -> list[tuple[str, str]]:
    return [(data["source"], data["text"]) for data in watcher.on("transcript")]


async def speak_and_hear(watcher: Broker, satellite: Satellite, command: str, said: bytes | None = None) -> None:
    before = len(watcher.on("transcript")) + len(watcher.on("error"))
    satellite.say(said if said is not None else spoken(command))
    await watcher.wait_for(
        lambda: len(watcher.on("transcript")) + len(watcher.on("error")) > before,
        45,
        f"the transcript of {command!r} from {satellite.name}",
    )


async def test_local_wake_commands_arrive_on_mqtt_once_each_in_order(tmp_path: Path, sat_python: Path) -> None:
    with WakeService(sat_python, tmp_path) as wake, Satellite(sat_python, tmp_path, "kitchen", wake.uri) as sat:
        async with broker(tmp_path) as watcher, running_daemon(config(tmp_path, watcher.mosquitto, [sat])) as daemon:
            await until(lambda: link_state(daemon, "kitchen") == "connected", 20, "the satellite connected")
            for command in COMMANDS[:2]:
                await speak_and_hear(watcher, sat, command)
                # Back to waiting for its wake word (the satellite says so in its log too).
                await until(lambda: link_state(daemon, "kitchen") == "connected", 10, "the satellite idle again")
            await asyncio.sleep(1.0)  # a duplicate would arrive by now
            states = [data["state"] for data in watcher.on("satellite/kitchen/state")]
        log = sat.log_text()
    assert watcher.on("error") == [], log
    assert transcripts(watcher) == [("satellite:kitchen", c) for c in COMMANDS[:2]], log
    assert "streaming" in states and states[-1] == "connected", states
    # Each transcript sent the satellite back to its wake word: once after run-satellite, once per command.
    assert log.count("Waiting for wake word") >= 3, log


async def test_remote_wake_the_daemon_finds_the_wake_word_and_rearms_it(tmp_path: Path, sat_python: Path) -> None:
    with WakeService(sat_python, tmp_path) as wake, Satellite(sat_python, tmp_path, "hall") as sat:
        async with (
            broker(tmp_path) as watcher,
            running_daemon(config(tmp_path, watcher.mosquitto, [sat], wake_uri=wake.uri)) as daemon,
        ):
            await until(lambda: link_state(daemon, "hall") == "connected", 20, "the satellite connected")
            for command in COMMANDS[2:4]:
                await speak_and_hear(watcher, sat, command)
            await asyncio.sleep(1.0)
        log = sat.log_text()
    assert watcher.on("error") == [], log
    # 1.0.0 asks for one pipeline run only (it streams from then on): the second command was heard because the
    # daemon re-armed wake detection itself. The satellite heard of each detection.
    assert log.count("Server set") == 1 and log.count("Wake word detected") == 2, log
    assert transcripts(watcher) == [("satellite:hall", c) for c in COMMANDS[2:4]], wake.log_text()


async def test_two_satellites_at_once_stay_apart(tmp_path: Path, sat_python: Path) -> None:
    with (
        WakeService(sat_python, tmp_path) as wake,
        Satellite(sat_python, tmp_path, "kitchen", wake.uri) as kitchen,
        Satellite(sat_python, tmp_path, "bedroom", wake.uri) as bedroom,
    ):
        async with (
            broker(tmp_path) as watcher,
            running_daemon(config(tmp_path, watcher.mosquitto, [kitchen, bedroom])) as daemon,
        ):
            for name in ("kitchen", "bedroom"):
                await until(lambda name=name: link_state(daemon, name) == "connected", 20, f"{name} connected")
            kitchen.say(spoken("turn on the kitchen light"))
            bedroom.say(spoken("turn on the bedroom light"))
            await watcher.wait_for(lambda: len(watcher.on("transcript")) >= 2, 60, "both transcripts")
            await asyncio.sleep(1.0)
    assert watcher.on("error") == []
    assert sorted(transcripts(watcher)) == [
        ("satellite:bedroom", "turn on the bedroom light"),
        ("satellite:kitchen", "turn on the kitchen light"),
    ]


async def test_satellite_killed_mid_command_error_then_reconnect_and_next_command(
    tmp_path: Path, sat_python: Path
) -> None:
    with WakeService(sat_python, tmp_path) as wake:
        sat = Satellite(sat_python, tmp_path, "office", wake.uri)
        sat.start()
        try:
            async with (
                broker(tmp_path) as watcher,
                running_daemon(config(tmp_path, watcher.mosquitto, [sat])) as daemon,
            ):
                await until(lambda: link_state(daemon, "office") == "connected", 20, "the satellite connected")
                # A command that is still being spoken when the satellite dies.
                sat.say(
                    wav(
                        silence(400)
                        + speech("okay nabu", speed=150)
                        + silence(700)
                        + speech(
                            "turn on the kitchen light and then turn on the bedroom light and the living room light",
                            speed=110,
                        )
                    )
                )
                await until(lambda: link_state(daemon, "office") == "streaming", 20, "the command streaming")
                await asyncio.sleep(0.5)
                sat.kill()
                await watcher.wait_for(lambda: len(watcher.on("error")) >= 1, 15, "the error event")
                sat.start()
                await until(lambda: link_state(daemon, "office") == "connected", 20, "the satellite reconnected")
                await speak_and_hear(watcher, sat, "what is the weather like today")
                await asyncio.sleep(1.0)
        finally:
            sat.kill()
    errors = watcher.on("error")
    assert [(e["source"], e["code"]) for e in errors] == [("satellite:office", "satellite-lost")], errors
    assert transcripts(watcher) == [("satellite:office", "what is the weather like today")]


async def idle_cpu(daemon: Daemon, names: list[str], seconds: float) -> float:
    """Share of one core this process used over ``seconds`` (the daemon is all it runs)."""
    for name in names:
        await until(lambda name=name: link_state(daemon, name) == "connected", 30, f"{name} connected")
    await asyncio.sleep(1.0)
    wall, cpu = time.monotonic(), time.process_time()
    await asyncio.sleep(seconds)
    return (time.process_time() - cpu) / (time.monotonic() - wall)


SATELLITES_MEASURED = 4


async def test_cpu_of_connected_satellites_idle_and_streaming(tmp_path: Path, sat_python: Path) -> None:
    """Figures for docs/satellites.md (printed; bounds only catch a runaway loop): the daemon's CPU with N idle
    local-wake satellites, and with N remote-wake satellites whose audio it sends to the wake-word service."""
    names = [f"sat{i}" for i in range(SATELLITES_MEASURED)]
    with WakeService(sat_python, tmp_path) as wake:
        local = [Satellite(sat_python, tmp_path, name, wake.uri) for name in names]
        remote = [Satellite(sat_python, tmp_path / "remote", name) for name in names]
        try:
            for satellite in (*local, *remote):
                satellite.start()
            settings = {"vendors": {"local": {"phrases": COMMANDS}}}
            idle_config = {**settings, "satellites": {"devices": [{"uri": s.uri, "name": s.name} for s in local]}}
            async with running_daemon(idle_config) as daemon:
                idle = await idle_cpu(daemon, names, 20.0)
            remote_config = {
                **settings,
                "satellites": {"devices": [{"uri": s.uri, "name": s.name} for s in remote], "wake_uri": wake.uri},
            }
            async with running_daemon(remote_config) as daemon:
                streaming = await idle_cpu(daemon, names, 20.0)
        finally:
            for satellite in (*local, *remote):
                satellite.kill()
    per_idle, per_streaming = idle / SATELLITES_MEASURED, streaming / SATELLITES_MEASURED
    print(
        f"\n{SATELLITES_MEASURED} local-wake satellites idle: {idle:.4%} of a core ({per_idle:.4%} each); "
        f"remote-wake, streaming to the wake service: {streaming:.3%} ({per_streaming:.3%} each)"
    )
    assert per_idle < 0.01 and per_streaming < 0.2


CHUNK_SAMPLES = 1024  # what the satellite's microphone delivers at a time (64 ms)


def whole_chunks(pcm: bytes) -> bytes:
    """``pcm`` and silence up to a whole number of microphone chunks, so that what follows starts a chunk: the
    last voiced sample then sits at the same place in its chunk on both paths (which chunk boundary the end of
    speech falls before moves an answer by up to a chunk, 64 ms)."""
    return pcm + bytes(-len(pcm) % (CHUNK_SAMPLES * 2))


async def wyoming_latency(port: int, pcm: bytes, last_voiced: int) -> float:
    """A Home Assistant-style client streaming ``pcm`` in real time: seconds from sending the chunk that holds
    the last voiced sample to the transcript (the daemon's endpointing ends the utterance)."""
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    chunk_bytes = CHUNK_SAMPLES * 2
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        started = time.monotonic()
        voiced_sent: float | None = None

        async def send() -> None:
            nonlocal voiced_sent
            for offset in range(0, len(pcm), chunk_bytes):
                piece = pcm[offset : offset + chunk_bytes]
                await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=piece).event())
                if offset <= last_voiced * 2 < offset + chunk_bytes:
                    voiced_sent = time.monotonic()
                await asyncio.sleep(max(0.0, started + (offset + len(piece)) / 32000 - time.monotonic()))
            await client.write_event(AudioStop().event())

        sender = asyncio.create_task(send())
        try:
            while (event := await client.read_event()) is not None:
                if Transcript.is_type(event.type):
                    assert voiced_sent is not None
                    return time.monotonic() - voiced_sent
        finally:
            sender.cancel()
    raise AssertionError("no transcript")


async def test_latency_from_the_last_voiced_frame_satellite_to_mqtt_and_wyoming_client(
    tmp_path: Path, sat_python: Path
) -> None:
    """Figures for docs/satellites.md (printed, not asserted): from the microphone chunk that holds the last
    voiced sample to the transcript, for a local-wake satellite (on MQTT) and a Wyoming client (its answer):
    the same audio on both paths: the Wyoming client sends what the satellite's utterance held (the silence
    between its wake word and the command, then the command), in the same 64 ms chunks at the same pace, so
    that the daemon's end-of-speech detector decides alike on both and only the paths differ."""
    commands = COMMANDS[:3]
    satellite_figures: list[float] = []
    wyoming_figures: list[float] = []
    # Per command: the chunks of silence before the command in the satellite's utterance.
    leads: list[int] = []
    with WakeService(sat_python, tmp_path) as wake, Satellite(sat_python, tmp_path, "kitchen", wake.uri) as sat:
        async with (
            broker(tmp_path) as watcher,
            running_daemon({**config(tmp_path, watcher.mosquitto, [sat]), "endpointing": {"enabled": True}}) as daemon,
        ):
            await until(lambda: link_state(daemon, "kitchen") == "connected", 20, "the satellite connected")
            for command in commands:
                lead = whole_chunks(silence(400) + speech("okay nabu", speed=150) + silence(700))
                said = speech(command, speed=125)
                last_voiced = (len(lead) + len(said)) // 2 - 1
                await speak_and_hear(watcher, sat, command, wav(lead + said + silence(2500)))
                started = float(next(sat.queue.glob("*.started")).read_text())
                for stamp in sat.queue.glob("*.started"):
                    stamp.unlink()
                written = started + (last_voiced // CHUNK_SAMPLES) * CHUNK_SAMPLES / 16000
                arrived, final = next(
                    (at, data)
                    for (topic, data), at in zip(watcher.messages, watcher.arrivals, strict=True)
                    if topic == "transcript" and at > started
                )
                satellite_figures.append(arrived - written)
                # The utterance began with the first chunk after the wake word (a chunk reaches the daemon a few
                # ms after the microphone wrote it, every 64 ms).
                first_chunk = round((final["started"] - started) * 16000 / CHUNK_SAMPLES)
                leads.append(len(lead) // (CHUNK_SAMPLES * 2) - first_chunk)
                await until(lambda: link_state(daemon, "kitchen") == "connected", 10, "idle again")
            assert daemon.port is not None
            for command, chunks in zip(commands, leads, strict=True):
                lead = bytes(max(1, chunks) * CHUNK_SAMPLES * 2)
                said = speech(command, speed=125)
                pcm = lead + said + silence(2500)
                wyoming_figures.append(await wyoming_latency(daemon.port, pcm, (len(lead) + len(said)) // 2 - 1))
    behind = [round((s - w) * 1000) for s, w in zip(satellite_figures, wyoming_figures, strict=True)]
    print(
        f"\nlast voiced frame → transcript, per command: satellite → MQTT "
        f"{[round(f * 1000) for f in satellite_figures]} ms; Wyoming client "
        f"{[round(f * 1000) for f in wyoming_figures]} ms; satellite behind by {behind} ms "
        f"(chunks of silence before the command: {leads})"
    )
    assert [t for t in transcripts(watcher) if t[0] == "satellite:kitchen"] == [
        ("satellite:kitchen", c) for c in commands
    ]
