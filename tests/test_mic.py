"""The microphone, end to end through the real PortAudio/ALSA path: a fake ALSA capture device (the ``file``
plugin reading known PCM) → PyAudio → voice activity detection → one vendor session per utterance → events.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from wyoming.event import Event, async_read_event

from asr_daemon.audio.vad import UtteranceAudio, UtteranceEnded, UtteranceStarted, VadSegmenter, VadSettings, webrtc_vad
from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.events import AsrEvent, EventKind, Subscription
from tests.support.alsa import alsa_config, fake_microphone, write_config
from tests.support.daemon import running_daemon
from tests.support.speech import have_speech_tools, silence, speech
from tests.support.wyoming import describe

pyaudio = pytest.importorskip("pyaudio", reason="PyAudio is needed (the mic extra)")
pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="espeak-ng and sox are needed")

SCRIPTS = [["一つ目です"], ["二つ目です"]]
FIRST, SECOND = "Turn on the kitchen lights", "What is the weather like today"


def two_sentences(trailing_ms: int = 120_000) -> bytes:
    """Two sentences apart, then plenty of silence (the fake device is read faster than real time)."""
    return silence(1000) + speech(FIRST) + silence(2000) + speech(SECOND) + silence(trailing_ms)


def mic_config(emulator: AmiVoiceEmulator, device: str, **mic: Any) -> dict[str, Any]:
    return {
        "vendors": {"amivoice": {"url": emulator.url, "api_key": "test-key"}},
        "mic": {"enabled": True, "device": device, "language": "ja", **mic},
    }


@pytest.fixture
async def emulator() -> AsyncIterator[AmiVoiceEmulator]:
    async with AmiVoiceEmulator(EmulatorOptions(stream_scripts=SCRIPTS)).running() as emu:
        assert isinstance(emu, AmiVoiceEmulator)
        yield emu


async def collect(
    subscription: Subscription, until: Callable[[list[AsrEvent]], bool], timeout: float = 30
) -> list[AsrEvent]:
    events: list[AsrEvent] = []
    async with asyncio.timeout(timeout):
        while not until(events):
            events.append(await subscription.get())
            subscription.done()
    return events


def finals(events: list[AsrEvent]) -> list[AsrEvent]:
    return [e for e in events if e.kind is EventKind.TRANSCRIPT]


def expected_utterances(pcm: bytes) -> list[bytes]:
    """What the daemon must send the vendor for ``pcm``: the same segmenter, offline, on the same bytes."""
    segmenter = VadSegmenter(VadSettings(), webrtc_vad())
    utterances: list[bytes] = []
    current = bytearray()
    for step in range(0, len(pcm), 960):
        for segment in segmenter.process(pcm[step : step + 960]):
            if isinstance(segment, UtteranceStarted):
                current = bytearray(segment.audio)
            elif isinstance(segment, UtteranceAudio):
                current += segment.audio
            elif isinstance(segment, UtteranceEnded):
                utterances.append(bytes(current))
    return utterances


class EventRecorder:
    """A Wyoming peer like the ones wyoming-satellite's --event-uri points at: records what it is sent."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.arrived = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> EventRecorder:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def uri(self) -> str:
        assert self._server is not None
        return f"tcp://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (event := await async_read_event(reader)) is not None:
            self.events.append(event)
            self.arrived.set()
        writer.close()


async def test_two_sentences_through_alsa_become_two_utterances_and_two_transcripts(
    tmp_path: Path, emulator: AmiVoiceEmulator
) -> None:
    pcm = two_sentences()
    jsonl = tmp_path / "events.jsonl"
    async with EventRecorder() as recorder:
        with fake_microphone(tmp_path, pcm) as device:
            config = mic_config(emulator, device)
            config["events"] = {"jsonl": str(jsonl), "forward_uris": [recorder.uri]}
            async with running_daemon(config) as daemon:
                subscription = daemon.events.subscribe("test")
                events = await collect(subscription, lambda seen: len(finals(seen)) == 2)
                async with asyncio.timeout(10):
                    while sum(e.type == "transcript" for e in recorder.events) < 2:
                        recorder.arrived.clear()
                        await recorder.arrived.wait()

    # Two utterances, each its own vendor stream, each stream recognised as its own sentence.
    got = finals(events)
    assert [e.text for e in got] == ["一つ目です", "二つ目です"]
    assert all(e.source == f"mic:{device}" and e.vendor == "amivoice" and e.language == "ja" for e in got)
    assert len({e.id for e in got}) == 2 and len({e.session for e in got}) == 2
    starts = [e for e in events if e.kind is EventKind.UTTERANCE_START]
    ends = [e for e in events if e.kind is EventKind.UTTERANCE_END]
    assert [e.session for e in starts] == [e.session for e in got] == [e.session for e in ends]
    assert any(e.kind is EventKind.PARTIAL for e in events)
    assert next(e.state for e in events if e.kind is EventKind.STATE) == "listening"

    # Every byte the vendor got came from the device, cut where the detector says, with its pre-roll.
    expected = expected_utterances(pcm)
    assert len(expected) == 2
    assert len(emulator.streams) == 2
    for record, audio in zip(emulator.streams, expected, strict=True):
        assert not record.violations
        assert record.pcm_bytes == len(audio)
        assert record.pcm_sha256 == hashlib.sha256(audio).hexdigest()
    # The pre-roll reaches back before the detector's decision: each utterance starts in silence.
    assert all(audio[:320] == bytes(320) for audio in expected)

    # The same transcripts were forwarded to the Wyoming event URI, with their ids.
    forwarded = [e for e in recorder.events if e.type == "transcript"]
    assert [e.data["text"] for e in forwarded] == ["一つ目です", "二つ目です"]
    assert [e.data["id"] for e in forwarded] == [e.id for e in got]
    types = [e.type for e in recorder.events]
    assert types.count("voice-started") == 2 and types.count("voice-stopped") == 2

    # And written as JSON lines.
    import json

    lines = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    assert [line["text"] for line in lines if line["kind"] == "transcript"] == ["一つ目です", "二つ目です"]


async def test_a_48k_stereo_device_is_normalised_for_the_vendor(tmp_path: Path, emulator: AmiVoiceEmulator) -> None:
    pcm = two_sentences(trailing_ms=60_000)
    with fake_microphone(tmp_path, pcm, rate=48000, channels=2) as device:
        async with running_daemon(mic_config(emulator, device, rate=48000, channels=2)) as daemon:
            subscription = daemon.events.subscribe("test")
            events = await collect(subscription, lambda seen: len(finals(seen)) == 2)
            assert daemon.mic is not None and daemon.mic.format is not None
            assert (daemon.mic.format.rate, daemon.mic.format.channels) == (48000, 2)
    assert [e.text for e in finals(events)] == ["一つ目です", "二つ目です"]
    # The vendor got 16 kHz mono: about as many bytes as the 16 kHz utterances hold (cuts may differ a frame).
    for record, audio in zip(emulator.streams, expected_utterances(pcm), strict=True):
        assert not record.violations
        assert abs(record.pcm_bytes - len(audio)) <= 0.1 * len(audio)


async def test_a_missing_device_is_retried_and_reported_and_used_once_it_appears(
    tmp_path: Path, emulator: AmiVoiceEmulator
) -> None:
    infile = tmp_path / "late.raw"
    infile.write_bytes(two_sentences())
    config_path = write_config(tmp_path / "asound.conf", {})  # no such device yet
    with alsa_config(config_path):
        config = mic_config(emulator, "late_mic", retry_min_delay=0.2, retry_max_delay=0.4)
        async with running_daemon(config) as daemon:
            subscription = daemon.events.subscribe("test")
            unavailable = await collect(
                subscription, lambda seen: any(e.state == "unavailable" for e in seen), timeout=15
            )
            report = next(e for e in unavailable if e.state == "unavailable")
            assert report.source == "mic:late_mic" and "late_mic" in (report.message or "")
            await asyncio.sleep(1)  # several attempts fail; the daemon keeps serving
            assert daemon.mic is not None and daemon.mic.failures >= 2
            assert (await describe(daemon.port)).asr  # type: ignore[arg-type]
            # Plugged in: the next attempt finds it.
            write_config(config_path, {"late_mic": infile})
            events = await collect(subscription, lambda seen: len(finals(seen)) == 2, timeout=20)
    assert next(e.state for e in events if e.kind is EventKind.STATE) == "listening"
    assert [e.text for e in finals(events)] == ["一つ目です", "二つ目です"]


async def test_a_device_that_fails_mid_stream_is_reopened(
    tmp_path: Path, emulator: AmiVoiceEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read error (what a USB microphone being unplugged gives) ends the capture; the source reopens it."""
    reads = {"count": 0}
    real_open = pyaudio.PyAudio.open

    def failing_open(self: Any, *args: Any, **kwargs: Any) -> Any:
        stream = real_open(self, *args, **kwargs)
        real_read = stream.read

        def read(frames: int, exception_on_overflow: bool = True) -> bytes:
            reads["count"] += 1
            if reads["count"] == 20:
                raise OSError(-9999, "Unanticipated host error")
            data: bytes = real_read(frames, exception_on_overflow=exception_on_overflow)
            return data

        stream.read = read
        return stream

    monkeypatch.setattr(pyaudio.PyAudio, "open", failing_open)
    with fake_microphone(tmp_path, two_sentences()) as device:
        config = mic_config(emulator, device, retry_min_delay=0.1)
        async with running_daemon(config) as daemon:
            subscription = daemon.events.subscribe("test")
            events = await collect(subscription, lambda seen: len(finals(seen)) == 2, timeout=30)
            threads = [t.name for t in __import__("threading").enumerate()]
    states = [(e.state, e.message) for e in events if e.kind is EventKind.STATE]
    assert [state for state, _ in states[:3]] == ["listening", "unavailable", "listening"]
    assert "Unanticipated host error" in (states[1][1] or "")
    assert [e.text for e in finals(events)] == ["一つ目です", "二つ目です"]
    assert threads.count("mic capture") == 1  # the failed capture's thread is gone


def test_devices_lists_the_fake_microphone(tmp_path: Path) -> None:
    with fake_microphone(tmp_path, silence(100), name="listed_mic"):
        done = subprocess.run(
            [sys.executable, "-m", "asr_daemon", "devices"],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ),
        )
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if "listed_mic" in line)
    index = line.split()[0]
    assert index.isdigit()
    assert "16000" in done.stdout and "48000" in done.stdout


async def test_with_prewarm_each_utterance_starts_on_a_connection_that_was_already_open(
    tmp_path: Path, emulator: AmiVoiceEmulator
) -> None:
    with fake_microphone(tmp_path, silence(1500) + two_sentences()) as device:
        config = mic_config(emulator, device)
        config["vendors"]["amivoice"]["prewarm"] = True
        async with running_daemon(config) as daemon:
            subscription = daemon.events.subscribe("test")
            events = await collect(subscription, lambda seen: len(finals(seen)) == 2)
            assert daemon.mic is not None and daemon.mic.pool is not None
            assert daemon.mic.pool.hits >= 1
    # Which connection (so which emulator script) an utterance gets depends on the pool's timing.
    assert sorted(e.text or "" for e in finals(events)) == ["一つ目です", "二つ目です"]
    assert not any(record.violations for record in emulator.streams)
