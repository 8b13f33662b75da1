"""Every cloud vendor end to end: a Home Assistant-style Wyoming client → the daemon → the vendor's emulator, and
back. The vendors and what differs between them are in tests/support/vendor_e2e.py; vendor-only cases stay in
tests/test_<vendor>_e2e.py."""

from __future__ import annotations

import hashlib

import pytest

from tests.support.speech import have_speech_tools
from tests.support.vendor_e2e import (
    PARTIALS,
    SEVERAL,
    SINGLE,
    WRONG_KEY,
    VendorE2E,
    daemon_with_emulator,
    one_sentence,
    vendors_with,
)
from tests.support.wyoming import transcribe

pytestmark = pytest.mark.skipif(not have_speech_tools(), reason="needs espeak-ng and sox")


def rows(case: str) -> pytest.MarkDecorator:
    vendors = vendors_with(case)
    return pytest.mark.parametrize("vendor", vendors, ids=[vendor.name for vendor in vendors])


@rows(SINGLE)
async def test_single_sentence_exact_transcript_and_every_byte(vendor: VendorE2E) -> None:
    pcm = vendor.single_pcm()
    async with daemon_with_emulator(vendor, one_sentence(vendor)) as (port, emu):
        result = await transcribe(port, pcm, language=vendor.language)
    assert result.error is None
    assert result.text == vendor.script[0]
    [record] = emu.streams
    assert record.violations == []
    assert record.completed
    assert record.pcm_bytes == len(pcm)
    assert record.pcm_sha256 == hashlib.sha256(pcm).hexdigest()
    vendor.check_single(emu)


@rows(SEVERAL)
async def test_several_sentences_are_joined_as_the_language_is_written(vendor: VendorE2E) -> None:
    pcm = vendor.several_pcm()
    async with daemon_with_emulator(vendor, vendor.script, emulator=vendor.several_emulator) as (port, emu):
        result = await transcribe(port, pcm, language=vendor.several_language)
    assert result.error is None
    assert result.text == vendor.joined
    [record] = emu.streams
    assert record.finals == list(vendor.script)
    assert record.violations == []
    assert record.pcm_bytes == len(pcm)
    assert record.pcm_sha256 == hashlib.sha256(pcm).hexdigest()
    vendor.check_several(emu)


@rows(PARTIALS)
async def test_partials_arrive_while_speaking_and_add_up_to_the_transcript(vendor: VendorE2E) -> None:
    # Real-time pacing is the point here: partials must reach Home Assistant before the user stops talking.
    pcm = vendor.partials_pcm()
    async with daemon_with_emulator(vendor, vendor.partials_script) as (port, emu):
        result = await transcribe(port, pcm, language=vendor.language, realtime=True)
    assert result.error is None
    assert result.text == vendor.partials_script[0]
    assert result.chunks_before_stop > 0
    assert "".join(result.chunks) == result.text
    assert emu.streams[0].violations == []


@rows(WRONG_KEY)
async def test_wrong_key_is_reported_to_the_caller_and_not_retried(vendor: VendorE2E) -> None:
    pcm = (vendor.wrong_key_pcm or vendor.single_pcm)()
    async with daemon_with_emulator(
        vendor, one_sentence(vendor), key=vendor.wrong_key, emulator=vendor.wrong_key_emulator
    ) as (port, emu):
        result = await transcribe(port, pcm, language=vendor.language, timeout=10)
    assert result.text is None
    assert result.error is not None
    assert result.error_code == "vendor-rejected"
    assert vendor.wrong_key_message in result.error
    assert vendor.wrong_key not in result.error
    vendor.check_not_retried(emu)
