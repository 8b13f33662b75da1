"""The audio budget: daily for every source, hourly per client, refilled when its window is over."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from asr_daemon.budget import DAY, HOUR, AudioBudget, BudgetExhausted
from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.events import AsrEvent, EventKind
from asr_daemon.vendors.amivoice.adapter import AmiVoiceAdapter
from asr_daemon.vendors.base import VendorAdapter
from asr_daemon.vendors.local.adapter import LocalAdapter
from tests.support.alsa import fake_microphone
from tests.support.daemon import running_daemon
from tests.support.speech import have_speech_tools, silence, speech
from tests.support.wyoming import transcribe


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spend(
    budget: AudioBudget, seconds: float, client: str | None = None, engine: type[VendorAdapter] = AmiVoiceAdapter
) -> None:
    charge = budget.admit(engine, client)
    assert charge is not None
    # Counted as the audio is accepted, a chunk at a time.
    for _ in range(int(seconds * 10)):
        charge(0.1)


def test_the_daily_budget_refuses_once_spent_says_when_it_refills_and_refills() -> None:
    clock = Clock()
    budget = AudioBudget(60, None, clock=clock)
    spend(budget, 30)
    clock.now += 3600
    spend(budget, 30)  # reaches the limit exactly
    with pytest.raises(BudgetExhausted) as refused:
        budget.admit(AmiVoiceAdapter)
    assert refused.value.code == "budget-exhausted"
    assert "daily audio budget" in refused.value.message
    # The window opened with the first second counted: 23 h are left of it.
    assert "refills in 23 h" in refused.value.message
    assert refused.value.refills_in == pytest.approx(DAY - 3600)
    clock.now += DAY - 3600
    assert budget.admit(AmiVoiceAdapter) is not None
    assert budget.used_today() == 0


def test_an_admitted_utterance_is_finished_past_the_limit_and_counted() -> None:
    clock = Clock()
    budget = AudioBudget(10, None, clock=clock)
    charge = budget.admit(AmiVoiceAdapter)
    assert charge is not None
    for _ in range(150):  # 15 s: the utterance that crosses the limit is not cut
        charge(0.1)
    assert budget.used_today() == pytest.approx(15)
    with pytest.raises(BudgetExhausted):
        budget.admit(AmiVoiceAdapter)


def test_a_running_utterance_counts_at_once_for_the_next_one() -> None:
    clock = Clock()
    budget = AudioBudget(10, None, clock=clock)
    long_one = budget.admit(AmiVoiceAdapter)
    assert long_one is not None
    for _ in range(100):
        long_one(0.1)
    # Not finished yet, yet its audio is already counted: a concurrent utterance is refused.
    with pytest.raises(BudgetExhausted):
        budget.admit(AmiVoiceAdapter)


def test_the_per_client_budget_is_per_address_hourly_and_the_daily_one_is_shared() -> None:
    clock = Clock()
    budget = AudioBudget(1000, 20, exempt=[], clock=clock)
    spend(budget, 20, "192.168.1.20")
    with pytest.raises(BudgetExhausted) as refused:
        budget.admit(AmiVoiceAdapter, "192.168.1.20")
    assert "client 192.168.1.20" in refused.value.message and "refills in 1 h" in refused.value.message
    # Another address has its own.
    spend(budget, 20, "192.168.1.21")
    # The microphone (no address) has no per-client budget, only the daily one.
    spend(budget, 100, None)
    assert budget.used_today() == pytest.approx(140)
    clock.now += HOUR
    assert budget.admit(AmiVoiceAdapter, "192.168.1.20") is not None


def test_exempt_networks_have_no_per_client_budget_but_count_toward_the_day() -> None:
    clock = Clock()
    budget = AudioBudget(100, 10, exempt=["127.0.0.0/8", "::1/128", "192.168.1.5/32"], clock=clock)
    for client in ("127.0.0.1", "::1", "192.168.1.5", "::ffff:192.168.1.5"):
        spend(budget, 20, client)
        assert budget.admit(AmiVoiceAdapter, client) is not None
    assert budget.used_today() == pytest.approx(80)
    spend(budget, 10, "10.0.0.9")
    with pytest.raises(BudgetExhausted):
        budget.admit(AmiVoiceAdapter, "10.0.0.9")


def test_the_offline_engine_is_not_paid_and_not_counted() -> None:
    clock = Clock()
    budget = AudioBudget(1, 1, exempt=[], clock=clock)
    spend(budget, 5)
    with pytest.raises(BudgetExhausted):
        budget.admit(AmiVoiceAdapter)
    assert budget.admit(LocalAdapter, "10.0.0.9") is None


def test_no_budget_counts_nothing() -> None:
    budget = AudioBudget(None, None)
    assert not budget.enabled
    assert budget.admit(AmiVoiceAdapter, "10.0.0.9") is None


async def test_the_microphone_and_wyoming_clients_share_the_daily_budget(tmp_path: Path) -> None:
    pytest.importorskip("pyaudio", reason="PyAudio is needed (the mic extra)")
    pytest.importorskip("pymicro_vad", reason="pymicro-vad is needed (the mic extra)")
    if not have_speech_tools():
        pytest.skip("espeak-ng and sox are needed")
    pcm = silence(1000) + speech("Turn on the kitchen lights") + silence(2000) + speech("What time is it")
    pcm += silence(60_000)
    options = EmulatorOptions(script=["一つ目です"])
    async with AmiVoiceEmulator(options).running() as emulator:
        with fake_microphone(tmp_path, pcm) as device:
            config = {
                "vendors": {"amivoice": {"url": emulator.url, "api_key": "test-key"}},
                "mic": {"enabled": True, "device": device, "language": "ja"},
                "budget": {"daily_seconds": 1},
            }
            async with running_daemon(config) as daemon:
                subscription = daemon.events.subscribe("test")
                seen: list[AsrEvent] = []
                async with asyncio.timeout(30):
                    while not {EventKind.ERROR, EventKind.TRANSCRIPT} <= {e.kind for e in seen}:
                        seen.append(await subscription.get())
                        subscription.done()
                # The microphone's first utterance spent the day's budget; a Wyoming client is refused too.
                refused = await transcribe(daemon.port, speech("hello there"), language="ja")
    transcripts = [e.text for e in seen if e.kind is EventKind.TRANSCRIPT]
    error = next(e for e in seen if e.kind is EventKind.ERROR)
    assert transcripts == ["一つ目です"]
    assert error.code == "budget-exhausted" and error.source.startswith("mic:")
    assert error.message is not None and "daily audio budget" in error.message
    assert refused.error_code == "budget-exhausted"
    assert len(emulator.streams) == 1
