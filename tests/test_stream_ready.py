"""``BaseStream.wait_ready``: returns once the vendor accepted the stream or the stream closed, whichever is first,
and a wait given up (a timeout) leaves nothing behind."""

from __future__ import annotations

import asyncio

import pytest

from asr_daemon.resilience.policy import DEFAULT_POLICY
from asr_daemon.vendors.base import BaseStream, StreamOptions
from tests.support.vendor_streams import VENDORS


def new_stream() -> BaseStream:
    vendor = VENDORS[0]
    adapter = vendor.adapter_class(vendor.adapter_class.settings_model.model_validate({"api_key": "k"}))
    return BaseStream(adapter, StreamOptions(language="ja"), DEFAULT_POLICY)


@pytest.mark.parametrize("flag", ["_ready", "_closed"])
async def test_wait_ready_returns_when_ready_or_closed(flag: str) -> None:
    stream = new_stream()
    waiting = asyncio.ensure_future(stream.wait_ready())
    await asyncio.sleep(0)
    assert not waiting.done()
    getattr(stream, flag).set()
    async with asyncio.timeout(5):
        await waiting
    # Already set: returns at once, without waiting.
    async with asyncio.timeout(5):
        await stream.wait_ready()


async def test_a_wait_given_up_leaves_the_flags_working() -> None:
    stream = new_stream()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await stream.wait_ready()
    stream._ready.set()
    assert stream.ready
    async with asyncio.timeout(5):
        await stream._ready.wait()
        await stream.wait_ready()
