"""Every cloud vendor's adapter and codec over the shared transport, against its emulator: the cases all vendors
share. The vendors are in tests/support/vendor_streams.py; vendor-only cases stay in tests/test_<vendor>_stream.py."""

from __future__ import annotations

import asyncio

import pytest

from asr_daemon.emulators.base import EmulatorOptions, Fault
from asr_daemon.vendors import registry
from asr_daemon.vendors.base import StreamCompleted, VendorError, VendorFailure
from asr_daemon.vendors.transport import VendorStream
from tests.support.streams import events_until_done
from tests.support.vendor_streams import VENDORS, VendorStreams, tones

every_vendor = pytest.mark.parametrize("vendor", VENDORS, ids=[vendor.name for vendor in VENDORS])
REFUSERS = [vendor for vendor in VENDORS if vendor.refuses_key_at_upgrade]
# Well inside the 5 s a vendor that owes an answer gets, with room for a busy machine.
REFUSED_WITHIN = 4.0
# The SAUC vendors share one codec and emulator; one of them stands for both where the stream itself is tested.
DROPPERS = [vendor for vendor in VENDORS if vendor.name != "volcengine"]


@every_vendor
def test_registry_finds_the_adapter_and_the_emulator(vendor: VendorStreams) -> None:
    assert registry.adapter_class(vendor.name) is vendor.adapter_class
    assert registry.emulator_class(vendor.name) is vendor.emulator_class


@every_vendor
async def test_missing_key_fails_fatally_without_contacting_the_vendor(vendor: VendorStreams) -> None:
    emu = vendor.emulator_class(EmulatorOptions(script=["-"]))
    async with emu.running():
        stream = VendorStream(vendor.adapter(emu), vendor.options)
        with pytest.raises(VendorFailure) as failed:
            await stream.connect()
        assert vendor.requests_seen(emu) == 0
    assert failed.value.error.fatal
    assert f"vendors.{vendor.name}.api_key" in failed.value.error.message


@pytest.mark.parametrize("vendor", REFUSERS, ids=[vendor.name for vendor in REFUSERS])
async def test_wrong_key_is_refused_fatally_and_at_once(vendor: VendorStreams) -> None:
    assert vendor.refuses_key_at_upgrade
    emu = vendor.emulator_class(EmulatorOptions(script=["-"]))
    async with emu.running():
        stream = VendorStream(vendor.adapter(emu, api_key="wrong-key"), vendor.options)
        # Refused at the upgrade: an answer, not the response timeout (5 s) running out.
        async with asyncio.timeout(REFUSED_WITHIN):
            with pytest.raises(VendorFailure) as failed:
                await stream.connect()
    error = failed.value.error
    assert error.fatal
    assert "wrong-key" not in error.message
    vendor.check_refusal(error, emu)


@pytest.mark.parametrize("vendor", DROPPERS, ids=[vendor.name for vendor in DROPPERS])
async def test_dropped_connection_is_a_transient_error(vendor: VendorStreams) -> None:
    options = EmulatorOptions(script=["-"], fault=Fault.DROP, fault_after_bytes=vendor.drop_after_bytes)
    emu = vendor.emulator_class(options)
    async with emu.running():
        stream = VendorStream(vendor.adapter(emu, api_key="test-key"), vendor.options)
        await stream.connect()
        try:
            await asyncio.wait_for(stream.wait_ready(), 5)
            pcm = tones(2)
            size = stream.codec.chunk_bytes
            for offset in range(0, len(pcm), size):
                await stream.send_audio(pcm[offset : offset + size])
            events = await events_until_done(stream)
        finally:
            await stream.aclose()
    error = events[-1]
    assert isinstance(error, VendorError)
    assert not error.fatal
    assert not any(isinstance(event, StreamCompleted) for event in events)
    if vendor.drop_message is not None:
        assert vendor.drop_message in error.message
