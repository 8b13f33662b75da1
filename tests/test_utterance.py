"""The Utterance every source shares: one answer through one route, one set of events, explicit lifetimes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from asr_daemon.audio.endpoint import EndpointSettings
from asr_daemon.audio.format import PCM16K
from asr_daemon.daemon import endpoint_settings
from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.events import AsrEvent, EventBus, EventKind
from asr_daemon.routing import Router
from asr_daemon.session import Session, SessionError, SessionLimits, Transcript
from asr_daemon.settings import EndpointingSettings
from asr_daemon.utterance import Answer, Utterance, UtteranceServices
from asr_daemon.vendors.amivoice.adapter import AmiVoiceAdapter, AmiVoiceSettings
from asr_daemon.vendors.base import StreamOptions
from tests.support.speech import have_speech_tools, silence, utterance

SENTENCE = "今日はいい天気ですね。"


@pytest.fixture
async def emulator() -> AsyncIterator[AmiVoiceEmulator]:
    async with AmiVoiceEmulator(EmulatorOptions(script=[SENTENCE], silence_ms=200)).running() as emu:
        assert isinstance(emu, AmiVoiceEmulator)
        yield emu


def services_for(emu: AmiVoiceEmulator, bus: EventBus, observed: list[object], **kwargs: object) -> UtteranceServices:
    adapter = AmiVoiceAdapter(AmiVoiceSettings.model_validate({"url": emu.url, "api_key": "test-key"}))

    def observe(session: Session, result: Transcript | None, error: SessionError | None) -> None:
        observed.append(result if result is not None else error)

    return UtteranceServices(
        Router({"amivoice": adapter}), SessionLimits(final_timeout=5), bus, observe=observe, **kwargs
    )  # type: ignore[arg-type]


async def test_a_refused_utterance_is_answered_once_through_the_one_route(emulator: AmiVoiceEmulator) -> None:
    bus, observed = EventBus(), list[object]()
    subscription = bus.subscribe("test")
    services = services_for(emulator, bus, observed)
    answers: list[Answer] = []
    # A vendor that is not configured (with one configured, every language routes to it).
    refused = Utterance(services, "test", language="is", vendor="tiro", on_answer=answers.append)
    assert not refused.open()
    refused.fail(SessionError("internal", "a second failure is not a second answer"))
    await refused.aclose()
    [answer] = answers
    assert answer.error is not None and answer.error.code == "unsupported-language"
    assert refused.answer.result() is answer
    events: list[AsrEvent] = []
    while len(subscription):
        events.append(await subscription.get())
        subscription.done()
    assert [e.kind for e in events] == [EventKind.ERROR]
    assert observed == []  # no session: nothing for the vendor's health
    assert emulator.streams == []


@pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")
async def test_at_the_sources_end_of_audio_finals_that_cover_the_speech_are_the_answer(
    emulator: AmiVoiceEmulator,
) -> None:
    # The microphone's way: its segmenter ends the utterance; the detector only says whether the finals have it.
    bus, observed = EventBus(), list[object]()
    services = services_for(emulator, bus, observed, endpointing=EndpointSettings())
    speech = utterance("please turn on the light", tail_ms=0)
    spoken = Utterance(services, "mic:test", language="ja", ends_itself=False)
    assert spoken.open()
    try:
        for offset in range(0, len(speech), 3200):
            spoken.feed(speech[offset : offset + 3200], PCM16K)
            await asyncio.sleep(0.01)
        trailing = silence(700)
        for offset in range(0, len(trailing), 3200):
            spoken.feed(trailing[offset : offset + 3200], PCM16K)
            await asyncio.sleep(0.05)
        session = spoken.session
        assert session is not None
        async with asyncio.timeout(5):
            while session.finals_end is None:
                await asyncio.sleep(0.02)
        assert spoken.taking_audio  # the detector heard the speech end, but only the source ends this utterance
        answer = await spoken.finish()
    finally:
        await spoken.aclose()
    assert answer.transcript is not None and answer.transcript.text == SENTENCE
    [record] = emulator.streams
    assert not record.completed  # answered without ending the vendor stream and waiting for it
    assert observed == [answer.transcript]


@pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")
async def test_audio_after_the_end_of_speech_never_reaches_the_vendor(emulator: AmiVoiceEmulator) -> None:
    bus, observed = EventBus(), list[object]()
    services = services_for(emulator, bus, observed, endpointing=EndpointSettings(silence_seconds=0.5))
    speech = utterance("please turn on the light", tail_ms=0)
    spoken = Utterance(services, "test", language="ja")
    assert spoken.open()
    try:
        audio = speech + silence(600)
        for offset in range(0, len(audio), 320):
            spoken.feed(audio[offset : offset + 320], PCM16K)
        assert not spoken.taking_audio
        for _ in range(100):
            spoken.feed(b"\x10\x27" * 160, PCM16K)  # loud audio, discarded
        answer = await spoken.finish()
    finally:
        await spoken.aclose()
    assert answer.transcript is not None and answer.transcript.text == SENTENCE
    [record] = emulator.streams
    assert record.pcm_bytes <= len(audio)


async def test_a_session_runs_only_between_start_and_aclose(emulator: AmiVoiceEmulator) -> None:
    adapter = AmiVoiceAdapter(AmiVoiceSettings.model_validate({"url": emulator.url, "api_key": "test-key"}))
    before = asyncio.all_tasks()
    session = Session(adapter, StreamOptions(language="ja", session_id="t"), SessionLimits())
    assert asyncio.all_tasks() == before  # built, nothing running: nothing to forget to close
    async with session:
        assert len(asyncio.all_tasks() - before) == 1
    await asyncio.sleep(0)
    assert not [task for task in asyncio.all_tasks() - before if not task.done()]


def test_the_endpointing_settings_default_to_the_detectors_own() -> None:
    settings = EndpointingSettings()
    detector = EndpointSettings()
    assert settings.enabled
    assert (settings.silence_seconds, settings.speech_seconds, settings.no_speech_seconds) == (
        detector.silence_seconds,
        detector.speech_seconds,
        detector.no_speech_seconds,
    )
    assert endpoint_settings(settings) == detector
    assert endpoint_settings(EndpointingSettings(enabled=False)) is None
