"""What sending audio before Yating's greeting would save: the daemon's Yating stream against the emulator
through a proxy that adds network delay, waiting for ``session_started`` (what the daemon does) or sending at
once (what the vendor's SDK does). Prints the median time from opening the WebSocket to the first final.

    python -m tests.support.yating_greeting
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from pydantic import SecretStr

from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.emulators.yating import YatingEmulator
from asr_daemon.vendors.base import FinalResult, StreamOptions, VendorError
from asr_daemon.vendors.transport import VendorStream
from asr_daemon.vendors.yating.adapter import YatingAdapter, YatingSettings
from asr_daemon.vendors.yating.codec import YatingCodec
from tests.support.fault_proxy import FaultProxy
from tests.support.vendor_clients import silence, tone

TAIWAN = StreamOptions(language="zh-TW")
UTTERANCE = silence(100) + tone(600) + silence(600)


class EarlyCodec(YatingCodec):
    """Ready as soon as the socket opens, as the vendor's SDK behaves."""

    def __init__(self) -> None:
        super().__init__()
        self.ready = True


class EarlyAdapter(YatingAdapter):
    def new_codec(self, options: StreamOptions) -> YatingCodec:
        return EarlyCodec()


async def first_final(adapter: YatingAdapter) -> float:
    """Seconds from the start of the stream (the token goes straight to the emulator) to the first final."""
    stream = VendorStream(adapter, TAIWAN)
    started = time.monotonic()
    await stream.connect()
    try:
        await stream.wait_ready()
        for offset in range(0, len(UTTERANCE), 2000):
            await stream.send_audio(UTTERANCE[offset : offset + 2000])
        while True:
            event = await asyncio.wait_for(stream.events.get(), 10)
            if isinstance(event, FinalResult):
                return time.monotonic() - started
            if isinstance(event, VendorError):
                raise RuntimeError(event.message)
    finally:
        await stream.aclose()


async def measure(one_way: float, greeting_delay: float, runs: int) -> tuple[float, float]:
    emulator = YatingEmulator(EmulatorOptions(script=["今天天氣很好。"]), greeting_delay=greeting_delay)
    async with emulator.running():
        proxy = FaultProxy("127.0.0.1", emulator.port)
        async with proxy.running():
            proxy.delay = one_way
            settings = YatingSettings(
                url=proxy.url_for(emulator.url), token_url=emulator.token_url, api_key=SecretStr("test-key")
            )
            waiting = [await first_final(YatingAdapter(settings)) for _ in range(runs)]
            early = [await first_final(EarlyAdapter(settings)) for _ in range(runs)]
        assert all(not record.violations for record in emulator.streams)
    return statistics.median(waiting), statistics.median(early)


async def main(runs: int) -> None:
    print("| RTT added | greeting delay | wait for greeting | send at once | saved |")
    print("|---|---|---|---|---|")
    for one_way in (0.01, 0.05, 0.15):
        for greeting_delay in (0.05, 0.3):
            waiting, early = await measure(one_way, greeting_delay, runs)
            print(
                f"| {2 * one_way * 1000:.0f} ms | {greeting_delay * 1000:.0f} ms | {waiting * 1000:.0f} ms "
                f"| {early * 1000:.0f} ms | {(waiting - early) * 1000:.0f} ms |"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args().runs))
