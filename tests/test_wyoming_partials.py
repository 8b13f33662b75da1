"""The handler's two ways of sending partials give the client the same events.

While the socket takes everything at once, a partial is written from the vendor's result callback (the hot path,
``WyomingAsrHandler._write_partial_now``); otherwise the partial pump writes it (the plain path,
``direct_partials = False``). A client must get the same transcript-start, transcript-chunks, transcript and
transcript-stop, in the same order, either way: partials before the transcript, none after it."""

from __future__ import annotations

from typing import Any

import pytest

from asr_daemon.emulators.amivoice import AmiVoiceEmulator
from asr_daemon.emulators.base import EmulatorOptions
from asr_daemon.sources.wyoming_handler import WyomingAsrHandler
from tests.support.daemon import running_daemon
from tests.support.vendor_streams import tones
from tests.support.wyoming import transcribe

SCRIPT = ["一 二 三 四", "五 六 七"]


async def client_events(*, direct: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[str, Any]], int]:
    written = 0
    original = WyomingAsrHandler._write_partial_now

    def counting(handler: WyomingAsrHandler, text: str) -> bool:
        nonlocal written
        taken = original(handler, text)
        written += taken
        return taken

    monkeypatch.setattr(WyomingAsrHandler, "_write_partial_now", counting)
    monkeypatch.setattr(WyomingAsrHandler, "direct_partials", direct)
    async with AmiVoiceEmulator(EmulatorOptions(script=SCRIPT)).running() as emu:
        config = {"vendors": {"amivoice": {"url": emu.url, "api_key": "test-key"}}}
        async with running_daemon(config) as daemon:
            assert daemon.port is not None
            result = await transcribe(daemon.port, tones(2), language="ja", speed=2.0)
    assert result.error is None
    events = [(event.type, event.data.get("text")) for event in result.events]
    return events, written


async def test_partials_written_at_once_are_what_the_pump_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    plain, plain_written = await client_events(direct=False, monkeypatch=monkeypatch)
    direct, direct_written = await client_events(direct=True, monkeypatch=monkeypatch)
    assert plain_written == 0
    assert direct_written >= 2
    types = [kind for kind, _ in plain]
    assert types[0] == "transcript-start"
    assert types[-2:] == ["transcript", "transcript-stop"]
    assert types.count("transcript") == 1
    assert "transcript-chunk" in types[: types.index("transcript")]
    # The chunks add up to the transcript, and the client cannot tell the two paths apart.
    chunks = "".join(text for kind, text in plain if kind == "transcript-chunk")
    assert chunks == dict(plain)["transcript"]
    assert direct == plain
