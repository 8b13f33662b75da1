"""Every cloud vendor's adapter and codec over the shared transport, against its emulator: the cases all vendors
share. The vendors are in tests/support/vendor_streams.py; vendor-only cases stay in tests/test_<vendor>_stream.py."""

from __future__ import annotations

import pytest

from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.vendors import registry
from asr_daemon.vendors.base import VendorFailure
from asr_daemon.vendors.transport import VendorStream
from tests.support.vendor_streams import VENDORS, VendorStreams

every_vendor = pytest.mark.parametrize("vendor", VENDORS, ids=[vendor.name for vendor in VENDORS])


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
