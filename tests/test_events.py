"""The event model and the bus: one event shape for every sink, fan-out that never blocks a session, and the
events a Wyoming request produces."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.events import AsrEvent, EventBus, EventKind, new_event_id
from tests.support.daemon import running_daemon
from tests.support.speech import have_speech_tools, utterance
from tests.support.wyoming import transcribe


def event(kind: EventKind = EventKind.TRANSCRIPT, text: str = "hello", **fields: object) -> AsrEvent:
    return AsrEvent(kind, "mic:test", session="s1", vendor="amivoice", language="ja", text=text, **fields)  # type: ignore[arg-type]


def test_event_json_form_round_trips_and_keeps_its_id() -> None:
    original = event(audio_seconds=1.23456, started=1700000000.5)
    data = original.to_dict()
    assert list(data)[:3] == ["id", "kind", "time"]
    assert data["kind"] == "transcript" and data["source"] == "mic:test" and data["audio_seconds"] == 1.235
    assert "code" not in data  # unset fields are left out
    json.dumps(data)
    again = AsrEvent.from_dict(json.loads(json.dumps(data)))
    assert again.id == original.id and again.kind is EventKind.TRANSCRIPT and again.text == "hello"


def test_ids_are_unique_and_sort_by_time() -> None:
    ids = [new_event_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert ids[0][:12] <= ids[-1][:12]


class Recorder:
    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay
        self.events: list[AsrEvent] = []
        self.release = asyncio.Event()
        self.release.set()

    async def handle(self, ev: AsrEvent) -> None:
        await self.release.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        self.events.append(ev)


class Broken:
    name = "broken"

    async def handle(self, ev: AsrEvent) -> None:
        raise RuntimeError("sink bug")


async def test_every_sink_gets_every_event_in_order_and_a_broken_one_harms_no_other() -> None:
    bus = EventBus(queue_size=100)
    first, second = Recorder("first"), Recorder("second", delay=0.001)
    async with bus.attached(first), bus.attached(second), bus.attached(Broken()):
        sent = [event(text=str(i)) for i in range(20)]
        for ev in sent:
            bus.publish(ev)
    # Leaving the block flushed every queue.
    assert [e.id for e in first.events] == [e.id for e in sent]
    assert [e.id for e in second.events] == [e.id for e in sent]


async def test_publish_never_waits_for_a_stuck_sink_and_sheds_partials_first() -> None:
    bus = EventBus(queue_size=5)
    stuck = Recorder("stuck")
    stuck.release.clear()
    async with bus.attached(stuck, flush_timeout=2) as subscription:
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        bus.publish(event(EventKind.TRANSCRIPT, "held"))  # taken by the sink, which hangs on it
        await asyncio.sleep(0)
        finals = [event(EventKind.TRANSCRIPT, f"final {i}") for i in range(3)]
        bus.publish(finals[0])
        for i in range(10):
            bus.publish(event(EventKind.PARTIAL, f"partial {i}"))
        bus.publish(finals[1])
        bus.publish(finals[2])
        assert loop.time() - started < 0.05  # publishing did not wait for the sink
        assert len(subscription) == 5 and subscription.dropped == 8
        stuck.release.set()
    texts = [e.text for e in stuck.events]
    # The finals all survived; partials made room for them.
    assert texts[0] == "held"
    assert [t for t in texts if t and t.startswith("final")] == ["final 0", "final 1", "final 2"]
    assert len(texts) == 6


async def test_when_only_finals_are_queued_the_oldest_is_dropped_and_counted() -> None:
    bus = EventBus(queue_size=3)
    stuck = Recorder("stuck")
    stuck.release.clear()
    async with bus.attached(stuck, flush_timeout=2) as subscription:
        for i in range(5):
            bus.publish(event(text=str(i)))
        assert subscription.dropped == 2
        stuck.release.set()
    assert [e.text for e in stuck.events] == ["2", "3", "4"]


async def test_the_bus_says_whether_anyone_listens() -> None:
    # Publishers skip making events while nobody listens, so this must follow attach and detach exactly.
    bus = EventBus()
    assert not bus.listened
    async with bus.attached(Recorder("sink")):
        assert bus.listened
    assert not bus.listened


async def test_shutdown_flush_is_bounded() -> None:
    bus = EventBus()
    stuck = Recorder("stuck")
    stuck.release.clear()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with bus.attached(stuck, flush_timeout=0.3):
        bus.publish(event())
    assert loop.time() - started < 2


@pytest.mark.skipif(not have_speech_tools(), reason="espeak-ng and sox are needed")
async def test_a_wyoming_request_publishes_start_partials_end_and_final(tmp_path: Path) -> None:
    script = ["こんにちは", "今日は良い天気です"]
    async with AmiVoiceEmulator(EmulatorOptions(script=script)).running() as emulator:
        config = {"vendors": {"amivoice": {"url": emulator.url, "api_key": "test-key"}}}
        async with running_daemon(config) as daemon:
            subscription = daemon.events.subscribe("test")
            pcm = utterance("hello there my friend", "the weather is nice today")
            result = await transcribe(daemon.port, pcm, language="ja", realtime=True)  # type: ignore[arg-type]
            events: list[AsrEvent] = []
            async with asyncio.timeout(5):
                while not any(e.kind is EventKind.TRANSCRIPT for e in events):
                    events.append(await subscription.get())
                    subscription.done()
    assert result.text == "こんにちは今日は良い天気です"
    kinds = [e.kind for e in events]
    assert kinds[0] is EventKind.STATE or kinds[0] is EventKind.UTTERANCE_START
    body = [e for e in events if e.kind is not EventKind.STATE]
    assert body[0].kind is EventKind.UTTERANCE_START
    assert body[-2].kind is EventKind.UTTERANCE_END and body[-1].kind is EventKind.TRANSCRIPT
    partials = [e for e in body if e.kind is EventKind.PARTIAL]
    assert partials and all(p.text and result.text.startswith(p.text) for p in partials)
    final = body[-1]
    assert final.text == result.text
    assert final.source.startswith("wyoming:127.0.0.1:")
    assert final.vendor == "amivoice" and final.language == "ja"
    assert {e.session for e in body} == {final.session}
    assert final.started is not None and final.ended is not None and final.started <= final.ended
    assert final.audio_seconds == pytest.approx(len(pcm) / 32000, abs=0.05)


@pytest.mark.skipif(not have_speech_tools(), reason="espeak-ng and sox are needed")
async def test_a_failed_wyoming_request_publishes_an_error_event() -> None:
    async with AmiVoiceEmulator(EmulatorOptions(api_keys=["the-real-key"])).running() as emulator:
        config = {"vendors": {"amivoice": {"url": emulator.url, "api_key": "wrong-key-1234"}}}
        async with running_daemon(config) as daemon:
            subscription = daemon.events.subscribe("test")
            result = await transcribe(daemon.port, utterance("hello"), language="ja")  # type: ignore[arg-type]
            events: list[AsrEvent] = []
            async with asyncio.timeout(5):
                while not {EventKind.ERROR, EventKind.UTTERANCE_END} <= {e.kind for e in events}:
                    events.append(await subscription.get())
                    subscription.done()
    assert result.error_code == "vendor-rejected"
    errors = [e for e in events if e.kind is EventKind.ERROR]
    assert len(errors) == 1 and errors[0].code == "vendor-rejected"
    assert "wrong-key-1234" not in (errors[0].message or "")
    assert not any(e.kind is EventKind.TRANSCRIPT for e in events)
