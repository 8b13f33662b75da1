"""The shared resilience mechanism: backoff, retry budget, replay positions, keepalive and dead-link detection."""

from __future__ import annotations

import asyncio
import random

import pytest

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions, Fault
from asr_daemon.emulators.iapp import IAppEmulator
from asr_daemon.emulators.sauc import Zyun360Emulator
from asr_daemon.emulators.tiro import TiroEmulator
from asr_daemon.resilience.backoff import Backoff, RetryBudget
from asr_daemon.resilience.policy import DEFAULT_POLICY
from asr_daemon.resilience.replay import ConnectionTimeline, ReplayBuffer
from tests.support.daemon import running_daemon
from tests.support.faults import blackhole_scenario
from tests.support.speech import have_speech_tools, silence, speech
from tests.support.wyoming import transcribe

speech_needed = pytest.mark.skipif(not have_speech_tools(), reason="espeak-ng and sox are needed")


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    backoff = Backoff(0.25, 5.0, random.Random(7))
    ceilings = [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    delays = [backoff.next_delay() for _ in ceilings]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    # Full jitter: delays spread over the whole range, not clustered at the ceiling.
    many = [Backoff(0.25, 5.0, random.Random(i)) for i in range(200)]
    firsts = [b.next_delay() for b in many]
    assert min(firsts) < 0.05 and max(firsts) > 0.2
    backoff.reset()
    assert backoff.next_delay() <= 0.25


def test_retry_budget_counts_failures_without_progress() -> None:
    budget = RetryBudget(3)
    assert budget.fail() and budget.fail()
    budget.progress()  # a final arrived
    assert budget.fail() and budget.fail()
    assert not budget.fail()


def test_replay_buffer_trims_on_whole_frames_and_reads_by_position() -> None:
    buffer = ReplayBuffer(32000, align=320)
    buffer.append(bytes(range(256)) * 25)  # 6400 bytes
    buffer.trim(1000)
    assert buffer.start == 960  # down to a 10 ms frame boundary: a little more replay, never less
    assert buffer.read(960, 4) == (bytes(range(256)) * 25)[960:964]
    buffer.trim(500)  # never backwards
    assert buffer.start == 960
    buffer.trim(10_000)
    assert buffer.start == buffer.end == 6400


def test_timeline_maps_vendor_times_to_the_utterance_without_inserted_silence() -> None:
    timeline = ConnectionTimeline(base=32000, bytes_per_second=32000)  # this connection starts at 1.0 s
    timeline.audio(16000)  # 0.5 s of utterance audio
    timeline.silence(32000)  # 1 s of keepalive silence the client never sent
    timeline.audio(16000)
    assert timeline.to_utterance_ms(250) == 1250
    assert timeline.to_utterance_ms(1750) == 1000 + 750  # 1.75 s vendor time = 0.75 s of real audio
    assert timeline.to_utterance_ms(2000) == 2000


@speech_needed
async def test_keepalive_silence_holds_an_idle_vendor_stream_open() -> None:
    # The client pauses 4.5 s mid-utterance; the vendor cuts streams idle for 3.5 s; keepalive (3 s) holds it.
    pcm = speech("hello there") + silence(800)
    tail = speech("good morning") + silence(1000)
    options = EmulatorOptions(script=["你好", "早上好"], idle_timeout=3.5, recognise_by_audio=True)
    async with Zyun360Emulator(options).running() as emulator:
        config = {"vendors": {"zyun360": {"url": emulator.url, "api_key": "test-key"}}}
        async with running_daemon(config) as daemon:
            result = await transcribe(
                daemon.port, pcm + tail, language="zh", speed=4.0, pause_at=len(pcm), pause_seconds=4.5
            )
    assert result.text == "你好早上好"
    assert len(emulator.streams) == 1, "the stream was cut and replaced"
    assert emulator.streams[0].pcm_bytes > len(pcm + tail)  # silence was sent during the pause


@speech_needed
async def test_a_blackholed_path_is_noticed_within_five_seconds_where_the_vendor_answers_pings() -> None:
    result, proxy = await blackhole_scenario(AmiVoiceEmulator, "amivoice", ["こんにちは", "元気ですか"], "ja")
    assert result.text == "こんにちは元気ですか"
    assert proxy.connections == 2
    assert proxy.blackholed_at is not None
    # Reconnecting adds at most the first backoff (250 ms) and a loopback handshake.
    noticed = proxy.connected_at[1] - proxy.blackholed_at
    assert noticed <= 5.0 + 0.5, f"dead link noticed after {noticed:.1f} s"


@speech_needed
async def test_a_blackholed_path_without_pings_is_noticed_once_the_final_is_due() -> None:
    # iApp does not answer pings: the response watchdog after the end of audio finds the dead link.
    result, proxy = await blackhole_scenario(IAppEmulator, "iapp", ["สวัสดีครับ", "สบายดีไหม"], "th")
    assert result.text == "สวัสดีครับ สบายดีไหม"
    assert proxy.connections == 2
    assert result.latency is not None and result.latency <= 10


@speech_needed
async def test_prewarmed_connection_serves_the_next_utterance_and_is_replaced() -> None:
    import hashlib

    pcm = silence(300) + speech("hello there") + silence(900)
    async with AmiVoiceEmulator(EmulatorOptions(script=["こんにちは"])).running() as emulator:
        config = {"vendors": {"amivoice": {"url": emulator.url, "api_key": "test-key", "prewarm": True}}}
        async with running_daemon(config) as daemon:
            async with asyncio.timeout(5):
                while not emulator.streams:  # the pool opened its connection before any request
                    await asyncio.sleep(0.02)
            result = await transcribe(daemon.port, pcm, language="ja")
            assert result.text == "こんにちは"
            assert emulator.streams[0].pcm_sha256 == hashlib.sha256(pcm).hexdigest()
            async with asyncio.timeout(5):
                while len(emulator.streams) < 2:  # and a fresh one is prepared for the next utterance
                    await asyncio.sleep(0.02)
            pool = daemon.pools["amivoice"]
            assert pool.hits == 1


@speech_needed
async def test_a_dead_link_is_never_taken_for_a_vendor_that_ends_streams_without_a_close_frame() -> None:
    # Tiro's proxy ends a finished stream with a bare TCP close; a link we gave up on (pings unanswered) must
    # still be a failure, retried, not an empty "completed" transcript.
    result, proxy = await blackhole_scenario(TiroEmulator, "tiro", ["Halló.", "Hvað segirðu?"], "is")
    assert result.text == "Halló. Hvað segirðu?"
    assert proxy.connections == 2


@speech_needed
async def test_a_vendor_dropping_after_each_final_more_often_than_max_failures_still_completes() -> None:
    # Each connection recognises one sentence, then drops: many failed connections in all, but never
    # max_failures in a row without a result, so the utterance is completed, not given up.
    max_failures = 2
    sentences = ["hello there", "good morning", "how are you", "see you later"]
    script = ["一つ目", "二つ目", "三つ目", "四つ目"]
    voiced = [speech(text) for text in sentences]
    gap = silence(1200)
    pcm = b"".join(audio + gap for audio in voiced)
    # A connection starts where the last final ended (after a sentence) and is cut once it has had the gap, the
    # next sentence and enough silence for that sentence's final.
    drop_after = len(gap) + max(len(audio) for audio in voiced) + len(silence(700))
    options = EmulatorOptions(
        script=script, recognise_by_audio=True, fault=Fault.DROP, fault_after_bytes=drop_after, keep_pcm=True
    )
    async with AmiVoiceEmulator(options).running() as emulator:
        config = {
            "vendors": {"amivoice": {"url": emulator.url, "api_key": "test-key"}},
            "resilience": {"max_failures": max_failures, "backoff_initial": 0.05},
            "limits": {"final_timeout": 10.0},
        }
        async with running_daemon(config) as daemon:
            result = await transcribe(daemon.port, pcm, language="ja", speed=4.0, timeout=40)
    drops = sum(record.fault_applied for record in emulator.streams)
    assert result.error is None, result.error
    assert drops > max_failures, f"only {drops} drops: the test does not exercise the retry budget"
    assert result.text == "".join(script)


async def test_a_pool_closed_mid_handshake_closes_the_half_open_stream() -> None:
    from types import SimpleNamespace

    from asr_daemon.vendors.prewarm import StreamPool

    handshaking = asyncio.Event()

    class HalfOpen:
        closed_by_pool = False

        async def connect(self) -> None:
            handshaking.set()
            await asyncio.Event().wait()  # the vendor never finishes the handshake

        async def aclose(self) -> None:
            self.closed_by_pool = True

    stream = HalfOpen()
    adapter = SimpleNamespace(
        name="slow", languages=["en"], stream_variant=lambda options: None, open_stream=lambda options, policy: stream
    )
    async with StreamPool(adapter, DEFAULT_POLICY):  # type: ignore[arg-type]
        await asyncio.wait_for(handshaking.wait(), 5)
    assert stream.closed_by_pool
