"""A soak: continuous utterances from several clients through the daemon while the vendor path is cut at
random, with memory, file descriptors and tasks sampled. Short in CI, 30 minutes on demand."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import statistics
import time
from dataclasses import dataclass, field

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions
from tests.support.daemon import running_daemon
from tests.support.fault_proxy import FaultProxy
from tests.support.speech import silence, speech
from tests.support.wyoming import transcribe

SENTENCES = ("こんにちは", "今日は良い天気です")


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class SoakReport:
    seconds: float
    clients: int
    utterances: int = 0
    complete: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    cuts: int = 0
    rss_samples: list[float] = field(default_factory=list)
    fds_before: int = 0
    fds_after: int = 0
    tasks_before: int = 0
    tasks_after: int = 0

    @property
    def rss_growth_mb(self) -> float:
        """Median RSS of the last quarter minus that of the second quarter (after warm-up)."""
        samples = self.rss_samples
        if len(samples) < 8:
            return 0.0
        quarter = len(samples) // 4
        return statistics.median(samples[-quarter:]) - statistics.median(samples[quarter : 2 * quarter])


async def soak(seconds: float, clients: int = 4, cut_every: float = 7.0, seed: int = 1) -> SoakReport:
    rng = random.Random(seed)
    report = SoakReport(seconds=seconds, clients=clients)
    pcm = silence(200) + speech("hello there") + silence(700) + speech("the weather is nice today") + silence(900)
    expected = "".join(SENTENCES)
    report.fds_before, report.tasks_before = open_fds(), len(asyncio.all_tasks())
    options = EmulatorOptions(script=list(SENTENCES), recognise_by_audio=True)
    async with AmiVoiceEmulator(options).running() as emulator:
        proxy = FaultProxy("127.0.0.1", emulator.port)
        async with proxy.running():
            config = {
                "vendors": {"amivoice": {"url": proxy.url_for(emulator.url), "api_key": "test-key"}},
                "limits": {"final_timeout": 10.0},
            }
            async with running_daemon(config) as daemon:
                deadline = time.monotonic() + seconds

                async def client() -> None:
                    while time.monotonic() < deadline:
                        result = await transcribe(daemon.port, pcm, language="ja", speed=2.0, timeout=40)
                        report.utterances += 1
                        if result.text == expected:
                            report.complete += 1
                        else:
                            key = result.error_code or f"text {result.text!r}"
                            report.errors[key] = report.errors.get(key, 0) + 1

                async def chaos() -> None:
                    while time.monotonic() < deadline:
                        await asyncio.sleep(rng.uniform(0.5, 2) * cut_every)
                        proxy.cut()
                        report.cuts += 1

                async def sample() -> None:
                    while True:
                        # The emulator's per-stream records are the test's bookkeeping, not the daemon's memory.
                        del emulator.streams[:-50]
                        report.rss_samples.append(rss_mb())
                        await asyncio.sleep(max(seconds / 200, 0.25))

                sampler = asyncio.create_task(sample())
                chaos_task = asyncio.create_task(chaos())
                await asyncio.gather(*(client() for _ in range(clients)))
                chaos_task.cancel()
                sampler.cancel()
                for task in (chaos_task, sampler):
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
    await asyncio.sleep(0.2)
    report.fds_after, report.tasks_after = open_fds(), len(asyncio.all_tasks())
    return report
