"""The session's two ways of taking the vendor's results give the caller the same thing.

While a connection's receiver runs, the stream hands each partial and final to the session as it arrives (the hot
path, ``Session._take_result``); otherwise they wait in the stream's queue for the receiver's loop (the plain
path, ``direct_results = False``). Every vendor's emulator must yield the same partials, in the same order, and
the same transcript either way; and a result never overtakes an event still queued."""

from __future__ import annotations

import asyncio

import pytest

from asr_daemon.audio.normalise import AudioFormat
from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.resilience.policy import DEFAULT_POLICY
from asr_daemon.session import Session, SessionLimits
from asr_daemon.vendors.base import (
    BaseStream,
    FinalResult,
    PartialResult,
    StreamCompleted,
    StreamOptions,
    VendorEvent,
)
from tests.support.vendor_streams import VENDORS, VendorStreams, tones

PCM16K = AudioFormat(16000, 2, 1)
PIECE = 320
SCRIPT = ["one two three four", "five six seven"]


class TakenCounter:
    """Counts the results ``_take_result`` took (the hot path)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.taken = 0
        original = Session._take_result

        def counting(session: Session, timeline: object, event: VendorEvent) -> bool:
            taken = original(session, timeline, event)  # type: ignore[arg-type]
            self.taken += taken
            return taken

        monkeypatch.setattr(Session, "_take_result", counting)


async def results_through_session(vendor: VendorStreams, *, direct: bool) -> tuple[list[str], str, int]:
    """Two sentences at about real time; the partials the caller was told, the transcript, the finals' count."""
    emu = vendor.emulator_class(EmulatorOptions(script=SCRIPT))
    audio = tones(2)
    partials: list[str] = []
    async with emu.running():
        options = StreamOptions(language=vendor.language, session_id=f"results-{direct}")
        session = Session(
            vendor.adapter(emu, api_key="test-key"), options, SessionLimits(final_timeout=10), partials.append
        )
        session.direct_results = direct
        async with session:
            for offset in range(0, len(audio), PIECE * 4):
                session.feed(audio[offset : offset + PIECE * 4], PCM16K)
                await asyncio.sleep(0.03)
            transcript = await session.finish()
    return partials, transcript.text, len(transcript.segments)


@pytest.mark.parametrize("vendor", VENDORS, ids=[vendor.name for vendor in VENDORS])
async def test_results_taken_at_once_are_what_the_receivers_loop_gives(
    vendor: VendorStreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = TakenCounter(monkeypatch)
    plain = await results_through_session(vendor, direct=False)
    assert counter.taken == 0
    direct = await results_through_session(vendor, direct=True)
    # The hot path carried the results, and the caller cannot tell the difference.
    assert counter.taken >= 2
    assert direct == plain
    assert plain[2] == 2
    assert plain[0], "the emulator gave partials"


class _Stream(BaseStream):
    pass


async def test_a_result_never_overtakes_an_event_still_queued() -> None:
    vendor = VENDORS[0]
    adapter = vendor.adapter_class(vendor.adapter_class.settings_model.model_validate({"api_key": "k"}))
    stream = _Stream(adapter, StreamOptions(language="ja"), DEFAULT_POLICY)
    taken: list[VendorEvent] = []

    def take(event: VendorEvent) -> bool:
        if isinstance(event, PartialResult | FinalResult):
            taken.append(event)
            return True
        return False

    stream.consumer = take
    stream._emit([PartialResult("a")])
    stream._emit([StreamCompleted(), PartialResult("late")])
    stream._emit([FinalResult("later")])
    assert taken == [PartialResult("a")]
    queued = [stream.events.get_nowait() for _ in range(stream.events.qsize())]
    assert queued == [StreamCompleted(), PartialResult("late"), FinalResult("later")]
