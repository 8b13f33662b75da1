"""What an utterance builds is freed by reference counting when it ends, not left to the cyclic collector.

A daemon serving hundreds of utterances an hour on a Pi: objects left in reference cycles wait for a collector
pass, and each pass walks all of them while every stream waits (bench/RESULTS.md). Whatever of the daemon an
utterance leaves unreachable must therefore be freed at once: the connection's reader and handler, the
utterance, its session, the vendor stream and its link.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from asr_daemon.emulators.base import EmulatorOptions
from tests.support.daemon import running_daemon
from tests.support.vendor_streams import VENDORS, VendorStreams, tones
from tests.support.wyoming import transcribe


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def daemon_objects_in_cycles() -> list[str]:
    """The daemon's objects that only the cyclic collector would free (the emulators, also ours, left out)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.collect()
    found = sorted(
        {
            type(thing).__qualname__
            for thing in gc.garbage
            if type(thing).__module__.startswith("asr_daemon.")
            and not type(thing).__module__.startswith("asr_daemon.emulators")
        }
    )
    gc.set_debug(0)
    gc.garbage.clear()
    return found


@pytest.mark.parametrize("vendor", VENDORS[:5], ids=[vendor.name for vendor in VENDORS[:5]])
@pytest.mark.usefixtures("collector_off")
async def test_utterances_through_the_daemon_leave_nothing_for_the_cyclic_collector(vendor: VendorStreams) -> None:
    async with vendor.emulator_class(EmulatorOptions()).running() as emu:
        settings = {"url": emu.url, "api_key": "test-key", **vendor.settings(emu)}
        async with running_daemon({"vendors": {vendor.name: settings}}) as daemon:
            assert daemon.port is not None
            for _ in range(3):
                result = await transcribe(daemon.port, tones(1), language=vendor.language, speed=4.0)
                assert result.text
            await asyncio.sleep(0.3)  # the handlers see the clients leave
            assert daemon_objects_in_cycles() == []
